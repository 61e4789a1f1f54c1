"""`qvl-compile export`: export the requested components into OUT_DIR atomically, with a manifest."""
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
from qvl_compile.errors import QvlError
from qvl_compile.export.atomic import atomic_output_dir
from qvl_compile.export.decoder_options import QuantOptions
from qvl_compile.export.vision_quant import VisionQuantOptions
from qvl_compile.golden.reference import weight_files
from qvl_compile.export.provenance import stamp_source
from qvl_compile.manifest import FORMAT, MANIFEST_NAME, file_record, read_manifest, source_digest, write_manifest

log = logging.getLogger(__name__)
VERSIONED_PACKAGES = ("torch", "transformers", "onnx", "onnxruntime", "onnxscript", "onnx-ir")


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
    return {"model_dir": str(model_dir.absolute()), "sha256": source_digest(files), "files": files}


def _carry_over(out_dir: Path, work_dir: Path, source: dict[str, Any], keep: set[str]) -> dict[str, Any]:
    """Artifacts of other components from an earlier export of the same checkpoint, copied into work_dir."""
    if not (out_dir / MANIFEST_NAME).is_file():
        return {}
    previous = read_manifest(out_dir)
    if [f["sha256"] for f in previous["source"]["files"]] != [f["sha256"] for f in source["files"]]:
        log.info("existing export in %s came from another checkpoint; replacing all of it", out_dir)
        return {}
    carried = {}
    for name, artifact in previous.get("artifacts", {}).items():
        if name in keep:
            for record in artifact["files"]:
                shutil.copy2(out_dir / record["path"], work_dir / record["path"])
            carried[name] = artifact
    return carried


COMPONENTS = ("vision", "decoder", "all")
# What the torch-free runtime reads beside the graphs, copied from the checkpoint when present.
RUNTIME_ASSETS = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                  "chat_template.jinja", "preprocessor_config.json", "video_preprocessor_config.json")


def _max_positions(model_dir: Path) -> int:
    import json

    text = json.loads((model_dir / "config.json").read_text()).get("text_config", {})
    return int(text.get("max_position_embeddings", 0))


def export_model(model_dir: str | Path, out_dir: str | Path, component: str = "all",
                 quant: QuantOptions | None = None, force: bool = False,
                 vision_quant: VisionQuantOptions | None = None) -> dict[str, Any]:
    """Export `component` of a checkpoint; an earlier export's other component is kept if same source."""
    from qvl_compile.export.decoder import export_decoder
    from qvl_compile.export.vision import export_vision

    quant = quant or QuantOptions()
    quant.validate()
    vision_quant = vision_quant or VisionQuantOptions()
    vision_quant.validate()
    if component not in COMPONENTS:
        raise QvlError(f"--component: expected one of {', '.join(COMPONENTS)}, got {component!r}")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    config = ModelConfig.from_dir(model_dir)
    source = _source_record(model_dir)
    wanted = ("vision", "decoder") if component == "all" else (component,)
    with atomic_output_dir(out_dir, force=force, marker=MANIFEST_NAME) as work_dir:
        artifacts = _carry_over(out_dir, work_dir, source, keep=set(("vision", "decoder")) - set(wanted))
        if "vision" in wanted:
            artifacts["vision"] = stamp_source(work_dir, export_vision(model_dir, work_dir, vision_quant),
                                               source["sha256"])
        if "decoder" in wanted:
            artifacts["decoder"] = stamp_source(work_dir, export_decoder(model_dir, work_dir, quant), source["sha256"])
        assets = [name for name in RUNTIME_ASSETS if (model_dir / name).is_file()]
        for name in assets:
            shutil.copy2(model_dir / name, work_dir / name)
        manifest = {
            "format": FORMAT,
            "source": source,
            "model": {"vision": dataclasses.asdict(config.vision),
                      "text": dataclasses.asdict(config.text) | {"max_position_embeddings": _max_positions(model_dir)},
                      "image_token_id": config.image_token_id, "video_token_id": config.video_token_id,
                      "vision_start_token_id": config.vision_start_token_id,
                      "vision_end_token_id": config.vision_end_token_id},
            "versions": _versions(),
            "options": {"component": component, "quant": dataclasses.asdict(quant),
                        "vision_quant": dataclasses.asdict(vision_quant)},
            "artifacts": artifacts,
            "assets": [file_record(work_dir, name) for name in assets],
        }
        write_manifest(work_dir, manifest)
    log.info("wrote %s", out_dir)
    return manifest
