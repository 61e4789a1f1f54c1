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
from qvl_compile.golden.reference import weight_files
from qvl_compile.manifest import FORMAT, MANIFEST_NAME, file_record, read_manifest, write_manifest

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
    files = ["config.json"] + [p.name for p in weight_files(model_dir)]
    return {"model_dir": str(model_dir.absolute()), "files": [file_record(model_dir, n) for n in files]}


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


def export_model(model_dir: str | Path, out_dir: str | Path, component: str = "all", quant: str = "int4",
                 force: bool = False) -> dict[str, Any]:
    from qvl_compile.export.vision import export_vision

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    config = ModelConfig.from_dir(model_dir)
    if component == "decoder":
        raise QvlError("decoder export is not available yet in this version; use --component vision")
    source = _source_record(model_dir)
    with atomic_output_dir(out_dir, force=force, marker=MANIFEST_NAME) as work_dir:
        artifacts = _carry_over(out_dir, work_dir, source, keep={"decoder"} if component == "vision" else set())
        artifacts["vision"] = export_vision(model_dir, work_dir)
        if component == "all":
            log.warning("decoder export is not available yet in this version; exported the vision graph only")
        manifest = {
            "format": FORMAT,
            "source": source,
            "model": {"vision": dataclasses.asdict(config.vision)},
            "versions": _versions(),
            "options": {"component": component, "quant": quant},
            "artifacts": artifacts,
        }
        write_manifest(work_dir, manifest)
    log.info("wrote %s", out_dir)
    return manifest
