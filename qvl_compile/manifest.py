"""manifest.json: what an export folder holds, where it came from, and how to check it (torch-free)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from qvl_compile.errors import QvlError
from qvl_compile.jsonfile import read_folder_json

MANIFEST_NAME = "manifest.json"
FORMAT = "qvl-compile/1"
# Graph metadata key: the digest of the checkpoint a graph was exported from (see source_digest).
SOURCE_KEY = "qvl_compile.source_sha256"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_record(folder: Path, name: str) -> dict[str, Any]:
    path = folder / name
    return {"path": name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def source_digest(files: list[dict[str, Any]]) -> str:
    """One sha256 naming a checkpoint: over its files' names and sha256 (config.json and weights)."""
    lines = "".join(f"{record['path']}:{record['sha256']}\n" for record in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")


def read_manifest(folder: str | Path) -> dict[str, Any]:
    path, manifest = read_folder_json(folder, MANIFEST_NAME, "qvl-compile export")
    if manifest.get("format") != FORMAT:
        raise QvlError(f"{path}: expected format {FORMAT!r}, got {manifest.get('format')!r}")
    return manifest


def load_artifact(folder: str | Path, name: str,
                  hashes: bool = False) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """(graph path, manifest entry, whole manifest) of artifact `name`, after checking its files' sizes
    (and hashes) and that it comes from the manifest's source checkpoint."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    artifact = manifest.get("artifacts", {}).get(name)
    if artifact is None:
        raise QvlError(f"{folder}: the manifest lists no {name} artifact (export with --component {name})")
    check_files(folder, artifact["files"], hashes=hashes)
    check_same_source(folder, name, artifact, manifest)
    return folder / artifact["files"][0]["path"], artifact, manifest


def check_same_source(folder: Path, name: str, artifact: dict[str, Any], manifest: dict[str, Any]) -> None:
    """The artifact was exported from the checkpoint the manifest names (exports before stamping pass)."""
    expected = manifest.get("source", {}).get("sha256")
    actual = artifact.get("source_sha256")
    if expected and actual and actual != expected:
        raise QvlError(f"{folder}: the {name} artifact was exported from checkpoint {actual[:12]}, the manifest's "
                       f"source is {expected[:12]}: graphs from different checkpoints; re-export them together")


def check_files(folder: Path, files: list[dict[str, Any]], hashes: bool = False) -> None:
    """Every listed file present with its recorded size (and sha256 when `hashes`)."""
    for record in files:
        path = folder / record["path"]
        if not path.is_file():
            raise QvlError(f"{folder}: missing {record['path']} (listed in {MANIFEST_NAME})")
        size = path.stat().st_size
        if size != record["bytes"]:
            raise QvlError(f"{path}: expected {record['bytes']} bytes, found {size} (truncated or replaced)")
        if hashes and sha256_file(path) != record["sha256"]:
            raise QvlError(f"{path}: sha256 differs from {MANIFEST_NAME} (file changed after export)")
