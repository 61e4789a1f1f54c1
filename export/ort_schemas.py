"""onnxruntime operators in the ONNX domain that ONNX itself does not define, made known to `onnx.checker`.

onnxruntime registers `SimplifiedLayerNormalization` (RMSNorm; what its own fusion passes write) in the
default domain, so `onnx.checker.check_model` rejects every graph holding it ("No Op registered"). The check
stage registers the operator's signature as onnxruntime declares it (inputs X and scale; outputs Y and the
optional inv_std_var; attributes axis, epsilon, stash_type) so the rest of the graph is still checked.
Operators in onnxruntime's own domain (com.microsoft) need nothing: the checker does not look into them.
"""
from __future__ import annotations

from onnx import AttributeProto, defs

_FLOATS = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(double)"]


def _simplified_layer_normalization() -> defs.OpSchema:
    param = defs.OpSchema.FormalParameter
    optional = defs.OpSchema.FormalParameterOption.Optional
    attr = defs.OpSchema.Attribute
    return defs.OpSchema(
        "SimplifiedLayerNormalization", "", 1,
        "RMSNorm: X / sqrt(mean(X^2 over the axes from `axis`) + epsilon) * scale (onnxruntime's).",
        inputs=[param("X", "T"), param("scale", "V")],
        outputs=[param("Y", "V"), param("inv_std_var", "U", param_option=optional)],
        type_constraints=[("T", _FLOATS, "input"), ("U", ["tensor(float)", "tensor(double)"], "statistics"),
                          ("V", _FLOATS, "scale and output")],
        attributes=[attr("axis", AttributeProto.INT, "first normalized axis", required=False),
                    attr("epsilon", AttributeProto.FLOAT, "added to the mean square", required=False),
                    attr("stash_type", AttributeProto.INT, "precision of the statistics", required=False)],
    )


def register_onnxruntime_schemas() -> None:
    """Idempotent: the schemas onnx does not know yet are registered once per process."""
    if not defs.has("SimplifiedLayerNormalization", ""):
        defs.register_schema(_simplified_layer_normalization())
