"""Qwen3-VL's 3-row M-RoPE position ids, in numpy (torch-free), as transformers' `get_rope_index` computes them.

Text tokens count up on all three rows. A run of image (or video-frame) placeholder tokens gets
(t, h, w) positions offset by the running position: t fixed, h and w spanning the merged grid; the
running position then advances by max(h, w) / merge. Videos are split into one t=1 grid per temporal
patch, because each frame group stands between its own timestamp text.
"""
from __future__ import annotations

import itertools

import numpy as np


def mrope_position_ids(input_ids, image_token_id: int, video_token_id: int, image_grids=(), video_grids=(),
                       merge_size: int = 2) -> tuple[np.ndarray, int]:
    """input_ids [S] -> (position_ids [3, S] int64, rope delta: next position minus S)."""
    ids = np.asarray(input_ids, dtype=np.int64).reshape(-1)
    kinds = np.zeros(len(ids), np.int64)
    kinds[ids == image_token_id] = 1
    kinds[ids == video_token_id] = 2
    grids = {1: iter([tuple(g) for g in image_grids]),
             2: iter([(1, h, w) for t, h, w in video_grids for _ in range(t)])}
    pieces, position = [], 0
    for kind, run in itertools.groupby(kinds.tolist()):
        length = len(list(run))
        if kind == 0:
            pieces.append(np.broadcast_to(np.arange(length) + position, (3, length)))
            position += length
            continue
        try:
            t, h, w = next(grids[kind])
        except StopIteration:
            raise ValueError(f"more {'image' if kind == 1 else 'video'} placeholder runs than grids") from None
        gh, gw = h // merge_size, w // merge_size
        if t * gh * gw != length:
            raise ValueError(f"a placeholder run of {length} tokens does not match grid {(t, h, w)}")
        tt, hh, ww = np.meshgrid(np.arange(t), np.arange(gh), np.arange(gw), indexing="ij")
        pieces.append(np.stack([tt.reshape(-1), hh.reshape(-1), ww.reshape(-1)]) + position)
        position += max(gh, gw)
    positions = np.concatenate(pieces, axis=1).astype(np.int64) if pieces else np.zeros((3, 0), np.int64)
    delta = int(positions.max()) + 1 - len(ids) if len(ids) else 0
    return positions, delta
