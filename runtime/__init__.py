"""Torch-free runtime: numpy + onnxruntime (+ tokenizers, Pillow). Never imports torch or transformers."""
from qvl_compile.runtime.vision import VisionEncoder, validate_vision_inputs

__all__ = ["VisionEncoder", "validate_vision_inputs"]
