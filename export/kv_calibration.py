"""Calibrate and apply the int8 KV cache at export (export.kv_cache_int8 holds the graph rewrite).

The decoder graph, still with its fp32 cache, reads a calibration prompt whose visual features, DeepStack
features and M-RoPE positions come from transformers (as in the parity checks); the rows it caches give each
channel's range. The prompt's seed is none of the parity checks', so the checks run on inputs the scales
never saw.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx

from qvl_compile.contract import DecoderShape, Target
from qvl_compile.export.decoder_verify import decoder_reference, visual_inputs
from qvl_compile.export.kv_cache_int8 import channel_scales, quantize_kv_cache, scale_summary
from qvl_compile.export.streamed_reference import Source
from qvl_compile.registry import Family
from qvl_compile.runtime.decoder import TextDecoder

log = logging.getLogger(__name__)

CALIBRATION_PROMPT = (("text", 24), ("image", (1, 8, 8)), ("text", 8), ("video", (2, 6, 6)), ("text", 16),
                      ("image", (1, 4, 10)), ("text", 24))
# Four prompts and their greedy continuations: on the trained tiny model one prompt left decode-step logits up to
# 0.11 (relative) from the fp32 cache's where later keys outgrew the scales; with what the model writes itself
# cached too, 0.049 from one prompt and 0.031 from four (6 parity cases, HEADROOM 1.25).
CALIBRATION_SEEDS = (9001, 9002, 9003, 9004)  # the parity checks use seeds 0..3
GENERATED_TOKENS = 32  # greedy tokens after each prompt, cached with it


def calibrate(path: Path, reference, shape: DecoderShape, family: Family, target: Target):
    """(key scales, value scales) [layers, kv, 1, head_dim] from the fp32-cache graph at `path`, and the number
    of cached rows they were measured on."""
    decoder = TextDecoder(path, shape, [target.execution_provider])
    key_scales = value_scales = None
    rows = 0
    for seed in CALIBRATION_SEEDS:
        cache = _calibration_cache(decoder, reference, family, seed)
        keys, values = channel_scales(cache.keys, cache.values)  # each [layers, kv, 1, head_dim]
        key_scales = keys if key_scales is None else np.maximum(key_scales, keys)
        value_scales = values if value_scales is None else np.maximum(value_scales, values)
        rows += cache.length
    return key_scales, value_scales, rows


def _calibration_cache(decoder: TextDecoder, reference, family: Family, seed: int):
    prompt = family.build_prompt(reference.config, list(CALIBRATION_PROMPT), seed=seed)
    _, calls = family.run_reference(reference, prompt, [])
    stack = calls[0]
    logits, cache = decoder.forward(prompt.input_ids.numpy(), stack.position_ids.numpy(), decoder.empty_cache(),
                                    *visual_inputs(stack))
    position = int(stack.position_ids.max()) + 1
    for step in range(GENERATED_TOKENS):  # what the model writes itself reaches other ranges than random text
        token = np.array([[int(logits[0, -1].argmax())]])
        logits, cache = decoder.forward(token, np.full((3, 1, 1), position + step, np.int64), cache)
    return cache


def quantize_graph_kv_cache(path: Path, hf_model, shape: DecoderShape, family: Family, target: Target,
                            source: Source | None = None) -> dict:
    """Calibrate the graph at `path` and rewrite it (graph only; the weight file is untouched) to an int8 cache.
    The reference is the checkpoint as it is: only its visual features and positions are used."""
    with decoder_reference(Path(path), hf_model, family, "fp32", source) as reference:
        key_scales, value_scales, rows = calibrate(Path(path), reference, shape, family, target)
    model = onnx.load(str(path), load_external_data=False)
    quantize_kv_cache(model, key_scales, value_scales)
    onnx.save_model(model, str(path))
    summary = {"dtype": "int8", "calibration_rows": rows, **scale_summary(key_scales, value_scales)}
    log.info("int8 KV cache: key range %s, value range %s", summary["key_range"], summary["value_range"])
    return summary
