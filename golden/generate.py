"""`qvl-compile golden`: the tiny model's PyTorch goldens, written by one command and never by hand.

Every reference is transformers' eager model (or its processor) on the embedded tiny checkpoint,
rebuilt bit-exactly from its seed. The runtime's tests compare ONNX Runtime against these files in an
environment without torch (`tests/test_golden_runtime.py`); the full environment regenerates them and
checks that the committed files still hold (`tests/test_golden_regeneration.py`).
"""
from __future__ import annotations

import json
import logging
import platform
import re
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from qvl_compile.config import ModelConfig
from qvl_compile.export.atomic import atomic_output_dir
from qvl_compile.export.grids import GRID_MATRIX
from qvl_compile.families.qwen3_vl.loaders import load_image_processor, reference_vision
from qvl_compile.families.qwen3_vl.reference import build_prompt, run_reference, with_token_types
from qvl_compile.golden.media import MOTION_VIDEO, write_media
from qvl_compile.golden.store import (
    EXACT,
    GOLDEN_FORMAT,
    INDEX_NAME,
    Tolerance,
    array_digest,
    decoded_digest,
    pixels_from_seed,
    write_case,
)
from qvl_compile.manifest import sha256_file
from qvl_compile.parity import FP32_TOLERANCE, INT4_TOLERANCE, VISION_FP32_TOLERANCE
from qvl_compile.registry import family_named

log = logging.getLogger(__name__)

ALL_KINDS = ("vision", "positions", "decoder", "preprocess", "generate")
# transformers 4.57's slow image processor ignores preprocessor_config.json's `size` (see
# tests/test_preprocess.py), so pixel goldens come from the 5.x PIL processor only.
KINDS_NEEDING_5X = ("preprocess",)

VISION_TOLERANCE = Tolerance("max_rel", VISION_FP32_TOLERANCE, "fp32 ONNX vs eager PyTorch in float64: fp32 rounding "
                             "only, which trained weights amplify (measured up to 1.2e-4; qvl_compile/parity.py)")
FP32_LOGITS = Tolerance("max_rel", FP32_TOLERANCE, "fp32 ONNX vs fp32 eager PyTorch: summation order only (measured ~4e-7)")
INT4_LOGITS = Tolerance("max_rel", INT4_TOLERANCE, "INT4 graph vs eager PyTorch holding that graph's dequantized weights: the "
                        "kernel's blockwise order (measured ~4e-7 at accuracy_level 1); unquantized weights differ by "
                        "~0.15, which is the quantization itself")
PIXELS = Tolerance("max_abs", 1e-6, "transformers rescales then normalises in another float32 order: one ulp of "
                   "values in [-1, 1]")

DECODER_PROMPT = (("text", 4), ("image", (1, 6, 8)), ("text", 3), ("video", (2, 4, 6)), ("text", 2),
                  ("image", (1, 2, 4)), ("text", 5))
DECODER_STEPS = 8
POSITION_PROMPTS = {
    "text": (("text", 7),),
    "image": (("text", 3), ("image", (1, 4, 6)), ("text", 2)),
    "two-images": (("text", 3), ("image", (1, 4, 6)), ("image", (1, 8, 2)), ("text", 2)),
    "video": (("text", 2), ("video", (3, 4, 6)), ("text", 2)),
    "mixed": (("video", (2, 6, 4)), ("text", 1), ("image", (1, 2, 2)), ("text", 3), ("video", (1, 4, 4))),
}
PREPROCESS_IMAGES = ("red-house.png", "wide.png", "grey-small.png", "palette.png", "alpha.png", "cmyk.tiff")
# Shapes-suite questions to the trained model (answers that are right or wrong, not one repeated token), on
# images and a video whose grids every transformers line and the runtime agree on (golden/media.py).
GENERATE_CASES = {
    "text": ("What color is the shape?", (), None),
    "color": ("What color is the shape?", ("shapes-one.png",), None),
    "ground": ("Locate the blue square.", ("shapes-three.png",), None),
    "count": ("How many shapes are there?", ("shapes-three.png",), None),
    "two-images": ("Which image shows the orange shape, the first or the second?",
                   ("shapes-one.png", "shapes-orange.png"), None),
    "motion": ("Which way does the shape move?", (), MOTION_VIDEO),
    "image-video": ("What shape is this?", ("shapes-orange.png",), MOTION_VIDEO),
}
GENERATE_TOKENS = 40  # a grounding reply is 33 tokens and <|im_end|>
PENALTIES = {"penalty-8": 8.0, "greedy": 1.0}


@dataclass(frozen=True)
class Sources:
    """What the goldens are computed from: the tiny checkpoint and two exports of it."""
    model_dir: Path
    fp32_export: Path  # vision + fp32 decoder: the runtime's prompt preparation and the graph summaries
    int4_export: Path  # INT4 decoder: its dequantized weights make the INT4 reference


def build_sources(scratch: Path, family: str = "qwen3_vl") -> Sources:
    from qvl_compile.export.decoder_options import QuantOptions
    from qvl_compile.export.pipeline import export_model

    model_dir = family_named(family).write_tiny(scratch / "tiny")  # the embedded model (trained where one ships)
    log.info("exporting the tiny model (fp32, then the INT4 decoder)")
    export_model(model_dir, scratch / "fp32", component="all", quant=QuantOptions(mode="fp32"))
    export_model(model_dir, scratch / "int4", component="decoder", quant=QuantOptions(accuracy_level=1))  # exact path
    return Sources(model_dir, scratch / "fp32", scratch / "int4")


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in ("torch", "transformers", "numpy", "onnx", "onnxruntime", "pillow", "av", "tokenizers"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def _is_5x() -> bool:
    import transformers

    return int(transformers.__version__.split(".")[0]) >= 5


# --- the cases --------------------------------------------------------------------------------------

def _vision_cases(out: Path, sources: Sources, model) -> list[str]:
    # float64: on trained weights transformers' own fp32 result drifts from the exact one by up to 3.5e-4 of
    # scale at some inputs (export/verify.py); the golden is the exact answer, cast to float32.
    visual = family_named(model.config.model_type).load_vision(sources.model_dir).double()
    patch_dim = ModelConfig.from_dir(sources.model_dir).vision.patch_dim
    names = []
    for index, (label, grid) in enumerate(GRID_MATRIX.items()):
        rows = int(sum(t * h * w for t, h, w in grid))
        seed = 100 + index
        pixels = pixels_from_seed(rows, patch_dim, seed)
        grid_thw = np.asarray(grid, np.int64)
        merged, deepstack = (t.float() for t in reference_vision(visual, torch.from_numpy(pixels).double(),
                                                                 torch.from_numpy(grid_thw)))
        name = f"vision/{slug(label)}"
        write_case(out, name, "vision", params={"label": label, "dtype": "float32"},
                   inputs={"pixel_values": ("recipe", pixels, {"rows": rows, "patch_dim": patch_dim, "seed": seed}),
                           "grid_thw": grid_thw},
                   outputs={"image_embeds": (merged.numpy(), VISION_TOLERANCE),
                            "deepstack_embeds": (deepstack.numpy(), VISION_TOLERANCE)},
                   notes="transformers' Qwen3VLVisionModel (sdpa, float64) on seeded pixels; the grid matrix of "
                         "export/grids.py")
        names.append(name)
    return names


def _grids(parts, kind: str) -> np.ndarray:
    return np.asarray([g for k, g in parts if k == kind], np.int64).reshape(-1, 3)


def _position_cases(out: Path, sources: Sources, model) -> list[str]:
    names = []
    for label, parts in POSITION_PROMPTS.items():
        prompt = build_prompt(model.config, list(parts), seed=2)
        _, calls = run_reference(model, prompt, [])
        deltas = model.model.rope_deltas  # None after a text-only prompt: plain positions, no offset
        delta = np.zeros(1, np.int64) if deltas is None else deltas.reshape(-1)[:1].numpy().astype(np.int64)
        name = f"positions/{label}"
        write_case(out, name, "positions", params={"parts": [list(p) for p in parts]},
                   inputs={"input_ids": prompt.input_ids[0].numpy(), "image_grid_thw": _grids(parts, "image"),
                           "video_grid_thw": _grids(parts, "video")},
                   outputs={"position_ids": (calls[0].position_ids[:, 0].numpy(), EXACT),
                            "rope_delta": (delta, EXACT)},
                   notes="the 3-row M-RoPE positions transformers feeds its text stack, and its rope_deltas")
        names.append(name)
    return names


def _decoder_case(out: Path, name: str, model, tolerance: Tolerance, params: dict) -> str:
    from qvl_compile.export.decoder_verify import visual_inputs

    prompt = build_prompt(model.config, list(DECODER_PROMPT), seed=31)
    text_vocab = min(model.config.vision_start_token_id, model.config.image_token_id, model.config.video_token_id)
    steps = np.random.default_rng(32).integers(0, text_vocab, DECODER_STEPS).astype(np.int64)
    logits, calls = run_reference(model, prompt, steps.tolist())
    visual, deepstack = visual_inputs(calls[0])
    positions = np.asarray([int(c.position_ids.flatten()[0]) for c in calls[1:]], np.int64)
    write_case(out, name, "decoder", params={"parts": [list(p) for p in DECODER_PROMPT], **params},
               inputs={"input_ids": prompt.input_ids.numpy(), "position_ids": calls[0].position_ids.numpy(),
                       "visual_embeds": visual, "deepstack_embeds": deepstack, "step_tokens": steps,
                       "step_positions": positions},
               outputs={"prefill_logits": (logits[0].numpy(), tolerance),
                        "step_logits": (np.concatenate([step[0, -1:].numpy() for step in logits[1:]]), tolerance)},
               notes="prefill of a multimodal prompt (logits at every position), then cached steps fed step_tokens; "
                     "visual and DeepStack features and positions are what transformers gave its text stack")
    return name


def _decoder_cases(out: Path, sources: Sources, model) -> list[str]:
    from qvl_compile.export.graph_weights import fake_quant_reference

    graph = sources.int4_export / "decoder.onnx"
    quant = json.loads((sources.int4_export / "manifest.json").read_text())["options"]["quant"]
    family = family_named(model.config.model_type)
    return [_decoder_case(out, "decoder/fp32", model, FP32_LOGITS, {"reference": "unquantized fp32 weights"}),
            _decoder_case(out, "decoder/int4", fake_quant_reference(model, graph, family), INT4_LOGITS,
                          {"reference": "the INT4 export's dequantized weights", "quant": quant})]


def _preprocess_cases(out: Path, sources: Sources, model) -> list[str]:
    processor = load_image_processor(sources.model_dir)
    names = []
    for image_name in PREPROCESS_IMAGES:
        with Image.open(out / "media" / image_name) as image:
            ref = processor(images=[image], return_tensors="np")
            mode, size = image.mode, image.size
        name = f"preprocess/{slug(image_name)}"
        write_case(out, name, "preprocess", params={"image": image_name, "mode": mode, "size": list(size)},
                   inputs={}, outputs={"pixel_values": (ref["pixel_values"], PIXELS),
                                       "grid_thw": (ref["image_grid_thw"].astype(np.int64), EXACT)},
                   notes=f"transformers' {type(processor).__name__} on media/{image_name}")
        names.append(name)
    return names


def _generate_cases(out: Path, sources: Sources, model) -> list[str]:
    from qvl_compile.runtime.pipeline import Pipeline

    pipe = Pipeline(sources.fp32_export)
    processor = load_image_processor(sources.model_dir)
    names = []
    for label, (prompt, images, video_name) in GENERATE_CASES.items():
        paths = [out / "media" / n for n in images]
        video = out / "media" / video_name if video_name else None
        with_video = video is not None
        prepared = pipe.prepare(prompt, images=paths, video=video)
        ids = torch.from_numpy(prepared.input_ids[None])
        kwargs: dict[str, Any] = {"input_ids": ids}
        params: dict[str, Any] = {"prompt": prompt, "images": list(images), "video": video_name,
                                  "max_new_tokens": GENERATE_TOKENS}
        if paths:
            opened = [Image.open(p) for p in paths]
            pixels = processor(images=opened, return_tensors="np")
            kwargs["pixel_values"] = torch.from_numpy(pixels["pixel_values"])
            kwargs["image_grid_thw"] = torch.from_numpy(pixels["image_grid_thw"])
        if with_video:  # transformers' video processor needs torchvision: it gets the runtime's video pixels
            rows = int(np.prod(prepared.grid_thw[-1]))
            kwargs["pixel_values_videos"] = torch.from_numpy(prepared.pixel_values[-rows:])
            kwargs["video_grid_thw"] = torch.from_numpy(prepared.grid_thw[-1:])
            params["video_pixels_sha256"] = array_digest(prepared.pixel_values[-rows:])
        with_token_types(model, kwargs)
        for suffix, penalty in PENALTIES.items():
            model.model.rope_deltas = None
            with torch.no_grad():
                # The runtime never generates a media placeholder (Pipeline.never_generated): transformers is held
                # to the same rule through its own bad_words_ids.
                generated = model.generate(**kwargs, max_new_tokens=GENERATE_TOKENS, do_sample=False,
                                           repetition_penalty=penalty,
                                           bad_words_ids=[[int(i)] for i in pipe.never_generated])
            name = f"generate/{label}-{suffix}"
            tokens = generated[0, ids.shape[1]:].tolist()
            if len(set(tokens)) < 2:
                raise ValueError(f"golden case {name!r}: the reply is one repeated token ({tokens[:3]}...); "
                                 "a generate golden must be an answer")
            write_case(out, name, "generate", params={**params, "repetition_penalty": penalty},
                       inputs={"input_ids": prepared.input_ids},
                       outputs={"token_ids": (generated[0, ids.shape[1]:].numpy().astype(np.int64), EXACT)},
                       notes="transformers' generate() (greedy, repetition penalty as given, media placeholders banned "
                             "as the runtime bans them); input_ids are the "
                             "runtime's chat-template rendering, image pixels transformers' own processor's")
            names.append(name)
    return names


WRITERS = {"vision": _vision_cases, "positions": _position_cases, "decoder": _decoder_cases,
           "preprocess": _preprocess_cases, "generate": _generate_cases}
GRAPHS = {"vision.txt": ("fp32_export", "vision.onnx"), "decoder-fp32.txt": ("fp32_export", "decoder.onnx"),
          "decoder-int4.txt": ("int4_export", "decoder.onnx")}


def write_graph_summaries(folder: Path, sources: Sources) -> list[str]:
    from qvl_compile.export.graph_summary import summarize

    folder.mkdir(parents=True, exist_ok=True)
    for name, (export, graph) in GRAPHS.items():
        (folder / name).write_text(summarize(getattr(sources, export) / graph))
    return list(GRAPHS)


def golden_command(family) -> str:
    """The command that writes `family`'s committed goldens."""
    folder = f"golden/{family.golden_folder}"
    return f"qvl-compile golden {folder}" + ("" if family.name == "qwen3_vl" else f" --model-type {family.model_types[0]}")


@torch.no_grad()
def generate_goldens(out_dir: str | Path, kinds=ALL_KINDS, sources: Sources | None = None,
                     force: bool = False, family: str = "qwen3_vl") -> dict[str, Any]:
    """Write the golden folder `out_dir` (atomically) of `family`'s tiny model; returns its index."""
    owner = family_named(family)
    unknown = sorted(set(kinds) - set(ALL_KINDS))
    if unknown:
        raise ValueError(f"golden kinds: expected some of {', '.join(ALL_KINDS)}, got {', '.join(unknown)}")
    skipped = {k: "needs transformers 5.x's PIL image processor" for k in kinds if k in KINDS_NEEDING_5X and not _is_5x()}
    with atomic_output_dir(out_dir, force=force, marker=INDEX_NAME) as work, tempfile.TemporaryDirectory() as scratch:
        sources = sources or build_sources(Path(scratch), family)
        media = write_media(work / "media")
        model = owner.load_model(sources.model_dir)
        cases: list[str] = []
        for kind in kinds:
            if kind in skipped:
                log.warning("skipping %s goldens: %s", kind, skipped[kind])
                continue
            log.info("golden %s cases", kind)
            cases += WRITERS[kind](work, sources, model)
        graphs = write_graph_summaries(work / "graphs", sources)
        index = {
            "format": GOLDEN_FORMAT,
            "generator": {"command": golden_command(owner), "versions": _versions(), "dtype": "float32",
                          "skipped": skipped},
            "tiny_checkpoint": {"model": "trained" if owner.ships_trained_tiny else "random (seed 0)",
                                "files": {p.name: sha256_file(p) for p in sorted(sources.model_dir.iterdir())
                                          if p.is_file()}},
            "media": {name: {"what": what, "pixels_sha256": decoded_digest(work / "media" / name)}
                      for name, what in media.items()},
            "graphs": graphs,
            "cases": cases,
        }
        (work / INDEX_NAME).write_text(json.dumps(index, indent=1) + "\n")
    return index

