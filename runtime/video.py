"""Video input: decode with PyAV, sample frames as Qwen3-VL's video processor does, group temporal patches.

Sampling (transformers' `Qwen3VLVideoProcessor.sample_frames`): n = int(total / video_fps * fps), clamped to
[min_frames, max_frames] and to the frame count; indices = round(linspace(0, total-1, n)). Frames are padded
to a multiple of the temporal patch by repeating the last one. Sizes follow the video smart resize (the
pixel budget counts frames too). Each temporal patch gets the mean timestamp of its frames.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from qvl_compile.errors import QvlError
from qvl_compile.jsonfile import read_folder_json
from qvl_compile.runtime.preprocess import ImageProcessorConfig, _patchify, normalized_array, to_rgb


@dataclass(frozen=True)
class VideoProcessorConfig:
    image: ImageProcessorConfig  # patch, merge, temporal patch, mean/std; min/max pixels of the video budget
    fps: float
    min_frames: int
    max_frames: int

    @classmethod
    def from_dir(cls, folder: str | Path) -> "VideoProcessorConfig":
        folder = Path(folder)
        name = "video_preprocessor_config.json"
        if not (folder / name).is_file():
            raise QvlError(f"{folder}: expected {name} for video input, found none")
        _, raw = read_folder_json(folder, name, "model or export")
        return cls(ImageProcessorConfig.from_dir(folder, name), float(raw.get("fps", 2)),
                   int(raw.get("min_frames", 4)), int(raw.get("max_frames", 768)))


@dataclass(frozen=True)
class Video:
    frames: list[Image.Image]  # the sampled frames, RGB
    indices: list[int]  # their indices in the source
    fps: float  # the source's frame rate

    @classmethod
    def from_images(cls, frames, fps: float = 2.0) -> "Video":
        """Frames already sampled (PIL images or files), `fps` apart."""
        from qvl_compile.runtime.preprocess import load_image

        images = [to_rgb(f) if isinstance(f, Image.Image) else load_image(f) for f in frames]
        if not images:
            raise QvlError("a video needs at least one frame, got none")
        return cls(images, list(range(len(images))), float(fps))


def sample_indices(total: int, video_fps: float, cfg: VideoProcessorConfig) -> list[int]:
    count = int(total / video_fps * cfg.fps)
    count = min(max(count, cfg.min_frames), cfg.max_frames, total)
    return np.linspace(0, total - 1, count).round().astype(int).tolist()


# Demuxers that PyAV uses for still images: such a file opens as a one-frame "video" at 25 fps.
STILL_IMAGE_FORMATS = ("image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe", "jpegls_pipe",
                       "j2k_pipe", "qoi_pipe", "pam_pipe", "ppm_pipe", "pgm_pipe", "pbm_pipe", "dds_pipe")


def read_video(path: str | Path, cfg: VideoProcessorConfig, max_frames: int | None = None,
               max_pixels: int | None = None) -> Video:
    """Decode a video file; max_frames and max_pixels (per frame) bound the work (limits for untrusted input)."""
    import av

    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise QvlError(f"video {str(path)!r} does not exist or is empty")
    try:
        with av.open(str(path)) as container:
            if container.format.name in STILL_IMAGE_FORMATS:
                raise QvlError(f"{path}: expected a video, got a still image ({container.format.name}); "
                               "pass it as an image (--image)")
            if not container.streams.video:
                raise QvlError(f"{path}: holds no video stream")
            stream = container.streams.video[0]
            video_fps = float(stream.average_rate or stream.guessed_rate or 24)
            frames = []
            for frame in container.decode(stream):
                if max_frames is not None and len(frames) >= max_frames:
                    raise QvlError(f"{path}: the video has more than {max_frames} frames, the limit")
                if max_pixels is not None and frame.width * frame.height > max_pixels:
                    raise QvlError(f"{path}: the video's frames have {frame.width}x{frame.height} pixels, more than "
                                   f"the limit of {max_pixels}")
                frames.append(frame.to_image())
    except QvlError:
        raise
    except Exception as exc:  # noqa: BLE001 - PyAV raises many error types for undecodable input
        raise QvlError(f"{path}: cannot decode video ({type(exc).__name__}: {exc})") from None
    if not frames:
        raise QvlError(f"{path}: the video has no frames")
    indices = sample_indices(len(frames), video_fps, cfg)
    return Video([to_rgb(frames[i]) for i in indices], indices, video_fps)


def video_smart_resize(frames: int, height: int, width: int, cfg: ImageProcessorConfig) -> tuple[int, int]:
    factor, tp = cfg.factor, cfg.temporal_patch_size
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > 200:
        raise QvlError(f"video aspect ratio must be at most 200, got {width}x{height}")
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    t_bar = round(frames / tp) * tp
    if t_bar * h_bar * w_bar > cfg.max_pixels:
        beta = math.sqrt((frames * height * width) / cfg.max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < cfg.min_pixels:
        beta = math.sqrt(cfg.min_pixels / (frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def preprocess_video(video: Video, cfg: VideoProcessorConfig) -> tuple[np.ndarray, tuple[int, int, int], list[float]]:
    """-> (pixel rows [t*h*w, 1536], grid (t, h, w), one timestamp per temporal patch)."""
    image_cfg, tp = cfg.image, cfg.image.temporal_patch_size
    frames, indices = list(video.frames), list(video.indices)
    while len(frames) % tp:  # pad with the last frame to a whole temporal patch
        frames.append(frames[-1])
        indices.append(indices[-1])
    first = frames[0]
    height, width = video_smart_resize(len(frames), first.height, first.width, image_cfg)
    stack = np.stack([normalized_array(f, height, width, image_cfg) for f in frames])  # [T, C, H, W]
    rows, grid = _patchify(stack, image_cfg)
    seconds = [i / video.fps for i in indices]
    stamps = [(seconds[i] + seconds[i + tp - 1]) / 2 for i in range(0, len(seconds), tp)]
    return rows, grid, stamps
