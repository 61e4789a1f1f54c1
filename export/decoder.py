"""Export the text decoder: checkpoint -> rewrite -> capture -> translate -> check -> quantize -> verify.

One graph serves prefill and cached decoding (see `DECODER_INPUTS` below). With `--quant int4` every
projection MatMul (and the lm_head unless excluded) becomes onnxruntime's `MatMulNBits`, produced by
onnxruntime's own `MatMulNBitsQuantizer`.
"""
from __future__ import annotations

import dataclasses
import logging
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch

from qvl_compile.config import ModelConfig
from qvl_compile.errors import QvlError
from qvl_compile.export.graph_names import name_dims
from qvl_compile.export.onnx_functions import cached_attention_onnx
from qvl_compile.export.stages import Stages, release_memory
from qvl_compile.export.vision import EXTERNAL_DATA_BYTES, io_record
from qvl_compile.manifest import file_record
from qvl_compile.export.decoder_options import QuantOptions
from qvl_compile.export.decoder_verify import verify_decoder_graph
from qvl_compile.rewrite.decoder import RewrittenTextDecoder
from qvl_compile.runtime.decoder import DecoderFacts

log = logging.getLogger(__name__)

DECODER_FILE = "decoder.onnx"
OPSET = 18
LM_HEAD_NODE_HINT = "lm_head"


def cache_names(num_layers: int) -> tuple[list[str], list[str], list[str], list[str]]:
    past_k = [f"past_key_values.{i}.key" for i in range(num_layers)]
    past_v = [f"past_key_values.{i}.value" for i in range(num_layers)]
    present_k = [f"present.{i}.key" for i in range(num_layers)]
    present_v = [f"present.{i}.value" for i in range(num_layers)]
    return past_k, past_v, present_k, present_v


def load_full_model(model_dir: Path):
    from transformers import Qwen3VLForConditionalGeneration

    try:
        model = Qwen3VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    except TypeError:  # 4.57.x spells it torch_dtype
        model = Qwen3VLForConditionalGeneration.from_pretrained(model_dir, torch_dtype=torch.float32)
    return model.eval()


def _example_inputs(config: ModelConfig, num_deepstack: int):
    """Batch 2, 6 new tokens (2 visual per row), 3 cached: no dim is 0 or 1, so none is specialized."""
    text = config.text
    input_ids = torch.tensor([[1, config.image_token_id, config.image_token_id, 2, 3, 4],
                              [5, 6, config.video_token_id, config.video_token_id, 7, 8]])
    position_ids = torch.arange(3, 9).view(1, 1, 6).expand(3, 2, 6).contiguous()
    visual = torch.randn(4, text.hidden_size)
    deepstack = torch.randn(num_deepstack, 4, text.hidden_size)
    logit_positions = torch.tensor([4, 5])
    past = [torch.randn(2, text.num_key_value_heads, 3, text.head_dim) for _ in range(text.num_hidden_layers)]
    attention_mask = torch.ones(2, 3 + 6, dtype=torch.int64)  # [B, valid past + S]
    return input_ids, position_ids, visual, deepstack, logit_positions, attention_mask, past, [p.clone() for p in past]


def _quantize(fp32_path: Path, out_path: Path, options: QuantOptions, external: bool) -> dict[str, int]:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(fp32_path))
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    exclude = [] if options.quantize_lm_head else [n.name for n in matmuls if _is_lm_head(model, n)]
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


def _is_lm_head(model: onnx.ModelProto, node: onnx.NodeProto) -> bool:
    return any(out.name in node.output for out in model.graph.output) or LM_HEAD_NODE_HINT in node.name


def export_decoder(model_dir: Path, work_dir: Path, options: QuantOptions) -> dict[str, Any]:
    """Write `decoder.onnx` (+ external data) into `work_dir`; return its manifest entry."""
    options.validate()
    stages = Stages(["load checkpoint", "rewrite", "capture (torch.export)", "translate to ONNX",
                     "check (onnx.checker, onnxruntime load)", "quantize (onnxruntime MatMulNBits)",
                     "verify against transformers"])
    with stages.run("load checkpoint"):
        config = ModelConfig.from_dir(model_dir)
        hf_model = load_full_model(model_dir)
    num_deepstack = len(config.vision.deepstack_visual_indexes)
    with stages.run("rewrite"):
        decoder = RewrittenTextDecoder(hf_model, config.text, config.image_token_id, config.video_token_id,
                                       num_deepstack, consume=True).eval()
        hf_model.model.visual = None  # the decoder graph needs none of the vision tower's 0.4B parameters
        weight_bytes = sum(p.numel() * p.element_size() for p in decoder.parameters())
        weight_bytes += decoder.embed_tokens.numel() * 4

    args = _example_inputs(config, num_deepstack)
    layers = config.text.num_hidden_layers
    with stages.run("capture (torch.export)"):
        batch, seq, past, total = (torch.export.Dim(n, min=1) for n in ("batch", "seq", "past", "total"))
        visual, logits_n = torch.export.Dim("num_visual", min=1), torch.export.Dim("num_logits", min=1)
        cache = {0: batch, 2: past}
        dynamic = ({0: batch, 1: seq}, {1: batch, 2: seq}, {0: visual}, {1: visual}, {0: logits_n},
                   {0: batch, 1: total}, [cache] * layers, [cache] * layers)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            program = torch.export.export(decoder, args, dynamic_shapes=dynamic, strict=False)

    past_k, past_v, present_k, present_v = cache_names(layers)
    fp32_name = DECODER_FILE if options.mode == "fp32" else "decoder.fp32.onnx"
    fp32_path = work_dir / fp32_name
    external = weight_bytes > EXTERNAL_DATA_BYTES
    with stages.run("translate to ONNX"), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        onnx_program = torch.onnx.export(
            program, args,
            input_names=["input_ids", "position_ids", "visual_embeds", "deepstack_embeds", "logit_positions",
                         "attention_mask", *past_k, *past_v],
            output_names=["logits", *present_k, *present_v],
            opset_version=OPSET, dynamo=True, optimize=True, verbose=False,
            custom_translation_table={torch.ops.qvl_compile.cached_attention.default: cached_attention_onnx},
        )
        cache_dims = ["batch", None, "past_seq", None]
        present_dims = ["batch", None, "present_seq", None]  # max(past_seq, total_seq)
        name_dims(onnx_program.model, {
            "input_ids": ["batch", "seq"], "position_ids": [None, "batch", "seq"], "attention_mask": ["batch", "total_seq"],
            "visual_embeds": ["num_visual", None], "deepstack_embeds": [None, "num_visual", None],
            "logit_positions": ["num_logits"], "logits": ["batch", "num_logits", None],
            **{n: cache_dims for n in past_k + past_v}, **{n: present_dims for n in present_k + present_v}})
        onnx_program.save(str(fp32_path), external_data=external)
    # Free the captured program and the checkpoint before quantizing: at 2B size each holds gigabytes.
    del onnx_program, program, decoder, hf_model
    release_memory()

    with stages.run("check (onnx.checker, onnxruntime load)"):
        onnx.checker.check_model(str(fp32_path), full_check=True)

    op_counts: dict[str, int] = {}
    path = fp32_path
    if options.mode == "int4":
        with stages.run("quantize (onnxruntime MatMulNBits)"):
            path = work_dir / DECODER_FILE
            op_counts = _quantize(fp32_path, path, options, external)
            for stale in [fp32_path, work_dir / (fp32_name + ".data")]:
                stale.unlink(missing_ok=True)
            release_memory()
            expected = 7 * layers + (1 if options.quantize_lm_head else 0)
            if op_counts.get("MatMulNBits", 0) != expected:
                raise QvlError(f"expected {expected} MatMulNBits nodes, the quantizer made {op_counts.get('MatMulNBits', 0)}")

    text = config.text
    facts = DecoderFacts(num_layers=layers, num_key_value_heads=text.num_key_value_heads, head_dim=text.head_dim,
                         hidden_size=text.hidden_size, vocab_size=text.vocab_size, num_deepstack=num_deepstack)
    with stages.run("verify against transformers"):
        parity = verify_decoder_graph(path, load_full_model(model_dir), facts, options.mode, options.accuracy_level)

    model = onnx.load(str(path), load_external_data=False)
    files = [DECODER_FILE] + sorted(p.name for p in work_dir.iterdir() if p.name.startswith(DECODER_FILE + "."))
    return {
        "files": [file_record(work_dir, name) for name in files],
        "opset": OPSET,
        **io_record(model),
        "quant": {"mode": options.mode, "block_size": options.block_size, "accuracy_level": options.accuracy_level,
                  "quantize_lm_head": options.quantize_lm_head, "symmetric": options.symmetric,
                  "op_counts": op_counts},
        **dataclasses.asdict(facts),
        "image_token_id": config.image_token_id,
        "video_token_id": config.video_token_id,
        "export_check": parity,
        "stage_seconds": stages.seconds,
    }


__all__ = ["export_decoder", "QuantOptions", "DECODER_FILE", "cache_names"]
