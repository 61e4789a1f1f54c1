"""The text decoder as a component spec: one graph serves prefill and cached decoding.

Inputs: input_ids [B, S], position_ids [3, B, S], visual_embeds [V, H], deepstack_embeds [D, V, H],
logit_positions [K], attention_mask [B, valid past + S] and the per-layer past keys and values;
outputs: logits [B, K, vocab] and the presents. With `--quant int4` every projection MatMul (and the
lm_head unless excluded) becomes onnxruntime's `MatMulNBits`, made by onnxruntime's own
`MatMulNBitsQuantizer`, and the graph is verified against transformers holding its dequantized weights.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import onnx

from qvl_compile.config import ModelConfig
from qvl_compile.contract import KV_IN_PLACE, DecoderShape, cache_names
from qvl_compile.errors import QvlError
from qvl_compile.export.component import CHECK_STAGE, ComponentSpec, ExportContext, Step, check_graph, export_component, set_aside
from qvl_compile.export.decoder_options import QuantOptions
from qvl_compile.export.decoder_verify import verify_decoder_graph

DECODER_FILE = "decoder.onnx"
LM_HEAD = "lm_head"  # the rewritten decoder's attribute (rewrite/decoder.py), hence its initializer's prefix


def decoder_shape(ctx: ExportContext) -> DecoderShape:
    text = ctx.config.text
    return DecoderShape(num_layers=text.num_hidden_layers, num_key_value_heads=text.num_key_value_heads,
                        head_dim=text.head_dim, hidden_size=text.hidden_size, vocab_size=text.vocab_size,
                        num_deepstack=ctx.config.vision.num_deepstack)


def _load(ctx: ExportContext):
    return ctx.family.load_model(ctx.model_dir)


def _rewrite(ctx: ExportContext, hf_model):
    decoder = ctx.family.text_decoder(hf_model, ctx.config, consume=True)
    ctx.weight_bytes = sum(p.numel() * p.element_size() for p in decoder.parameters())
    ctx.weight_bytes += decoder.embed_tokens.numel() * 4
    return decoder


def _example_inputs(ctx: ExportContext) -> tuple:
    """Batch 2, 6 new tokens (2 visual per row), 3 cached: no dim is 0 or 1, so none is specialized."""
    import torch

    config, shape = ctx.config, decoder_shape(ctx)
    image, video = config.image_token_id, config.video_token_id
    input_ids = torch.tensor([[1, image, image, 2, 3, 4], [5, 6, video, video, 7, 8]])
    position_ids = torch.arange(3, 9).view(1, 1, 6).expand(3, 2, 6).contiguous()
    visual = torch.randn(4, shape.hidden_size)
    deepstack = torch.randn(shape.num_deepstack, 4, shape.hidden_size)
    logit_positions = torch.tensor([4, 5])
    past = [torch.randn(2, shape.num_key_value_heads, 3, shape.head_dim) for _ in range(shape.num_layers)]
    attention_mask = torch.ones(2, 3 + 6, dtype=torch.int64)  # [B, valid past + S]
    return input_ids, position_ids, visual, deepstack, logit_positions, attention_mask, past, [p.clone() for p in past]


def _dynamic_shapes(ctx: ExportContext) -> tuple:
    import torch

    batch, seq, past, total = (torch.export.Dim(n, min=1) for n in ("batch", "seq", "past", "total"))
    visual, logits_n = torch.export.Dim("num_visual", min=1), torch.export.Dim("num_logits", min=1)
    cache = {0: batch, 2: past}
    layers = ctx.config.text.num_hidden_layers
    return ({0: batch, 1: seq}, {1: batch, 2: seq}, {0: visual}, {1: visual}, {0: logits_n},
            {0: batch, 1: total}, [cache] * layers, [cache] * layers)


def _translation_table() -> dict:
    import torch

    from qvl_compile.export.onnx_functions import cached_attention_onnx

    return {torch.ops.qvl_compile.cached_attention.default: cached_attention_onnx}


def _is_lm_head(node: onnx.NodeProto) -> bool:
    """The MatMul whose weight is the rewrite's `lm_head.weight_t` initializer (TransposedLinear's [in, out])."""
    return len(node.input) > 1 and node.input[1].split(".")[0] == LM_HEAD


def quantize_int4(fp32_path: Path, out_path: Path, options: QuantOptions, external: bool) -> dict[str, int]:
    """onnxruntime's MatMulNBitsQuantizer over every constant-weight MatMul; returns the op counts."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(fp32_path))
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    exclude = [] if options.quantize_lm_head else [n.name for n in matmuls if _is_lm_head(n)]
    quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=options.block_size, is_symmetric=options.symmetric,
                                     accuracy_level=options.accuracy_level, nodes_to_exclude=exclude)
    quantizer.process()
    quantized = quantizer.model.model
    counts: dict[str, int] = {}
    for node in quantized.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    onnx.save_model(quantized, str(out_path), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=out_path.name + ".data", size_threshold=1024)
    return counts


def _int4_pass(options: QuantOptions):
    def quantize(ctx: ExportContext) -> None:
        with set_aside(ctx.work_dir, DECODER_FILE) as staged:
            counts = quantize_int4(staged / DECODER_FILE, ctx.path, options, ctx.external)
        expected = ctx.family.decoder_projections(ctx.config) + (1 if options.quantize_lm_head else 0)
        if counts.get("MatMulNBits", 0) != expected:
            raise QvlError(f"expected {expected} MatMulNBits nodes, the quantizer made {counts.get('MatMulNBits', 0)}")
        ctx.record["op_counts"] = counts
    return quantize


def _verifier(options: QuantOptions):
    def verify(ctx: ExportContext) -> None:
        reference = ctx.family.load_model(ctx.model_dir)
        ctx.record["export_check"] = verify_decoder_graph(ctx.path, reference, decoder_shape(ctx), ctx.family,
                                                          options.mode, options.accuracy_level, ctx.target)
    return verify


def _describe(options: QuantOptions):
    def describe(ctx: ExportContext) -> dict[str, Any]:
        return {
            "quant": {"mode": options.mode, "block_size": options.block_size, "accuracy_level": options.accuracy_level,
                      "quantize_lm_head": options.quantize_lm_head, "symmetric": options.symmetric,
                      "op_counts": ctx.record.get("op_counts", {})},
            **asdict(decoder_shape(ctx)),
            "image_token_id": ctx.config.image_token_id,
            "video_token_id": ctx.config.video_token_id,
            "kv_cache": KV_IN_PLACE,
            "export_check": ctx.record["export_check"],
        }
    return describe


def _io_names(layers: int) -> tuple[tuple[str, ...], tuple[str, ...], dict[str, list[str | None]]]:
    """(input names, output names, dim names) of a decoder with `layers` cached layers."""
    past_k, past_v, present_k, present_v = cache_names(layers)
    inputs = ("input_ids", "position_ids", "visual_embeds", "deepstack_embeds", "logit_positions", "attention_mask",
              *past_k, *past_v)
    cache_dims = ["batch", None, "past_seq", None]
    present_dims = ["batch", None, "present_seq", None]  # max(past_seq, total_seq)
    dims = {"input_ids": ["batch", "seq"], "position_ids": [None, "batch", "seq"],
            "attention_mask": ["batch", "total_seq"], "visual_embeds": ["num_visual", None],
            "deepstack_embeds": [None, "num_visual", None], "logit_positions": ["num_logits"],
            "logits": ["batch", "num_logits", None],
            **{n: cache_dims for n in past_k + past_v}, **{n: present_dims for n in present_k + present_v}}
    return inputs, ("logits", *present_k, *present_v), dims


def decoder_spec(config: ModelConfig, options: QuantOptions) -> ComponentSpec:
    options.validate()
    inputs, outputs, dims = _io_names(config.text.num_hidden_layers)
    steps = [Step(CHECK_STAGE, check_graph)]
    if options.mode == "int4":
        steps.append(Step("quantize (onnxruntime MatMulNBits)", _int4_pass(options)))
    steps.append(Step("verify against transformers", _verifier(options)))
    return ComponentSpec(
        name="decoder", file_name=DECODER_FILE, load=_load, rewrite=_rewrite, example_inputs=_example_inputs,
        dynamic_shapes=_dynamic_shapes, input_names=inputs, output_names=outputs, dim_names=dims,
        translation_table=_translation_table, steps=tuple(steps),
        describe=_describe(options), keep_reference=False,
    )


def export_decoder(ctx: ExportContext, options: QuantOptions) -> dict[str, Any]:
    """Write `decoder.onnx` (+ external data) into ctx.work_dir; return its artifact fields."""
    return export_component(decoder_spec(ctx.config, options), ctx)


__all__ = ["export_decoder", "decoder_spec", "QuantOptions", "DECODER_FILE", "cache_names"]
