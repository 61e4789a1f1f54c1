"""Fuse the vision graph's GELU chains with onnxruntime's own transformer optimizer.

torch.onnx writes `gelu(approximate="tanh")` as eight elementwise nodes (Pow, Mul, Add, Tanh, ...) and the
merger's erf GELU as five; onnxruntime.transformers' fusions turn them into one `FastGelu` / `Gelu`
contrib node each. Attention is left alone (our per-frame Loop already runs MultiHeadAttention).
"""
from __future__ import annotations

import logging
from pathlib import Path

import onnx

log = logging.getLogger(__name__)


def fuse_gelu(path: Path, external: bool) -> dict[str, int]:
    """Rewrite the graph at `path` in place; returns the counts of the fused ops."""
    from onnxruntime.transformers.fusion_fastgelu import FusionFastGelu
    from onnxruntime.transformers.fusion_gelu import FusionGelu
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(path)))
    fusion_log = logging.getLogger("fusion_base")  # onnxruntime.transformers' own "Fused X: n" lines; ours follows
    level = fusion_log.level
    fusion_log.setLevel(max(level, logging.WARNING))
    try:
        FusionFastGelu(model).apply()
        FusionGelu(model).apply()
    finally:
        fusion_log.setLevel(level)
    model.topological_sort()  # fused nodes are appended at the end
    counts = {op: sum(n.op_type == op for n in model.model.graph.node) for op in ("FastGelu", "Gelu")}
    for stale in [path, path.with_name(path.name + ".data")]:
        stale.unlink(missing_ok=True)
    onnx.save_model(model.model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024)
    log.info("vision: fused %d FastGelu and %d Gelu", counts["FastGelu"], counts["Gelu"])
    return counts
