"""The text decoder as a component spec: one graph serves prefill and cached decoding.

Inputs: input_ids [B, S], position_ids [3, B, S], visual_embeds [V, H], deepstack_embeds [D, V, H],
logit_positions [K], attention_mask [B, valid past + S] and the per-layer past keys and values;
outputs: logits [B, K, vocab] and the presents. The graph is captured from a skeleton (no weights) and
each weight is then streamed from the checkpoint into the graph's data file. With `--quant int4` every
projection MatMul (and the lm_head unless excluded) becomes onnxruntime's `MatMulNBits`, packed tensor by
tensor by onnxruntime's own block quantizer, and the embedding table a `GatherBlockQuantized` (sharing the
lm_head's bytes when the checkpoint ties them; `export.int4_weights`). The graph is verified against
transformers holding its dequantized weights, streamed module by module (`export.streamed_reference`).
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

import onnx

from qvl_compile.config import ModelConfig
from qvl_compile.contract import KV_IN_PLACE, DecoderShape, cache_names
from qvl_compile.errors import QvlError
from qvl_compile.export.component import (
    CHECK_STAGE,
    ComponentSpec,
    ExportContext,
    GraphPass,
    Step,
    check_graph,
    check_graph_file,
    export_component,
    graph_files,
)
from qvl_compile.export.decoder_options import QuantOptions
from qvl_compile.export.decoder_verify import verify_decoder_graph, verify_prefill_graph
from qvl_compile.export.fusion import fuse_rms_norm
from qvl_compile.export.int4_weights import Int4Plan, count_ops
from qvl_compile.export.prefill_int8 import PREFILL_FILE
from qvl_compile.export.streamed_reference import checkpoint_source
from qvl_compile.manifest import file_record

DECODER_FILE = "decoder.onnx"
LM_HEAD = "lm_head"  # the rewritten decoder's attribute (rewrite/decoder.py), hence its initializer's prefix
EMBEDDING = "embed_tokens"  # the rewritten decoder's embedding table parameter


def decoder_shape(ctx: ExportContext) -> DecoderShape:
    text = ctx.config.text
    return DecoderShape(num_layers=text.num_hidden_layers, num_key_value_heads=text.num_key_value_heads,
                        head_dim=text.head_dim, hidden_size=text.hidden_size, vocab_size=text.vocab_size,
                        num_deepstack=ctx.config.vision.num_deepstack)


def _load(ctx: ExportContext):
    return ctx.family.load_skeleton(ctx.model_dir)  # placeholders: the weights stream in when written


def _rewriter(options: QuantOptions):
    def rewrite(ctx: ExportContext, hf_model):
        # the skeleton stays whole: it is the reference
        decoder = ctx.family.text_decoder(hf_model, ctx.config, fused_rotary=options.fused_rotary)
        ctx.weight_bytes = sum(p.numel() * 4 for p in decoder.parameters())  # as float32
        return decoder
    return rewrite


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

    import qvl_compile.rewrite.moe  # noqa: F401  (registers qvl_compile::moe)
    from qvl_compile.export.onnx_functions import cached_attention_onnx, moe_onnx, mrope_rotate_onnx

    return {torch.ops.qvl_compile.cached_attention.default: cached_attention_onnx,
            torch.ops.qvl_compile.mrope_rotate.default: mrope_rotate_onnx,
            torch.ops.qvl_compile.moe.default: moe_onnx}


def _weight_plan(options: QuantOptions):
    def plan(ctx: ExportContext, proto: onnx.ModelProto, sources: dict):
        if options.mode != "int4":
            ctx.record["op_counts"] = count_ops(proto)
            if ctx.record["op_counts"].get("MoE", 0) != ctx.family.decoder_experts(ctx.config):
                raise QvlError(f"expected {ctx.family.decoder_experts(ctx.config)} MoE nodes, the graph has "
                               f"{ctx.record['op_counts'].get('MoE', 0)}")
            return None
        int4 = Int4Plan(proto, sources, options, lm_head=LM_HEAD + ".weight_t", embedding=EMBEDDING,
                        head_bits=options.head_bits_for(ctx.family.auto_lm_head_bits),
                        keep_float32=ctx.family.float32_weights)
        counts = count_ops(proto)
        expected = ctx.family.decoder_projections(ctx.config) + (1 if options.quantize_lm_head else 0)
        if counts.get("MatMulNBits", 0) != expected:
            raise QvlError(f"expected {expected} MatMulNBits nodes, the INT4 plan made {counts.get('MatMulNBits', 0)}")
        if counts.get("QMoE", 0) != ctx.family.decoder_experts(ctx.config) or counts.get("MoE"):
            raise QvlError(f"expected {ctx.family.decoder_experts(ctx.config)} QMoE nodes, the INT4 plan made "
                           f"{counts.get('QMoE', 0)} (and left {counts.get('MoE', 0)} MoE)")
        ctx.record["op_counts"] = counts
        ctx.record["lm_head_bits"], ctx.record["embedding_bits"] = int4.lm_head_bits, int4.embedding_bits
        return int4
    return plan


def _fuse_rms_norm(ctx: ExportContext, proto: onnx.ModelProto) -> None:
    counts = fuse_rms_norm(proto)
    expected = ctx.family.decoder_rms_norms(ctx.config)
    if sum(counts.values()) != expected:
        raise QvlError(f"expected {expected} fused RMSNorms, onnxruntime's fusion made {sum(counts.values())}")


def _kv_cache_quantizer(ctx: ExportContext) -> None:
    from qvl_compile.export.kv_calibration import quantize_graph_kv_cache

    source = checkpoint_source(ctx.reference, ctx.reader)
    ctx.record["kv_cache"] = quantize_graph_kv_cache(ctx.path, ctx.reference, decoder_shape(ctx), ctx.family,
                                                     ctx.target, source=source)


def _verifier(options: QuantOptions):
    def verify(ctx: ExportContext) -> None:
        source = checkpoint_source(ctx.reference, ctx.reader)
        ctx.record["export_check"] = verify_decoder_graph(ctx.path, ctx.reference, decoder_shape(ctx), ctx.family,
                                                          options.mode, options.accuracy_level, ctx.target,
                                                          source=source, kv_cache=options.kv_cache)
    return verify


def _prefill_writer(ctx: ExportContext) -> None:
    from qvl_compile.export.prefill_int8 import write_prefill_graph

    path = ctx.work_dir / PREFILL_FILE
    ctx.record["prefill"] = write_prefill_graph(ctx.path, path)
    check_graph_file(path, ctx.target)


def _prefill_verifier(options: QuantOptions):
    def verify(ctx: ExportContext) -> None:
        source = checkpoint_source(ctx.reference, ctx.reader)
        ctx.record["prefill"]["export_check"] = verify_prefill_graph(
            ctx.path, ctx.work_dir / PREFILL_FILE, ctx.reference, decoder_shape(ctx), ctx.family, options.accuracy_level,
            ctx.target, source=source, kv_cache=options.kv_cache)
    return verify


def _describe(options: QuantOptions):
    def describe(ctx: ExportContext) -> dict[str, Any]:
        return {
            "quant": {"mode": options.mode, "block_size": options.block_size, "accuracy_level": options.accuracy_level,
                      "quantize_lm_head": options.quantize_lm_head,
                      # bits as written (None: float32), the table's the lm_head's where it shares its bytes
                      "lm_head_bits": ctx.record.get("lm_head_bits"), "embedding_bits": ctx.record.get("embedding_bits"),
                      "symmetric": options.symmetric,
                      "quantize_embedding": options.quantize_embedding,
                      "kv_cache": ctx.record.get("kv_cache", {"dtype": "fp32"}),
                      "op_counts": ctx.record.get("op_counts", {})},
            **asdict(decoder_shape(ctx)),
            "image_token_id": ctx.config.image_token_id,
            "video_token_id": ctx.config.video_token_id,
            "kv_cache": KV_IN_PLACE,
            "export_check": ctx.record["export_check"],
            "prefill": ctx.record.get("prefill", {}),
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
    kv_int8 = (Step("int8 KV cache (calibrated per channel)", _kv_cache_quantizer),) if options.kv_cache == "int8" else ()
    prefill = (Step("int8 prefill graph (onnxruntime MatMulInteger)", _prefill_writer),
               Step("verify the prefill graph against transformers", _prefill_verifier(options))) \
        if options.prefill == "int8" else ()
    steps = (*kv_int8, Step(CHECK_STAGE, check_graph),
             Step("verify against transformers (weights streamed)", _verifier(options)), *prefill)
    passes = (GraphPass("fuse RMSNorm (onnxruntime.transformers)", _fuse_rms_norm),) if options.fuse_rms_norm else ()
    return ComponentSpec(
        name="decoder", file_name=DECODER_FILE, load=_load, rewrite=_rewriter(options), example_inputs=_example_inputs,
        dynamic_shapes=_dynamic_shapes, input_names=inputs, output_names=outputs, dim_names=dims,
        translation_table=_translation_table, steps=steps, describe=_describe(options),
        weight_plan=_weight_plan(options), streamed=True, graph_passes=passes,
    )


def export_decoder(ctx: ExportContext, options: QuantOptions) -> dict[str, Any]:
    """Write `decoder.onnx` (+ external data, and the int8 prefill graph if asked) into ctx.work_dir; return its
    artifact fields (the decoder graph first in `files`)."""
    fields = export_component(decoder_spec(ctx.config, options), ctx)
    if options.prefill == "int8":
        fields["files"] += [file_record(ctx.work_dir, name) for name in graph_files(ctx.work_dir, PREFILL_FILE)]
    return fields


__all__ = ["export_decoder", "decoder_spec", "QuantOptions", "DECODER_FILE", "cache_names"]
