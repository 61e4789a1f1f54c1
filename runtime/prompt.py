"""Prompt building: the checkpoint's chat template, then one placeholder token per merged patch."""
from __future__ import annotations

from pathlib import Path

import jinja2

from qvl_compile.errors import QvlError

IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
# Media placeholders the pipeline inserts itself; in the user's text they would desynchronise the media.
RESERVED_TOKENS = (IMAGE_PAD, VIDEO_PAD, VISION_START, VISION_END)


def load_chat_template(folder: Path) -> jinja2.Template:
    path = folder / "chat_template.jinja"
    if not path.is_file():
        raise QvlError(f"{folder}: expected chat_template.jinja (copied from the checkpoint at export), found none")
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    return env.from_string(path.read_text())


def user_message(text: str, num_images: int, num_videos: int) -> list[dict]:
    content = [{"type": "image"}] * num_images + [{"type": "video"}] * num_videos
    return [{"role": "user", "content": content + [{"type": "text", "text": text}]}]


def expand_placeholders(text: str, image_grids, video_grids, video_timestamps, merge_size: int) -> str:
    """Each image pad -> t*h*w/merge^2 pads; each video -> per temporal patch `<T seconds>` + its frame's pads."""
    unit = merge_size * merge_size
    pieces = text.split(IMAGE_PAD)
    if len(pieces) - 1 != len(image_grids):
        raise QvlError(f"the prompt has {len(pieces) - 1} image placeholders but {len(image_grids)} images were given")
    text = pieces[0] + "".join(IMAGE_PAD * (t * h * w // unit) + rest for (t, h, w), rest in zip(image_grids, pieces[1:]))
    video_slot = VISION_START + VIDEO_PAD + VISION_END
    pieces = text.split(video_slot)
    if len(pieces) - 1 != len(video_grids):
        raise QvlError(f"the prompt has {len(pieces) - 1} video placeholders but {len(video_grids)} videos were given")
    out = pieces[0]
    for (t, h, w), stamps, rest in zip(video_grids, video_timestamps, pieces[1:]):
        frame = VISION_START + VIDEO_PAD * (h * w // unit) + VISION_END
        out += "".join(f"<{stamps[i]:.1f} seconds>" + frame for i in range(t)) + rest
    return out
