"""`qvl-compile verify`: parity of an export folder's graphs against eager PyTorch (torch side).

Vision: the named grid matrix. Decoder: cases other than the export-time prompt (another layout, sizes
and seed). Tolerances come from `qvl_compile.parity`, by what the manifest says the graph is.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from qvl_compile.config import ModelConfig
from qvl_compile.contract import DecoderArtifact, VisionArtifact
from qvl_compile.export.grids import GRID_MATRIX
from qvl_compile.parity import (
    FP32,
    FP32_TOLERANCE,
    INT4_TOLERANCE,
    INT8_VISION,
    Criteria,
    ParityRow,
    compare,
    is_lossy,
    prefill_int8_tolerance,
    random_pixels,
    shipped_tolerance,
)
from qvl_compile.registry import Family, family_named
from qvl_compile.runtime.vision import VisionEncoder

log = logging.getLogger(__name__)

__all__ = ["ParityRow", "vision_parity", "verify_export", "vision_criteria", "DECODER_CASES"]


def vision_parity(encoder: VisionEncoder, reference: torch.nn.Module, grids: dict, family: Family, seed: int = 1,
                  criteria: Criteria = FP32, grid_dtype=np.int64, exact: Callable | None = None) -> list[ParityRow]:
    """Each grid's outputs against the fp32 reference. Where an fp32 comparison fails and `exact` is given (a
    float64 copy of the reference, made on first use), the graph is judged against the float64 result instead,
    and the row says so: on trained weights PyTorch's own fp32 result can be the one that drifts (measured:
    3.5e-4 of scale from float64 on the trained tiny model, where the graph stayed within 1.2e-5)."""
    rows = []
    for offset, (name, grid) in enumerate(grids.items()):
        pixels = random_pixels(grid, encoder.patch_dim, seed + offset)
        got = encoder(pixels, np.asarray(grid, dtype=grid_dtype))
        ref_embeds, ref_deepstack = family.reference_vision(reference, torch.from_numpy(pixels), torch.tensor(grid))
        pair = [compare(name, grid, "image_embeds", got.image_embeds, ref_embeds.numpy(), criteria),
                compare(name, grid, "deepstack_embeds", got.deepstack_embeds, ref_deepstack.numpy(), criteria)]
        if exact is not None and criteria == FP32 and not all(row.passed for row in pair):
            with torch.no_grad():
                refs = family.reference_vision(exact(), torch.from_numpy(pixels).double(), torch.tensor(grid))
            outputs = (got.image_embeds, got.deepstack_embeds)
            pair = [row if row.passed else replace(compare(name, grid, row.output, out, ref.numpy(), criteria),
                                                   output=f"{row.output} (fp64)")
                    for row, out, ref in zip(pair, outputs, refs)]
        rows += pair
        log.info("%s: %s", name, "pass" if all(row.passed for row in pair) else "FAIL")
    return rows


def float64_vision(model_dir: Path, family: Family) -> Callable[[], torch.nn.Module]:
    """A loader of the checkpoint's vision tower in float64, run once on first call (only when an fp32
    comparison fails: it holds twice the fp32 tower's bytes)."""
    loaded: list[torch.nn.Module] = []

    def get() -> torch.nn.Module:
        if not loaded:
            log.info("an fp32 comparison failed: judging it against the float64 vision tower")
            loaded.append(family.load_vision(model_dir).double())
        return loaded[0]

    return get


@contextlib.contextmanager
def streamed_vision(hf_model, reader, family: Family) -> Iterator[torch.nn.Module]:
    """The vision tower of a skeleton `hf_model`, its weights read from the checkpoint module by module."""
    from qvl_compile.export.streamed_reference import checkpoint_source, stream_parameters

    visual = hf_model.get_submodule(family.vision_module)
    with stream_parameters(visual, checkpoint_source(visual, reader, prefix=family.vision_module + ".")) as model:
        yield model


DECODER_CASES = {
    "decoder: video, 2 images": (("text", 3), ("video", (3, 4, 6)), ("text", 4), ("image", (1, 8, 4)),
                                 ("image", (1, 2, 2)), ("text", 6)),
    "decoder: text only": (("text", 12),),
}
DECODER_STEPS = 16


def decoder_tolerance(artifact: DecoderArtifact) -> float:
    """fp32: vs transformers. int4: vs transformers with the graph's dequantized weights, at its accuracy level;
    wider with an int8 KV cache, and with an int8 prefill graph reading the prompts."""
    if artifact.prefill:
        return prefill_int8_tolerance(_accuracy_level(artifact), _kv_cache(artifact))
    return shipped_tolerance(artifact.quant.get("mode", "fp32"), _accuracy_level(artifact), _kv_cache(artifact))


def _kv_cache(artifact: DecoderArtifact) -> str:
    return artifact.quant.get("kv_cache", {}).get("dtype", "fp32")


def _accuracy_level(artifact: DecoderArtifact) -> int:
    return int(artifact.quant.get("accuracy_level", 0))


def decoder_rows(export_dir: Path, model_dir: Path, family: Family, seed: int) -> list[ParityRow]:
    """fp32 and INT4 at fp32 activations: logits within tolerance and identical greedy tokens. INT4 at a level
    that quantizes activations (lossy by design): its weights on an accuracy_level 0 copy as above, then the graph
    as shipped within `int4_tolerance(level)`, its greedy tokens reported but not required to match. An int8 KV
    cache is lossy too: the exact rows run on a copy with an fp32 cache. So is an int8 prefill graph: the export as
    shipped reads each prompt with it; the exact rows run the 4-bit graph alone."""
    from qvl_compile.export.checkpoint_files import CheckpointReader
    from qvl_compile.export.decoder_verify import accuracy_level_copy, decoder_reference, routes_experts
    from qvl_compile.export.streamed_reference import checkpoint_source
    from qvl_compile.runtime.decoder import TextDecoder

    decoder = TextDecoder.from_export(export_dir, verify_hashes=True)
    artifact = decoder.artifact
    skeleton = family.load_skeleton(model_dir)
    source = checkpoint_source(skeleton, CheckpointReader(model_dir))
    graph, mode = export_dir / artifact.graph, artifact.quant.get("mode", "fp32")
    lossy = is_lossy(mode, _accuracy_level(artifact), _kv_cache(artifact)) or bool(artifact.prefill)
    with decoder_reference(graph, skeleton, family, mode, source) as reference:
        if not lossy:
            return _decoder_case_rows(decoder, reference, family, seed, decoder_tolerance(artifact))
        label = f"accuracy_level {_accuracy_level(artifact)}" if mode == "int4" else "as shipped"
        # Lossy activations move an MoE router's logits: a token routed to other experts is not an error bound's
        # business (qvl_compile.parity.ROUTED_MIN_AGREEMENT), so its logits are shown, and the weights rows decide.
        shipped = _decoder_case_rows(decoder, reference, family, seed, decoder_tolerance(artifact),
                                     label=label + (", int8 KV cache" if _kv_cache(artifact) == "int8" else "")
                                     + (", int8 prefill graph" if artifact.prefill else ""),
                                     tokens_required=False, logits_required=not routes_experts(graph))
        del decoder  # one session at a time: real-size decoders are gigabytes
        with accuracy_level_copy(graph, 0) as exact_graph:
            exact = _decoder_case_rows(TextDecoder(exact_graph, artifact.shape), reference, family, seed,
                                       INT4_TOLERANCE if mode == "int4" else FP32_TOLERANCE,
                                       label=f"{mode} weights" + (", fp32 KV cache" if _kv_cache(artifact) == "int8" else ""))
        return exact + shipped  # the weights' rows first: they are the ones that must match exactly


def _decoder_case_rows(decoder, reference, family: Family, seed: int, tolerance: float, label: str = "",
                       tokens_required: bool = True, logits_required: bool = True) -> list[ParityRow]:
    from qvl_compile.export.decoder_verify import decoder_parity

    rows = []
    for offset, (name, parts) in enumerate(DECODER_CASES.items()):
        parity = decoder_parity(decoder, reference, family, DECODER_STEPS, tolerance, seed=seed + offset, parts=parts)
        case = f"{name} [{label}]" if label else name
        grid = tuple(value for kind, value in parts if kind != "text")
        same = parity.onnx_tokens == parity.reference_tokens
        case_rows = [
            ParityRow(case, grid, "prefill logits", float("nan"), parity.prefill_max_rel, tolerance,
                      required=logits_required),
            ParityRow(case, grid, f"{DECODER_STEPS} step logits", float("nan"), max(parity.steps_max_rel), tolerance,
                      required=logits_required),
            ParityRow(case, grid, "greedy tokens", float("nan"), 0.0 if same else float("inf"), 0.0, exact=True,
                      required=tokens_required)]
        log.info("%s: %s", case, "pass" if all(r.passed for r in case_rows) else "FAIL")
        rows += case_rows
    return rows


def vision_criteria(artifact: VisionArtifact) -> Criteria:
    """fp32 graph, or int8 weights (cosine criterion)."""
    return INT8_VISION if artifact.quant.get("mode") == "int8" else FP32


def verify_export(export_dir: str | Path, model_dir: str | Path, grids: dict | None = None,
                  seed: int = 1) -> list[ParityRow]:
    from qvl_compile.manifest import read_manifest

    export_dir, model_dir = Path(export_dir), Path(model_dir)
    manifest = read_manifest(export_dir)
    ModelConfig.from_dir(model_dir)  # one-line errors for a wrong folder before any loading
    family = family_named(manifest.family)
    log.info("verify: loading the export's graphs and the PyTorch reference from %s", model_dir)
    rows: list[ParityRow] = []
    if "vision" in manifest.artifacts:
        encoder = VisionEncoder.from_export(export_dir, verify_hashes=True)
        criteria = vision_criteria(manifest.artifacts["vision"])
        from qvl_compile.export.checkpoint_files import CheckpointReader

        with streamed_vision(family.load_skeleton(model_dir), CheckpointReader(model_dir), family) as reference:
            rows += vision_parity(encoder, reference, grids or GRID_MATRIX, family, seed=seed, criteria=criteria,
                                  exact=float64_vision(model_dir, family))
    if "decoder" in manifest.artifacts:
        rows += decoder_rows(export_dir, model_dir, family, seed)
    return rows
