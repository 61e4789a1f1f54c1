"""The golden cases' images and video: deterministic pictures in every mode the processor converts.

Written by `qvl-compile golden` (never by hand). Pixels are a pure function of position, so a rewrite
reproduces them exactly; the file bytes may differ only by encoder versions (lossless formats only).
"""
from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

VIDEO_NAME = "clip.mkv"
VIDEO_FPS = 8


def _waves(height: int, width: int, phase: float = 0.0) -> np.ndarray:
    """[H, W, 3] uint8: smooth waves with a few sharp edges (compresses well, not flat)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = [np.sin(x / 11 + phase) + np.cos(y / 7), np.sin((x + y) / 17 - phase), np.cos(x * y / 900 + phase)]
    rgb = np.stack([127.5 + 63.0 * c for c in channels], axis=-1)
    rgb[(x // 40 + y // 40) % 5 == 0] //= 2  # blocks with hard edges
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _palette_image(height: int, width: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    index = ((x // 9 + 3 * (y // 13)) % 16).astype(np.uint8)
    image = Image.fromarray(index, "P")
    image.putpalette([(17 * i * k) % 256 for i in range(16) for k in (1, 3, 7)])
    return image


def write_media(folder: Path) -> dict[str, str]:
    """Write every medium into `folder`; returns name -> what it is."""
    folder.mkdir(parents=True, exist_ok=True)
    described = {}

    def save(name, image, what, **kwargs):
        image.save(folder / name, **kwargs)
        described[name] = what

    sample = resources.files("qvl_compile.runtime").joinpath("samples/red-house.png")
    with resources.as_file(sample) as path:
        shutil.copyfile(path, folder / "red-house.png")
    described["red-house.png"] = "the bundled sample image (RGB)"
    save("wide.png", Image.fromarray(_waves(280, 460)), "RGB 460x280")
    save("tall.png", Image.fromarray(_waves(400, 260, phase=1.0)), "RGB 260x400")
    save("grey-small.png", Image.fromarray(_waves(120, 200)[..., 0], "L"), "greyscale 200x120 (scaled up)")
    save("palette.png", _palette_image(180, 420), "palette 420x180")
    rgba = np.concatenate([_waves(260, 300, 2.0), np.linspace(0, 255, 300, dtype=np.uint8)[None, :, None]
                           .repeat(260, axis=0)], axis=-1)
    save("alpha.png", Image.fromarray(rgba, "RGBA"), "RGBA 300x260, alpha ramp (composited over white)")
    cmyk = np.concatenate([_waves(120, 200, 3.0), _waves(120, 200, 4.0)[..., :1]], axis=-1)
    save("cmyk.tiff", Image.fromarray(cmyk, "CMYK"), "CMYK 200x120 (TIFF, deflate; scaled up)", compression="tiff_adobe_deflate")
    write_video(folder / VIDEO_NAME)
    described[VIDEO_NAME] = f"16 frames 160x128 at {VIDEO_FPS} fps, FFV1 (lossless) in Matroska"
    for name, (image, what) in suite_images().items():
        save(name, image, what)
    write_video(folder / MOTION_VIDEO, motion_frames(), fps=MOTION_FPS)
    described[MOTION_VIDEO] = f"shapes suite motion: 4 frames 192x160 at {MOTION_FPS} fps, a green square moving right"
    return described


# Shapes-suite pictures with fixed geometry. Sides are multiples of 32 and pixel counts lie within the trained
# model's processor bounds (9216..36864) and transformers 4.57's defaults (3136..1003520), so both lines and the
# runtime agree on every grid without resizing.
def suite_images() -> dict[str, tuple[Image.Image, str]]:
    from qvl_compile.tasks.shapes import Shape, draw

    return {
        "shapes-one.png": (draw((192, 160), [Shape("triangle", "purple", (60, 40, 124, 104))]),
                           "shapes suite: one purple triangle, 192x160"),
        "shapes-three.png": (draw((192, 192), [Shape("circle", "red", (12, 20, 72, 80)),
                                               Shape("square", "blue", (110, 16, 170, 76)),
                                               Shape("triangle", "yellow", (56, 110, 120, 174))]),
                             "shapes suite: red circle, blue square, yellow triangle, 192x192"),
        "shapes-orange.png": (draw((128, 160), [Shape("circle", "orange", (30, 50, 90, 110))]),
                              "shapes suite: one orange circle, 160x128"),
    }


MOTION_VIDEO = "motion.mkv"
MOTION_FPS = 2


def motion_frames() -> list[np.ndarray]:
    from qvl_compile.tasks.shapes import Shape, draw

    return [np.asarray(draw((192, 160), [Shape("square", "green", (16 + 24 * i, 50, 66 + 24 * i, 100))]))
            for i in range(4)]


def video_frames(count: int = 16, height: int = 128, width: int = 160) -> list[np.ndarray]:
    return [_waves(height, width, phase=0.4 * i) for i in range(count)]


def write_video(path: Path, frames: list[np.ndarray] | None = None, fps: int = VIDEO_FPS) -> None:
    import av

    frames = video_frames() if frames is None else frames
    # bitexact: no random segment UID or encoder version string, so a rewrite gives identical bytes.
    with av.open(str(path), "w", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "bgr0"  # RGB stored losslessly: decoding gives back the frames exactly
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
