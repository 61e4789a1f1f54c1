"""Stamp each exported graph with the digest of its source checkpoint, so a graph swapped in from
another export is caught at load time (runtime/session.py reads the stamp back without onnx)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from qvl_compile.manifest import SOURCE_KEY, file_record


def stamp_source(work_dir: Path, fields: dict[str, Any], digest: str) -> dict[str, Any]:
    """Write `digest` into the metadata of each graph the fields list (the first is the artifact's; a decoder may
    list its prefill graph too); return the artifact fields with fresh file records."""
    for record in fields["files"]:
        if record.path.endswith(".onnx"):
            _stamp(work_dir / record.path, digest)
    files = [file_record(work_dir, record.path) for record in fields["files"]]
    return fields | {"source_sha256": digest, "files": files}


def _stamp(path: Path, digest: str) -> None:
    model = onnx.load(str(path), load_external_data=False)  # external weights stay where they are
    kept = [prop for prop in model.metadata_props if prop.key != SOURCE_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=SOURCE_KEY, value=digest)
    onnx.save_model(model, str(path))
