"""Parity of the exported decoder with transformers: multimodal prefill, then cached greedy steps.

The prompt holds text, two images and a video. transformers computes the visual features, the M-RoPE
positions and the DeepStack features (recorded at its text stack's input); the ONNX decoder gets the
same features and positions, so only the decoder is under test. The ONNX greedy tokens are then fed
to transformers (teacher forcing) and the logits of every step are compared.
"""
from __future__ import annotations

import copy
import gc
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from qvl_compile.contract import CPU_FP32, DecoderShape, Target
from qvl_compile.errors import QvlError
from qvl_compile.parity import FP32_TOLERANCE, INT4_TOLERANCE, int4_tolerance, max_rel, quantizes_activations
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
    ref_logits, ref_calls = family.run_reference(reference_model, prompt, tokens[:steps])
    for step, call in enumerate(ref_calls[1:]):  # transformers' own decode positions must be ours
        if int(call.position_ids.flatten()[0]) != next_position + step:
            raise QvlError(f"decode step {step}: transformers used position {call.position_ids.flatten().tolist()}, "
                           f"the runtime {next_position + step}")
    ref_tokens = [int(step[0, -1].argmax()) for step in ref_logits]
    steps_rel = [max_rel(got, ref.numpy()) for got, ref in zip(step_logits, ref_logits[1:])]
    return DecoderParity(prefill_rel, steps_rel, tokens, ref_tokens, tolerance)


# --- INT4: a PyTorch reference with the graph's own dequantized weights ---------------------------

def dequantize_matmul_nbits(node: onnx.NodeProto, initializers: dict[str, np.ndarray]) -> np.ndarray:
    """W [N, K] (float32) from a MatMulNBits node's packed 4-bit B, scales and optional zero points."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    n, k, block, bits = attrs["N"], attrs["K"], attrs["block_size"], attrs["bits"]
    if bits != 4:
        raise QvlError(f"{node.name}: only 4-bit MatMulNBits is supported, got {bits}")
    packed = initializers[node.input[1]]  # [N, k_blocks, block/2] uint8
    blocks = packed.shape[1]
    weights = np.empty((n, blocks, block // 2, 2), np.float32)  # element 2j is the low nibble, 2j+1 the high
    weights[..., 0] = packed & 0x0F
    weights[..., 1] = packed >> 4
    weights = weights.reshape(n, blocks, block)
    if len(node.input) > 3 and node.input[3]:
        zp_packed = initializers[node.input[3]].reshape(n, -1)
        zero_point = np.stack([zp_packed & 0x0F, zp_packed >> 4], axis=-1).reshape(n, -1)[:, :blocks]
        weights -= zero_point.astype(np.float32)[:, :, None]
    else:
        weights -= 8.0  # symmetric: the implicit zero point
    weights *= initializers[node.input[2]].reshape(n, blocks, 1)  # in place: the lm_head alone is 1.2 GB
    return weights.reshape(n, blocks * block)[:, :k]


def fake_quant_reference(hf_model, graph_path, family: Family, in_place: bool = False) -> torch.nn.Module:
    """`hf_model` (a copy unless `in_place`) whose quantized linears hold the graph's dequantized INT4 weights."""
    model = onnx.load(str(graph_path), load_external_data=False)
    base_dir = str(Path(graph_path).parent)
    nodes = [node for node in model.graph.node if node.op_type == "MatMulNBits"]
    wanted = {name for node in nodes for name in node.input[1:] if name}  # packed B, scales, zero points
    initializers = {t.name: numpy_helper.to_array(t, base_dir=base_dir) for t in model.graph.initializer
                    if t.name in wanted}
    ref = hf_model if in_place else copy.deepcopy(hf_model)
    replaced = 0
    for node in nodes:
        weight = torch.from_numpy(dequantize_matmul_nbits(node, initializers))
        target = family.projection_module(ref, node.input[1])
        target.weight = torch.nn.Parameter(weight, requires_grad=False)  # also unties a tied lm_head
        replaced += 1
    if not replaced:
        raise QvlError(f"{graph_path}: no MatMulNBits nodes to build a fake-quant reference from")
    return ref.eval()


def with_accuracy_level(graph_path, level: int, out_path) -> None:
    """A copy of the graph (sharing its external weight file) whose MatMulNBits use `level`."""
    model = onnx.load(str(graph_path), load_external_data=False)
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            for attr in node.attribute:
                if attr.name == "accuracy_level":
                    attr.i = level
    onnx.save_model(model, str(out_path))


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


def verify_decoder_graph(path, hf_model, shape: DecoderShape, family: Family, mode: str, accuracy_level: int,
                         target: Target = CPU_FP32, steps: int = 16) -> dict:
    """Raise on a parity failure; return the measured figures for the manifest.

    fp32: the graph against transformers. int4: against transformers carrying the graph's dequantized
    weights (1e-3, identical greedy tokens) with fp32 activations. Levels that quantize activations
    (`parity.quantizes_activations`) check the weights on an accuracy_level 0 copy first, then the requested
    level against `parity.int4_tolerance(level)`; their greedy-token agreement is measured and recorded.
    """
    path, providers = Path(path), [target.execution_provider]
    if mode == "fp32":
        parity = decoder_parity(TextDecoder(path, shape, providers), hf_model, family, steps, FP32_TOLERANCE)
        _raise_unless(parity, "fp32 decoder vs transformers")
        return {"vs_transformers": parity.summary()}
    reference = fake_quant_reference(hf_model, path, family, in_place=True)  # the caller's copy is not used again
    if not quantizes_activations(accuracy_level):  # check the graph as it is
        parity = decoder_parity(TextDecoder(path, shape, providers), reference, family, steps, INT4_TOLERANCE)
        _raise_unless(parity, f"int4 decoder (accuracy_level {accuracy_level}) vs fake-quant transformers")
        return {f"accuracy_level_{accuracy_level}_vs_fake_quant": parity.summary()}
    exact = _exact_weights_parity(path, reference, shape, family, providers, steps)
    gc.collect()  # release the first session's weights before loading the second
    decoder = TextDecoder(path, shape, providers)
    level = decoder_parity(decoder, reference, family, steps, int4_tolerance(accuracy_level))
    if not level.worst <= level.tolerance:
        _raise_unless(level, f"int4 decoder (accuracy_level {accuracy_level}) vs fake-quant transformers")
    agree, total = next_token_agreement(decoder, reference, family)
    if level.onnx_tokens != level.reference_tokens or agree != total:
        log.warning("accuracy_level %d: logits within %.1e of the fake-quant reference, greedy tokens %s, "
                    "next-token agreement %d/%d; accuracy_level 0 or 1 keeps fp32 activations",
                    accuracy_level, level.worst, "identical" if level.onnx_tokens == level.reference_tokens
                    else "differ", agree, total)
    return {"accuracy_level_0_vs_fake_quant": exact.summary(),
            f"accuracy_level_{accuracy_level}_vs_fake_quant": level.summary() | {"prefill_argmax_agreement": [agree, total]}}


def _exact_weights_parity(path: Path, reference, shape: DecoderShape, family: Family, providers: list[str],
                          steps: int) -> DecoderParity:
    """The INT4 weights checked on an accuracy_level 0 copy (fp32 activations) of the graph; raises on failure."""
    exact_path = path.with_name("decoder.accuracy0.onnx")
    with_accuracy_level(path, 0, exact_path)
    try:
        parity = decoder_parity(TextDecoder(exact_path, shape, providers), reference, family, steps, INT4_TOLERANCE)
    finally:
        exact_path.unlink(missing_ok=True)
    _raise_unless(parity, "int4 weights (accuracy_level 0) vs fake-quant transformers")
    return parity


def _raise_unless(parity: DecoderParity, what: str) -> None:
    if not parity.passed:
        raise QvlError(f"{what}: max rel error {parity.worst:.2e} (tolerance {parity.tolerance:.0e}), greedy tokens "
                       f"{'identical' if parity.onnx_tokens == parity.reference_tokens else 'differ'}")
