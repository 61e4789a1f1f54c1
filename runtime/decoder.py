"""Run the exported text decoder: prefill and cached steps, KV cache kept as numpy arrays (torch-free)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qvl_compile.errors import QvlError
from qvl_compile.manifest import load_artifact
from qvl_compile.runtime.session import make_session


@dataclass(frozen=True)
class DecoderFacts:
    num_layers: int
    num_key_value_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    num_deepstack: int

    @classmethod
    def from_artifact(cls, artifact: dict[str, Any]) -> "DecoderFacts":
        return cls(**{name: int(artifact[name]) for name in cls.__dataclass_fields__})


@dataclass
class KVCache:
    keys: list[np.ndarray]  # per layer [B, kv_heads, length, head_dim]
    values: list[np.ndarray]

    @property
    def length(self) -> int:
        return int(self.keys[0].shape[2])


class TextDecoder:
    """One decoder graph and session. `forward` runs any number of new tokens on top of a cache."""

    def __init__(self, graph_path: str | Path, facts: DecoderFacts, providers: list[str] | None = None,
                 intra_op_threads: int = 0):
        self.facts = facts
        self.session = make_session(Path(graph_path), providers, intra_op_threads)
        layers = range(facts.num_layers)
        self._past = [(f"past_key_values.{i}.key", f"past_key_values.{i}.value") for i in layers]
        self._present = [name for i in layers for name in (f"present.{i}.key", f"present.{i}.value")]

    @classmethod
    def from_export(cls, export_dir: str | Path, providers: list[str] | None = None, intra_op_threads: int = 0,
                    verify_hashes: bool = False) -> "TextDecoder":
        graph, artifact = load_artifact(export_dir, "decoder", hashes=verify_hashes)
        return cls(graph, DecoderFacts.from_artifact(artifact), providers, intra_op_threads)

    def empty_cache(self, batch: int = 1) -> KVCache:
        f = self.facts
        shape = (batch, f.num_key_value_heads, 0, f.head_dim)
        return KVCache([np.zeros(shape, np.float32) for _ in range(f.num_layers)],
                       [np.zeros(shape, np.float32) for _ in range(f.num_layers)])

    def forward(self, input_ids: np.ndarray, position_ids: np.ndarray, cache: KVCache,
                visual_embeds: np.ndarray | None = None, deepstack_embeds: np.ndarray | None = None,
                logit_positions: np.ndarray | None = None) -> tuple[np.ndarray, KVCache]:
        """input_ids [B, S], position_ids [3, B, S] -> logits [B, K, vocab] and the grown cache.

        visual_embeds [V, hidden] and deepstack_embeds [D, V, hidden] fill the V image/video
        placeholders of input_ids in order; logit_positions [K] defaults to the last position.
        """
        f = self.facts
        input_ids = np.asarray(input_ids, dtype=np.int64)
        batch, seq = input_ids.shape
        position_ids = np.asarray(position_ids, dtype=np.int64)
        if position_ids.shape != (3, batch, seq):
            raise QvlError(f"position_ids: expected shape [3, {batch}, {seq}], got {list(position_ids.shape)}")
        if visual_embeds is None:
            visual_embeds = np.zeros((0, f.hidden_size), np.float32)
        if deepstack_embeds is None:
            deepstack_embeds = np.zeros((f.num_deepstack, visual_embeds.shape[0], f.hidden_size), np.float32)
        if logit_positions is None:
            logit_positions = np.array([seq - 1], np.int64)
        feeds = {
            "input_ids": input_ids,
            "position_ids": position_ids,
            "visual_embeds": np.ascontiguousarray(visual_embeds, np.float32),
            "deepstack_embeds": np.ascontiguousarray(deepstack_embeds, np.float32),
            "logit_positions": np.asarray(logit_positions, np.int64),
        }
        for (key_name, value_name), key, value in zip(self._past, cache.keys, cache.values):
            feeds[key_name], feeds[value_name] = key, value
        logits, *presents = self.session.run(["logits", *self._present], feeds)
        return logits, KVCache(presents[0::2], presents[1::2])
