"""Image preprocessing as the checkpoint's processor does it, in numpy and Pillow (torch-free).

Mirrors transformers' Qwen2-VL image processor (PIL backend) as configured by preprocessor_config.json:
smart resize to multiples of patch*merge (32) within [min_pixels, max_pixels], bicubic resampling,
rescale by 1/255, normalise with mean/std, duplicate the still image over the temporal patch, and
flatten patches in spatial-merge block order. The result feeds `vision.onnx` directly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from qvl_compile.errors import QvlError
from qvl_compile.jsonfile import read_folder_json

MAX_ASPECT_RATIO = 200


@dataclass(frozen=True)
class ImageProcessorConfig:
    patch_size: int
    merge_size: int
    temporal_patch_size: int
    min_pixels: int
    max_pixels: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    rescale_factor: float = 1 / 255

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    @classmethod
    def from_dir(cls, folder: str | Path, name: str = "preprocessor_config.json") -> "ImageProcessorConfig":
        _, raw = read_folder_json(folder, name, "model or export")
        size = raw.get("size") or {}
        return cls(
            patch_size=int(raw.get("patch_size", 16)),
            merge_size=int(raw.get("merge_size", 2)),
            temporal_patch_size=int(raw.get("temporal_patch_size", 2)),
            min_pixels=int(size.get("shortest_edge", raw.get("min_pixels", 65536))),
            max_pixels=int(size.get("longest_edge", raw.get("max_pixels", 16777216))),
            image_mean=tuple(float(v) for v in raw.get("image_mean", (0.5, 0.5, 0.5))),
            image_std=tuple(float(v) for v in raw.get("image_std", (0.5, 0.5, 0.5))),
            rescale_factor=float(raw.get("rescale_factor", 1 / 255)),
        )


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Both sides multiples of `factor`, pixel count within bounds, aspect ratio kept as closely as possible."""
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise QvlError(f"image aspect ratio must be at most {MAX_ASPECT_RATIO}, got {width}x{height}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def to_rgb(image: Image.Image) -> Image.Image:
    """As transformers converts: alpha is composited over white; every other mode converts to RGB."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise QvlError(f"image {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise QvlError(f"image {str(path)!r} is an empty file")
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except Image.DecompressionBombError as exc:
        raise QvlError(f"{path}: image too large to decode safely ({exc}); downscale it first") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise QvlError(f"{path}: not a readable image ({exc.__class__.__name__}: {exc})") from None


def _patchify(frames: np.ndarray, cfg: ImageProcessorConfig) -> tuple[np.ndarray, tuple[int, int, int]]:
    """frames [T, C, H, W] float32 (T a multiple of temporal_patch) -> rows [t*h*w, C*tp*p*p], grid (t, h, w)."""
    frames_n, channels, height, width = frames.shape
    tp, p, m = cfg.temporal_patch_size, cfg.patch_size, cfg.merge_size
    grid_t, grid_h, grid_w = frames_n // tp, height // p, width // p
    patches = frames.reshape(grid_t, tp, channels, grid_h // m, m, p, grid_w // m, m, p)
    # -> (t, h-blocks, w-blocks, m_h, m_w, C, tp, p_h, p_w)
    patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return np.ascontiguousarray(patches.reshape(grid_t * grid_h * grid_w, channels * tp * p * p)), (grid_t, grid_h, grid_w)


def normalized_array(image: Image.Image, height: int, width: int, cfg: ImageProcessorConfig) -> np.ndarray:
    """Resize (bicubic) to (height, width), rescale and normalise: [C, H, W] float32."""
    resized = image.resize((width, height), resample=Image.Resampling.BICUBIC)
    array = np.asarray(resized, dtype=np.float32).transpose(2, 0, 1)  # [C, H, W]
    array = array * np.float32(cfg.rescale_factor)
    mean = np.asarray(cfg.image_mean, np.float32)[:, None, None]
    std = np.asarray(cfg.image_std, np.float32)[:, None, None]
    return (array - mean) / std


def preprocess_image(image: Image.Image, cfg: ImageProcessorConfig) -> tuple[np.ndarray, tuple[int, int, int]]:
    """One still image -> (pixel rows [h*w, 1536], grid (1, h, w)); the frame is repeated over the temporal patch."""
    image = to_rgb(image)
    height, width = smart_resize(image.height, image.width, cfg.factor, cfg.min_pixels, cfg.max_pixels)
    frame = normalized_array(image, height, width, cfg)
    frames = np.repeat(frame[None], cfg.temporal_patch_size, axis=0)  # [tp, C, H, W]
    return _patchify(frames, cfg)
