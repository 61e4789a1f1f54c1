"""Parity of the exported decoder with transformers: multimodal prefill, then cached greedy steps.

The prompt holds text, two images and a video. transformers computes the visual features, the M-RoPE
positions and the DeepStack features (recorded at its text stack's input); the ONNX decoder gets the
same features and positions, so only the decoder is under test. The ONNX greedy tokens are then fed
to transformers (teacher forcing) and the logits of every step are compared.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from qvl_compile.contract import CPU_FP32, DecoderShape, Target
from qvl_compile.errors import QvlError
from qvl_compile.export.graph_weights import fake_quant_reference, quantized_weights
from qvl_compile.export.kv_cache_int8 import cache_dtype, fp32_kv_cache
from qvl_compile.export.streamed_reference import Source, stream_parameters, with_overrides
from qvl_compile.parity import (
    FP32_TOLERANCE,
    INT4_TOLERANCE,
    ROUTED_MIN_AGREEMENT,
    is_lossy,
    max_rel,
    prefill_int8_tolerance,
    shipped_tolerance,
)
from qvl_compile.registry import Family
from qvl_compile.runtime.decoder import TextDecoder

log = logging.getLogger(__name__)

PARITY_PROMPT = (
    ("text", 5), ("image", (1, 4, 6)), ("text", 2), ("image", (1, 6, 4)), ("text", 3), ("video", (2, 4, 4)),
    ("text", 8),
)


@dataclass(frozen=True)
class DecoderParity:
    prefill_max_rel: float
    steps_max_rel: list[float]
    onnx_tokens: list[int]
    reference_tokens: list[int]
    tolerance: float

    @property
    def worst(self) -> float:
        return max([self.prefill_max_rel, *self.steps_max_rel])

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.worst)) and self.worst <= self.tolerance and self.onnx_tokens == self.reference_tokens

    def summary(self) -> dict:
        return {"prefill_max_rel": self.prefill_max_rel, "decode_max_rel": max(self.steps_max_rel, default=0.0),
                "steps": len(self.steps_max_rel), "tokens_identical": self.onnx_tokens == self.reference_tokens,
                "tolerance": self.tolerance}


def visual_inputs(stack) -> tuple[np.ndarray | None, np.ndarray | None]:
    """What transformers placed at the visual positions ([V, H], prompt order) and its DeepStack ([D, V, H])."""
    if stack.visual_mask is None:
        return None, None
    return stack.inputs_embeds[stack.visual_mask].numpy(), stack.deepstack.numpy()


def decoder_parity(decoder: TextDecoder, reference_model, family: Family, steps: int = 16,
                   tolerance: float = FP32_TOLERANCE, seed: int = 0, zero_deepstack: bool = False,
                   parts=PARITY_PROMPT) -> DecoderParity:
    prompt = family.build_prompt(reference_model.config, list(parts), seed=seed)
    ref_prefill, calls = family.run_reference(reference_model, prompt, [])
    stack = calls[0]
    visual, deepstack = visual_inputs(stack)
    if zero_deepstack and deepstack is not None:
        deepstack = np.zeros_like(deepstack)
    seq = prompt.input_ids.shape[1]
    logits, cache = decoder.forward(prompt.input_ids.numpy(), stack.position_ids.numpy(), decoder.empty_cache(),
                                    visual, deepstack, logit_positions=np.arange(seq))
    prefill_rel = max_rel(logits, ref_prefill[0].numpy())
    tokens = [int(logits[0, -1].argmax())]
    step_logits = []
    next_position = int(stack.position_ids.max()) + 1
    for step in range(steps):
        position = np.full((3, 1, 1), next_position + step, np.int64)
        logits, cache = decoder.forward(np.array([[tokens[-1]]]), position, cache)
        step_logits.append(logits)
        tokens.append(int(logits[0, -1].argmax()))
    # The reference reads the prompt and the fed tokens in one pass (teacher forcing): its logit at the prompt's
    # position seq + i is what the runtime's cached step i computes. One pass, whatever the step count, keeps a
    # streamed reference (one module's weights at a time) affordable at real size.
    fed = torch.tensor([tokens[:steps]], dtype=torch.int64)
    forced = dataclasses.replace(prompt, input_ids=torch.cat([prompt.input_ids, fed], dim=1))
    ref_all, ref_calls = family.run_reference(reference_model, forced, [])
    positions = ref_calls[0].position_ids[0, 0, seq:].tolist()  # transformers' own positions of the fed tokens
    if positions != [next_position + step for step in range(steps)]:
        raise QvlError(f"decode steps: transformers used positions {positions}, the runtime "
                       f"{list(range(next_position, next_position + steps))}")
    ref_steps = [ref_all[0][:, seq + step: seq + step + 1] for step in range(steps)]
    ref_tokens = [int(ref_prefill[0][0, -1].argmax())] + [int(step[0, -1].argmax()) for step in ref_steps]
    steps_rel = [max_rel(got, ref.numpy()) for got, ref in zip(step_logits, ref_steps)]
    return DecoderParity(prefill_rel, steps_rel, tokens, ref_tokens, tolerance)


# --- INT4 levels and the export's check -------------------------------------------------------------

def with_accuracy_level(graph_path, level: int, out_path) -> None:
    """A copy of the graph (sharing its external weight file) whose MatMulNBits and QMoE use `level` and whose KV
    cache is fp32 (an int8 cache's rewrite undone: `export.kv_cache_int8`)."""
    model = onnx.load(str(graph_path), load_external_data=False)
    for node in model.graph.node:
        if node.op_type in ("MatMulNBits", "QMoE"):
            for attr in node.attribute:
                if attr.name == "accuracy_level":
                    attr.i = level
    if cache_dtype(model) == "int8":
        fp32_kv_cache(model)
    onnx.save_model(model, str(out_path))


@contextlib.contextmanager
def accuracy_level_copy(graph_path: Path, level: int) -> Iterator[Path]:
    """A temporary copy of the graph beside it (so it finds the same weight file) at `level`, fp32 KV cache;
    removed after."""
    copy_path = graph_path.with_name(f"{graph_path.stem}.accuracy{level}.tmp.onnx")
    with_accuracy_level(graph_path, level, copy_path)
    try:
        yield copy_path
    finally:
        copy_path.unlink(missing_ok=True)


def next_token_agreement(decoder: TextDecoder, reference_model, family: Family, seed: int = 0) -> tuple[int, int]:
    """(agreeing, total) argmax over every prefill position of the parity prompt."""
    prompt = family.build_prompt(reference_model.config, list(PARITY_PROMPT), seed=seed)
    ref, calls = family.run_reference(reference_model, prompt, [])
    stack = calls[0]
    seq = prompt.input_ids.shape[1]
    logits, _ = decoder.forward(prompt.input_ids.numpy(), stack.position_ids.numpy(), decoder.empty_cache(),
                                *visual_inputs(stack), logit_positions=np.arange(seq))
    agree = int((logits[0].argmax(-1) == ref[0][0].numpy().argmax(-1)).sum())
    return agree, seq


@contextlib.contextmanager
def decoder_reference(path: Path, hf_model, family: Family, mode: str, source: Source | None = None):
    """The reference model: `hf_model` as it is (fp32) or carrying the graph's dequantized weights (int4).

    With `source`, `hf_model` is a skeleton whose weights are streamed in module by module (the checkpoint's,
    overridden by the graph's quantized ones); without, it holds real weights and is changed in place.
    """
    if source is None:
        yield hf_model if mode == "fp32" else fake_quant_reference(hf_model, path, family, in_place=True)
        return
    if mode == "int4":
        source = with_overrides(source, quantized_weights(hf_model, path, family))
    with stream_parameters(hf_model, source) as model:
        yield model


def verify_decoder_graph(path, hf_model, shape: DecoderShape, family: Family, mode: str, accuracy_level: int,
                         target: Target = CPU_FP32, steps: int = 16, source: Source | None = None,
                         kv_cache: str = "fp32") -> dict:
    """Raise on a parity failure; return the measured figures for the manifest.

    fp32: the graph against transformers. int4: against transformers carrying the graph's dequantized
    weights (1e-3, identical greedy tokens) with fp32 activations. Lossy graphs (`parity.is_lossy`: levels that
    quantize activations, an int8 KV cache) check the weights on an accuracy_level 0, fp32-cache copy first,
    then the graph as shipped against `parity.shipped_tolerance`; its greedy-token agreement is recorded.
    `source`: stream the weights into a skeleton `hf_model` (see `decoder_reference`).
    """
    with decoder_reference(Path(path), hf_model, family, mode, source) as reference:
        return _verify(Path(path), reference, shape, family, mode, accuracy_level, target, steps, kv_cache)


def _names(mode: str, accuracy_level: int, kv_cache: str) -> tuple[str, str]:
    """(the exact check's record key, the shipped graph's record key)."""
    exact = "vs_transformers" if mode == "fp32" else "accuracy_level_0_vs_fake_quant"
    shipped = "" if mode == "fp32" else f"accuracy_level_{accuracy_level}_"
    shipped += "int8_kv_" if kv_cache == "int8" else ""
    return exact, shipped + ("vs_transformers" if mode == "fp32" else "vs_fake_quant")


def _what(mode: str, accuracy_level: int, kv_cache: str = "fp32") -> str:
    """The graph under test, for error messages."""
    what = "fp32 decoder vs transformers" if mode == "fp32" else \
        f"int4 decoder (accuracy_level {accuracy_level}) vs fake-quant transformers"
    return what + (", int8 KV cache" if kv_cache == "int8" else "")


def _verify(path: Path, reference, shape: DecoderShape, family: Family, mode: str, accuracy_level: int,
            target: Target, steps: int, kv_cache: str) -> dict:
    providers = [target.execution_provider]
    exact_key, shipped_key = _names(mode, accuracy_level, kv_cache)
    if not is_lossy(mode, accuracy_level, kv_cache):  # check the graph as it is
        tolerance = FP32_TOLERANCE if mode == "fp32" else INT4_TOLERANCE
        parity = decoder_parity(TextDecoder(path, shape, providers), reference, family, steps, tolerance)
        _raise_unless(parity, _what(mode, accuracy_level))
        return {shipped_key: parity.summary()}
    exact = _exact_weights_parity(path, reference, shape, family, providers, steps, mode)
    gc.collect()  # release the first session's weights before loading the second
    decoder = TextDecoder(path, shape, providers)
    shipped = _judge_lossy(decoder, reference, family, steps, shipped_tolerance(mode, accuracy_level, kv_cache),
                           routes_experts(path), _what(mode, accuracy_level, kv_cache),
                           "accuracy_level 0 or 1 and an fp32 cache are exact")
    return {exact_key: exact.summary(), shipped_key: shipped}


def _judge_lossy(decoder: TextDecoder, reference, family: Family, steps: int, tolerance: float, routed: bool,
                 what: str, exact_note: str) -> dict:
    """A lossy graph as shipped: its logits within `tolerance` (a routed graph: its next-token agreement at least
    ROUTED_MIN_AGREEMENT instead); raises otherwise, warns where greedy tokens or next tokens differ. -> its record."""
    shipped = decoder_parity(decoder, reference, family, steps, tolerance)
    if not routed and not shipped.worst <= shipped.tolerance:
        _raise_unless(shipped, what)
    agree, total = next_token_agreement(decoder, reference, family)
    if routed and agree < ROUTED_MIN_AGREEMENT * total:
        raise QvlError(f"{what}: next-token agreement {agree}/{total} "
                       f"(expected at least {ROUTED_MIN_AGREEMENT:.0%}; max rel {shipped.worst:.2e})")
    if shipped.onnx_tokens != shipped.reference_tokens or agree != total:
        log.warning("%s: logits within %.1e of the reference, greedy tokens %s, next-token agreement %d/%d; %s",
                    what, shipped.worst, "identical" if shipped.onnx_tokens == shipped.reference_tokens else "differ",
                    agree, total, exact_note)
    judged = {"judged_by": "next-token agreement (expert routing)"} if routed else {}
    return shipped.summary() | {"prefill_argmax_agreement": [agree, total]} | judged


def routes_experts(path: Path) -> bool:
    """Whether the decoder graph holds mixture-of-experts nodes (MoE, QMoE)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return any(node.op_type in ("MoE", "QMoE") for node in graph.node)


def _exact_weights_parity(path: Path, reference, shape: DecoderShape, family: Family, providers: list[str],
                          steps: int, mode: str) -> DecoderParity:
    """The weights checked on an accuracy_level 0, fp32-cache copy of the graph; raises on failure."""
    tolerance = FP32_TOLERANCE if mode == "fp32" else INT4_TOLERANCE
    with accuracy_level_copy(path, 0) as exact_path:
        parity = decoder_parity(TextDecoder(exact_path, shape, providers), reference, family, steps, tolerance)
    _raise_unless(parity, _what(mode, 0) + " (fp32 KV cache)")
    return parity


def _raise_unless(parity: DecoderParity, what: str) -> None:
    if not parity.passed:
        raise QvlError(f"{what}: max rel error {parity.worst:.2e} (tolerance {parity.tolerance:.0e}), greedy tokens "
                       f"{'identical' if parity.onnx_tokens == parity.reference_tokens else 'differ'}")


def verify_prefill_graph(path, prefill_path, hf_model, shape: DecoderShape, family: Family, accuracy_level: int,
                         target: Target = CPU_FP32, steps: int = 16, source: Source | None = None,
                         kv_cache: str = "fp32") -> dict:
    """The int8 prefill graph (export.prefill_int8) as the runtime runs it: it reads the parity prompt, the 4-bit
    graph decodes from the cache it wrote. Against transformers carrying the 4-bit graph's dequantized weights, within
    `parity.prefill_int8_tolerance`; raises otherwise. Returns the figures for the manifest."""
    with decoder_reference(Path(path), hf_model, family, "int4", source) as reference:
        decoder = TextDecoder(path, shape, [target.execution_provider], prefill_graph=prefill_path)
        return _judge_lossy(decoder, reference, family, steps, prefill_int8_tolerance(accuracy_level, kv_cache),
                            routes_experts(Path(path)),
                            f"int8 prefill graph, then the int4 decoder (accuracy_level {accuracy_level}) vs fake-quant "
                            "transformers", "without the prefill graph, accuracy_level 0 or 1 are exact")
