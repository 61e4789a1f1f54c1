"""manifest.json on disk: write it, read it into the typed contract, check the files it lists (torch-free)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from qvl_compile.contract import FORMAT, MANIFEST_NAME, SOURCE_KEY, Artifact, FileRecord, Manifest, parse_manifest
from qvl_compile.errors import QvlError
from qvl_compile.jsonfile import read_folder_json

__all__ = ["FORMAT", "MANIFEST_NAME", "SOURCE_KEY", "check_files", "file_record", "load_artifact", "read_manifest",
           "sha256_file", "source_digest", "write_manifest"]


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_record(folder: Path, name: str) -> FileRecord:
    path = folder / name
    return FileRecord(path=name, bytes=path.stat().st_size, sha256=sha256_file(path))


def source_digest(files: list[FileRecord]) -> str:
    """One sha256 naming a checkpoint: over its files' names and sha256 (config.json and weights)."""
    lines = "".join(f"{record.path}:{record.sha256}\n" for record in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def write_manifest(folder: Path, manifest: Manifest) -> None:
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest.to_json(), indent=2, sort_keys=False) + "\n")


def read_manifest(folder: str | Path) -> Manifest:
    path, raw = read_folder_json(folder, MANIFEST_NAME, "qvl-compile export")
    return parse_manifest(raw, where=str(path))


def load_artifact(folder: str | Path, name: str, hashes: bool = False) -> tuple[Path, Any, Manifest]:
    """(graph path, typed artifact, whole manifest) of artifact `name`, after checking its files' sizes
    (and hashes) and that it comes from the manifest's source checkpoint."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    artifact = manifest.artifacts.get(name)
    if artifact is None:
        raise QvlError(f"{folder}: the manifest lists no {name} artifact (export with --component {name})")
    check_files(folder, artifact.files, hashes=hashes)
    check_same_source(folder, name, artifact, manifest)
    return folder / artifact.graph, artifact, manifest


def check_same_source(folder: Path, name: str, artifact: Artifact, manifest: Manifest) -> None:
    """The artifact was exported from the checkpoint the manifest names."""
    expected = manifest.source.get("sha256")
    actual = artifact.source_sha256
    if expected and actual and actual != expected:
        raise QvlError(f"{folder}: the {name} artifact was exported from checkpoint {actual[:12]}, the manifest's "
                       f"source is {expected[:12]}: graphs from different checkpoints; re-export them together")


def check_files(folder: Path, files, hashes: bool = False) -> None:
    """Every listed file present with its recorded size (and sha256 when `hashes`)."""
    for record in files:
        path = folder / record.path
        if not path.is_file():
            raise QvlError(f"{folder}: missing {record.path} (listed in {MANIFEST_NAME})")
        size = path.stat().st_size
        if size != record.bytes:
            raise QvlError(f"{path}: expected {record.bytes} bytes, found {size} (truncated or replaced)")
        if hashes and sha256_file(path) != record.sha256:
            raise QvlError(f"{path}: sha256 differs from {MANIFEST_NAME} (file changed after export)")
