"""ONNX Runtime session options in one place: providers and thread counts chosen by the caller."""
from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from qvl_compile.contract import SOURCE_KEY, Artifact
from qvl_compile.errors import QvlError


def make_session(path: Path, providers: list[str] | None = None, intra_op_threads: int = 0,
                 mem_pattern: bool = False, profile_prefix: str | None = None) -> ort.InferenceSession:
    """`profile_prefix`: write onnxruntime's per-node profile there (`session.end_profiling()` names the file)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads  # 0: onnxruntime's default (one per core)
    # Memory patterns are cached per input shape and never evicted: with a new sequence length every
    # step they grew resident memory by 5 MiB per 2,000 tokens on the tiny model (bench/memory_growth.py).
    options.enable_mem_pattern = mem_pattern
    options.log_severity_level = 3
    if profile_prefix:
        options.enable_profiling, options.profile_file_prefix = True, profile_prefix
    try:
        return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        first = str(exc).strip().splitlines()[0]
        raise QvlError(f"{path}: onnxruntime cannot load it: {first}") from None


def check_source_stamp(session: ort.InferenceSession, artifact: Artifact, path: Path) -> None:
    """The graph's stamped source checkpoint equals the manifest's record (a swapped-in graph fails here)."""
    stamped = session.get_modelmeta().custom_metadata_map.get(SOURCE_KEY)
    expected = artifact.source_sha256
    if stamped and expected and stamped != expected:
        raise QvlError(f"{path}: exported from checkpoint {stamped[:12]}, but the manifest records {expected[:12]}: "
                       "a graph copied in from another export; re-export the folder")
