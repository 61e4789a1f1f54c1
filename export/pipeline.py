"""`qvl-compile export`: export the requested components into OUT_DIR atomically, with a typed manifest."""
from __future__ import annotations

import dataclasses
import logging
import platform
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

from qvl_compile import __version__
from qvl_compile.config import ModelConfig
from qvl_compile.contract import CPU_FP32, FORMAT, Artifact, Manifest, Target, artifact_from_dict
from qvl_compile.errors import QvlError
from qvl_compile.export.atomic import atomic_output_dir
from qvl_compile.export.checkpoint_files import weight_files
from qvl_compile.export.component import ExportContext
from qvl_compile.export.decoder_options import QuantOptions
from qvl_compile.export.provenance import stamp_source
from qvl_compile.export.vision_quant import VisionQuantOptions
from qvl_compile.manifest import MANIFEST_NAME, file_record, read_manifest, source_digest, write_manifest
from qvl_compile.registry import family_named

log = logging.getLogger(__name__)
VERSIONED_PACKAGES = ("torch", "transformers", "onnx", "onnxruntime", "onnxscript", "onnx-ir")
COMPONENTS = ("vision", "decoder", "all")
# The targets export can write today; fp16 for GPUs joins this tuple with its passes.
SUPPORTED_TARGETS = (CPU_FP32,)
# What the torch-free runtime reads beside the graphs, copied from the checkpoint when present.
RUNTIME_ASSETS = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                  "chat_template.jinja", "preprocessor_config.json", "video_preprocessor_config.json")


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "qvl-compile": __version__}
    for name in VERSIONED_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def _source_record(model_dir: Path) -> dict[str, Any]:
    names = ["config.json"] + [p.name for p in weight_files(model_dir)]
    files = [file_record(model_dir, n) for n in names]
    return {"model_dir": str(model_dir.absolute()), "sha256": source_digest(files),
            "files": [dataclasses.asdict(f) for f in files]}


def _carry_over(out_dir: Path, work_dir: Path, source: dict[str, Any], keep: set[str]) -> dict[str, Artifact]:
    """Artifacts of other components from an earlier export of the same checkpoint, copied into work_dir."""
    if not (out_dir / MANIFEST_NAME).is_file():
        return {}
    previous = read_manifest(out_dir)
    if [f["sha256"] for f in previous.source["files"]] != [f["sha256"] for f in source["files"]]:
        log.info("existing export in %s came from another checkpoint; replacing all of it", out_dir)
        return {}
    carried = {}
    for name, artifact in previous.artifacts.items():
        if name in keep:
            for record in artifact.files:
                shutil.copy2(out_dir / record.path, work_dir / record.path)
            carried[name] = artifact
    return carried


def _check_options(component: str, quant: QuantOptions, vision_quant: VisionQuantOptions, target: Target) -> None:
    quant.validate()
    vision_quant.validate()
    if component not in COMPONENTS:
        raise QvlError(f"--component: expected one of {', '.join(COMPONENTS)}, got {component!r}")
    if target not in SUPPORTED_TARGETS:
        raise QvlError(f"target {target}: expected one of {', '.join(map(str, SUPPORTED_TARGETS))}")


def _export_components(wanted, ctx_args: dict[str, Any], quant: QuantOptions, vision_quant: VisionQuantOptions,
                       digest: str) -> dict[str, Artifact]:
    from qvl_compile.export.decoder import export_decoder
    from qvl_compile.export.vision import export_vision

    exporters = {"vision": lambda ctx: export_vision(ctx, vision_quant), "decoder": lambda ctx: export_decoder(ctx, quant)}
    artifacts = {}
    for name in wanted:
        ctx = ExportContext(**ctx_args)
        artifacts[name] = artifact_from_dict(name, stamp_source(ctx.work_dir, exporters[name](ctx), digest))
    return artifacts


def _check_checkpoint(model_dir: Path, family) -> None:
    """Before anything is written: every weight file is whole, and every tensor the model needs is in it with
    the shape the config gives and a readable dtype (headers only; no weight is read)."""
    from qvl_compile.export.checkpoint_files import CheckpointReader
    from qvl_compile.export.streamed_reference import checkpoint_source

    checkpoint_source(family.load_skeleton(model_dir), CheckpointReader(model_dir))


def export_model(model_dir: str | Path, out_dir: str | Path, component: str = "all",
                 quant: QuantOptions | None = None, force: bool = False,
                 vision_quant: VisionQuantOptions | None = None, target: Target = CPU_FP32) -> Manifest:
    """Export `component` of a checkpoint; an earlier export's other component is kept if same source."""
    quant, vision_quant = quant or QuantOptions(), vision_quant or VisionQuantOptions()
    _check_options(component, quant, vision_quant, target)
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    config = ModelConfig.from_dir(model_dir)
    family = family_named(config.model_type)
    quant = quant.for_family(family.auto_block_size(config))
    if quant.prefill == "int8" and family.decoder_experts(config):
        # Measured on the tiny MoE: only the attention projections convert, and next-token agreement fell from 49 to
        # 47 of 52 positions, at the 90% bound routed graphs are held to (qvl_compile.parity.ROUTED_MIN_AGREEMENT).
        raise QvlError(f"--prefill int8: expected a dense decoder, got the {family.name} family, whose experts stay in "
                       "4-bit QMoE (no int8 prefill form); export without --prefill")
    _check_checkpoint(model_dir, family)
    source = _source_record(model_dir)
    wanted = ("vision", "decoder") if component == "all" else (component,)
    with atomic_output_dir(out_dir, force=force, marker=MANIFEST_NAME) as work_dir:
        artifacts = _carry_over(out_dir, work_dir, source, keep={"vision", "decoder"} - set(wanted))
        ctx_args = {"family": family, "config": config, "model_dir": model_dir, "work_dir": work_dir, "target": target}
        artifacts |= _export_components(wanted, ctx_args, quant, vision_quant, source["sha256"])
        assets = [name for name in RUNTIME_ASSETS if (model_dir / name).is_file()]
        for name in assets:
            shutil.copy2(model_dir / name, work_dir / name)
        manifest = Manifest(
            format=FORMAT, family=family.name, source=source, model=dataclasses.asdict(config), versions=_versions(),
            options={"component": component, "quant": dataclasses.asdict(quant),
                     "vision_quant": dataclasses.asdict(vision_quant), "target": dataclasses.asdict(target)},
            artifacts={name: artifacts[name] for name in ("vision", "decoder") if name in artifacts},
            assets=tuple(file_record(work_dir, name) for name in assets),
        )
        write_manifest(work_dir, manifest)
    log.info("wrote %s", out_dir)
    return manifest
