"""Next-token choice: greedy, or sampling with temperature, top-k, top-p and repetition penalty.

Defaults come from the checkpoint's generation_config.json. The order of the steps is transformers':
repetition penalty, then temperature, top-k, top-p, then a draw from the softmax.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from qvl_compile.errors import QvlError
from qvl_compile.jsonfile import read_folder_json


@dataclass(frozen=True)
class SamplingConfig:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    eos_token_ids: tuple[int, ...] = ()

    @classmethod
    def from_dir(cls, folder: str | Path) -> "SamplingConfig":
        if not (Path(folder) / "generation_config.json").is_file():
            return cls()
        _, raw = read_folder_json(folder, "generation_config.json", "model or export")
        eos = raw.get("eos_token_id", [])
        return cls(
            do_sample=bool(raw.get("do_sample", False)),
            temperature=float(raw.get("temperature", 1.0)),
            top_k=int(raw.get("top_k", 0) or 0),
            top_p=float(raw.get("top_p", 1.0)),
            repetition_penalty=float(raw.get("repetition_penalty", 1.0)),
            eos_token_ids=tuple(int(e) for e in (eos if isinstance(eos, list) else [eos])),
        )

    def greedy(self) -> "SamplingConfig":
        return replace(self, do_sample=False)

    def overridden(self, temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
                   repetition_penalty: float | None = None) -> "SamplingConfig":
        """A caller's choices over these defaults: temperature 0 means greedy, above 0 sampling at it;
        top_k 0 or below means off. None keeps the default."""
        cfg = self
        if temperature is not None:
            cfg = cfg.greedy() if temperature == 0 else replace(cfg, do_sample=True, temperature=float(temperature))
        if top_p is not None:
            cfg = replace(cfg, top_p=float(top_p))
        if top_k is not None:
            cfg = replace(cfg, top_k=max(0, int(top_k)))
        if repetition_penalty is not None:
            cfg = replace(cfg, repetition_penalty=float(repetition_penalty))
        return cfg

    def validate(self) -> None:
        if self.temperature <= 0:
            raise QvlError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise QvlError(f"top_p must lie in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.repetition_penalty <= 0:
            raise QvlError(f"top_k must be >= 0 and repetition_penalty > 0, got {self.top_k}, {self.repetition_penalty}")


def apply_repetition_penalty(logits: np.ndarray, history, penalty: float) -> np.ndarray:
    if penalty == 1.0 or len(history) == 0:
        return logits
    logits = logits.copy()
    seen = np.unique(np.asarray(history, dtype=np.int64))
    scores = logits[seen]
    logits[seen] = np.where(scores < 0, scores * penalty, scores / penalty)
    return logits


def filtered_logits(logits: np.ndarray, history, cfg: SamplingConfig) -> np.ndarray:
    """Repetition penalty, then (when sampling) temperature, top-k and top-p; removed tokens get -inf."""
    logits = apply_repetition_penalty(np.asarray(logits, np.float64), history, cfg.repetition_penalty)
    if not cfg.do_sample:
        return logits
    logits = logits / cfg.temperature
    if 0 < cfg.top_k < logits.shape[0]:
        kth = np.partition(logits, -cfg.top_k)[-cfg.top_k]
        logits = np.where(logits < kth, -np.inf, logits)
    if cfg.top_p < 1.0:
        order = np.argsort(logits, kind="stable")  # ascending, as transformers' top-p warper
        probs = np.exp(logits[order] - logits[order][-1])
        probs /= probs.sum()
        remove = np.cumsum(probs) <= 1 - cfg.top_p
        remove[-1] = False  # always keep the most likely token
        logits[order[remove]] = -np.inf
    return logits


def next_token(logits: np.ndarray, history, cfg: SamplingConfig, rng: np.random.Generator,
               never: np.ndarray | None = None) -> int:
    """logits [vocab] float -> the chosen token id; ids in `never` are not chosen (the media placeholders:
    one generated would stand for media rows that do not exist). They are removed before top-k and top-p, as
    transformers' bad_words_ids is, so that the filters choose among tokens that can be generated."""
    logits = np.array(logits, np.float64)  # a copy: the caller's logits stay as they were
    if never is not None and len(never):
        logits[never] = -np.inf
    logits = filtered_logits(logits, history, cfg)
    if not cfg.do_sample:
        return int(np.argmax(logits))
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    return int(rng.choice(len(probs), p=probs))
