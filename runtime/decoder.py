"""Run the exported text decoder: prefill and cached steps, KV cache kept as numpy arrays (torch-free)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from qvl_compile.contract import KV_IN_PLACE, PREFILL_MIN_ROWS, DecoderArtifact, DecoderShape
from qvl_compile.errors import QvlError
from qvl_compile.manifest import load_artifact
from qvl_compile.runtime.session import check_source_stamp, make_session

_CACHE_DTYPES = {"tensor(float)": np.float32, "tensor(int8)": np.int8}


def _cache_dtype(session: ort.InferenceSession, name: str):
    """The numpy dtype of the graph's cache input `name`: float32, or int8 (an export with --kv-cache int8)."""
    found = {i.name: i.type for i in session.get_inputs()}.get(name)
    if found not in _CACHE_DTYPES:
        raise QvlError(f"decoder.onnx: expected a float32 or int8 KV cache input {name}, got {found or 'none'}")
    return _CACHE_DTYPES[found]


@dataclass
class KVCache:
    """Per layer keys and values [B, kv_heads, rows, head_dim].

    Grown mode (`filled` is None): every step returns new arrays holding exactly the cached rows.
    In-place mode (`empty_cache(capacity=...)`): preallocated buffers of `capacity` rows, bound as both
    past input and present output, so GroupQueryAttention writes each step's rows in place and nothing
    is copied per token; `filled` counts the rows in use and the object is updated by `forward`.
    """
    keys: list[np.ndarray]
    values: list[np.ndarray]
    filled: int | None = None
    bound: list = field(default_factory=list)  # in-place mode: (key, value) OrtValues sharing the buffers

    @property
    def length(self) -> int:
        return self.filled if self.filled is not None else int(self.keys[0].shape[2])

    @property
    def capacity(self) -> int | None:
        return None if self.filled is None else int(self.keys[0].shape[2])


class TextDecoder:
    """One decoder graph and session (and an export's int8 prefill graph, if it has one). `forward` runs any number
    of new tokens on top of a cache.

    `prefill_graph`: a second graph with the same inputs and cache (export.prefill_int8) that runs every call of at
    least `prefill_min_rows` rows (batch x new tokens); the first graph runs the others (decoding)."""

    def __init__(self, graph_path: str | Path, facts: DecoderShape, providers: list[str] | None = None,
                 intra_op_threads: int = 0, kv_cache: str = KV_IN_PLACE, profile_prefix: str | None = None,
                 prefill_graph: str | Path | None = None, prefill_min_rows: int = PREFILL_MIN_ROWS):
        self.facts = facts
        self.session = make_session(Path(graph_path), providers, intra_op_threads, profile_prefix=profile_prefix)
        self.prefill_session = None if prefill_graph is None else make_session(
            Path(prefill_graph), providers, intra_op_threads,
            profile_prefix=profile_prefix and profile_prefix + "_prefill")
        self.prefill_min_rows = prefill_min_rows
        past_k, past_v, present_k, present_v = facts.cache_names
        self._past = list(zip(past_k, past_v))
        self._present = [name for pair in zip(present_k, present_v) for name in pair]
        # float32, or int8 for a graph whose attention quantizes its cache (export.kv_cache_int8)
        self.cache_dtype = _cache_dtype(self.session, past_k[0])
        if self.prefill_session is not None and _cache_dtype(self.prefill_session, past_k[0]) != self.cache_dtype:
            raise QvlError(f"{prefill_graph}: its KV cache is {_cache_dtype(self.prefill_session, past_k[0]).__name__}, "
                           f"the decoder's {self.cache_dtype.__name__}; re-export the folder")
        # The contract says how the cache is fed: format-1 exports before in-place caching migrate to "grown".
        self.supports_in_place = kv_cache == KV_IN_PLACE
        self.placeholder_ids: tuple[int, ...] = ()  # image/video pad ids, checked against visual_embeds when set
        self.artifact: DecoderArtifact | None = None

    @classmethod
    def from_export(cls, export_dir: str | Path, providers: list[str] | None = None, intra_op_threads: int = 0,
                    verify_hashes: bool = False, profile_prefix: str | None = None) -> "TextDecoder":
        graph, artifact, _ = load_artifact(export_dir, "decoder", hashes=verify_hashes)
        prefill = artifact.prefill
        if prefill and prefill.get("graph") not in {record.path for record in artifact.files}:
            raise QvlError(f"{export_dir}: the decoder's prefill graph {prefill.get('graph')!r} is not one of its files "
                           "in the manifest; re-export the folder")
        prefill_graph = graph.with_name(prefill["graph"]) if prefill else None
        decoder = cls(graph, artifact.shape, providers, intra_op_threads, artifact.kv_cache, profile_prefix,
                      prefill_graph=prefill_graph, prefill_min_rows=int(prefill.get("min_rows", PREFILL_MIN_ROWS)))
        check_source_stamp(decoder.session, artifact, graph)
        if decoder.prefill_session is not None:
            check_source_stamp(decoder.prefill_session, artifact, prefill_graph)
        decoder.placeholder_ids = artifact.placeholder_ids
        decoder.artifact = artifact
        return decoder

    def empty_cache(self, batch: int = 1, capacity: int | None = None) -> KVCache:
        """An empty cache; with `capacity` (rows = prompt + new tokens) one preallocated in-place buffer."""
        f = self.facts
        rows = 0 if capacity is None else int(capacity)
        if capacity is not None and rows < 1:
            raise QvlError(f"cache capacity must be at least 1 row, got {capacity}")
        if capacity is not None and not self.supports_in_place:
            raise QvlError("this decoder.onnx has no attention_mask input (exported before in-place KV caching); "
                           "re-export it with qvl-compile export, or use empty_cache() without a capacity")
        shape = (batch, f.num_key_value_heads, rows, f.head_dim)
        keys = [np.zeros(shape, self.cache_dtype) for _ in range(f.num_layers)]
        values = [np.zeros(shape, self.cache_dtype) for _ in range(f.num_layers)]
        if capacity is None:
            return KVCache(keys, values)
        bound = [(ort.OrtValue.ortvalue_from_numpy(k), ort.OrtValue.ortvalue_from_numpy(v)) for k, v in zip(keys, values)]
        return KVCache(keys, values, filled=0, bound=bound)

    def forward(self, input_ids: np.ndarray, position_ids: np.ndarray, cache: KVCache,
                visual_embeds: np.ndarray | None = None, deepstack_embeds: np.ndarray | None = None,
                logit_positions: np.ndarray | None = None) -> tuple[np.ndarray, KVCache]:
        """input_ids [B, S], position_ids [3, B, S] -> logits [B, K, vocab] and the cache holding the new rows
        (a new KVCache in grown mode; the same, updated, object in in-place mode).

        visual_embeds [V, hidden] and deepstack_embeds [D, V, hidden] fill the V image/video
        placeholders of input_ids in order; logit_positions [K] defaults to the last position.
        """
        input_ids = np.asarray(input_ids, dtype=np.int64)
        batch, seq = input_ids.shape
        position_ids = np.asarray(position_ids, dtype=np.int64)
        if position_ids.shape != (3, batch, seq):
            raise QvlError(f"position_ids: expected shape [3, {batch}, {seq}], got {list(position_ids.shape)}")
        if logit_positions is None:
            logit_positions = np.array([seq - 1], np.int64)
        feeds = {
            "input_ids": input_ids,
            "position_ids": position_ids,
            **self._media_feeds(input_ids, visual_embeds, deepstack_embeds),
            "logit_positions": np.asarray(logit_positions, np.int64),
        }
        if self.supports_in_place:
            feeds["attention_mask"] = np.ones((batch, cache.length + seq), np.int64)  # [B, valid past + S]
        if cache.filled is not None:
            return self._forward_in_place(feeds, cache, seq), cache
        for (key_name, value_name), key, value in zip(self._past, cache.keys, cache.values):
            feeds[key_name], feeds[value_name] = key, value
        logits, *presents = self.session_for(input_ids).run(["logits", *self._present], feeds)
        return logits, KVCache(presents[0::2], presents[1::2])

    def session_for(self, input_ids: np.ndarray) -> ort.InferenceSession:
        """The prefill graph's session for `prefill_min_rows` new rows or more (where it has one), else the decoder's."""
        if self.prefill_session is not None and input_ids.size >= self.prefill_min_rows:
            return self.prefill_session
        return self.session

    def _media_feeds(self, input_ids: np.ndarray, visual: np.ndarray | None,
                     deepstack: np.ndarray | None) -> dict[str, np.ndarray]:
        """visual_embeds and deepstack_embeds feeds (empty when the prompt has no media), checked against the
        placeholders of input_ids."""
        f = self.facts
        if visual is None:
            visual = np.zeros((0, f.hidden_size), np.float32)
        if deepstack is None:
            deepstack = np.zeros((f.num_deepstack, visual.shape[0], f.hidden_size), np.float32)
        self._check_media_rows(input_ids, visual, deepstack)
        return {"visual_embeds": np.ascontiguousarray(visual, np.float32),
                "deepstack_embeds": np.ascontiguousarray(deepstack, np.float32)}

    def _check_media_rows(self, input_ids: np.ndarray, visual: np.ndarray, deepstack: np.ndarray) -> None:
        """One visual row per placeholder token; the graph itself would fail inside a GatherND."""
        f = self.facts
        if visual.ndim != 2 or visual.shape[1] != f.hidden_size:
            raise QvlError(f"visual_embeds: expected shape [rows, {f.hidden_size}], got {list(visual.shape)}")
        if deepstack.shape != (f.num_deepstack, *visual.shape):
            raise QvlError(f"deepstack_embeds: expected shape {[f.num_deepstack, *visual.shape]}, "
                           f"got {list(deepstack.shape)}")
        if self.placeholder_ids:
            count = int(np.isin(input_ids, self.placeholder_ids).sum())
            if count != visual.shape[0]:
                raise QvlError(f"input_ids hold {count} image/video placeholder tokens but visual_embeds has "
                               f"{visual.shape[0]} rows")

    def _forward_in_place(self, feeds: dict[str, np.ndarray], cache: KVCache, seq: int) -> np.ndarray:
        """Bind each layer's buffer as past input and present output: the new rows land in place."""
        if cache.length + seq > cache.capacity:
            raise QvlError(f"the KV cache holds {cache.capacity} rows; {cache.length} used + {seq} new do not fit "
                           "(allocate it with a larger capacity)")
        logits = self._run_bound(feeds, cache.bound)
        cache.filled += seq
        return logits

    def _run_bound(self, feeds: dict[str, np.ndarray], buffers) -> np.ndarray:
        session = self.session_for(feeds["input_ids"])
        binding = session.io_binding()
        binding.bind_output("logits")  # first bound, first in get_outputs()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array)
        for layer, ((key_name, value_name), (key, value)) in enumerate(zip(self._past, buffers)):
            binding.bind_ortvalue_input(key_name, key)
            binding.bind_ortvalue_input(value_name, value)
            binding.bind_ortvalue_output(self._present[2 * layer], key)  # the same buffer: written in place
            binding.bind_ortvalue_output(self._present[2 * layer + 1], value)
        session.run_with_iobinding(binding)
        return binding.get_outputs()[0].numpy()

    def forward_rows(self, input_ids: np.ndarray, position_ids: np.ndarray, attention_mask: np.ndarray,
                     keys: list[np.ndarray], values: list[np.ndarray], visual_embeds: np.ndarray | None = None,
                     deepstack_embeds: np.ndarray | None = None) -> np.ndarray:
        """Run on caller-owned cache buffers whose rows may differ in length (continuous batching).

        input_ids [B, S], position_ids [3, B, S]; attention_mask [B, T]: row b holds L_b + S ones (L_b valid
        cached rows) then zeros; keys/values per layer [B, kv_heads, capacity, head_dim], C-contiguous
        (a leading slice of a larger pool is), written in place at rows L_b..L_b+S-1. -> logits [B, 1, vocab].
        """
        if not self.supports_in_place:
            raise QvlError("this decoder.onnx has no attention_mask input (exported before in-place KV caching); "
                           "re-export it with qvl-compile export to batch requests")
        seq = input_ids.shape[1]
        feeds = {
            "input_ids": np.ascontiguousarray(input_ids, np.int64),
            "position_ids": np.ascontiguousarray(position_ids, np.int64),
            **self._media_feeds(input_ids, visual_embeds, deepstack_embeds),
            "logit_positions": np.array([seq - 1], np.int64),
            "attention_mask": np.ascontiguousarray(attention_mask, np.int64),
        }
        buffers = [(ort.OrtValue.ortvalue_from_numpy(k), ort.OrtValue.ortvalue_from_numpy(v)) for k, v in zip(keys, values)]
        return self._run_bound(feeds, buffers)
