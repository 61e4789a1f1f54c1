"""Torch-free runtime: numpy + onnxruntime (+ tokenizers, Pillow, PyAV). Never imports torch or transformers."""
from qvl_compile.runtime.decoder import TextDecoder
from qvl_compile.runtime.pipeline import GenerationResult, Pipeline
from qvl_compile.runtime.sampling import SamplingConfig
from qvl_compile.runtime.vision import VisionEncoder, validate_vision_inputs

__all__ = ["GenerationResult", "Pipeline", "SamplingConfig", "TextDecoder", "VisionEncoder", "validate_vision_inputs"]
