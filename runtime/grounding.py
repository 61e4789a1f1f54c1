"""Grounding replies: Qwen3-VL's `[{"bbox_2d": [x1, y1, x2, y2], "label": ...}]`, coordinates 0..1000 relative
to the image's width (x) and height (y), turned into pixel boxes, scored by IoU and drawn.

    boxes = parse_boxes(reply)                    # None when the reply is not a box list
    pixels = boxes_in_pixels(reply, (640, 480))   # [Box(label, (x1, y1, x2, y2) in pixels)] or None
    draw_boxes(image, pixels).save("out.png")
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from PIL import Image, ImageDraw

SCALE = 1000  # Qwen3-VL's relative coordinate range
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)  # released models often wrap the list in one


@dataclass(frozen=True)
class Box:
    label: str | None
    bbox: tuple[float, float, float, float]  # x1, y1, x2, y2

    def as_dict(self) -> dict:
        return {"label": self.label, "bbox": list(self.bbox)}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_boxes(reply: str) -> list[Box] | None:
    """The boxes of a grounding reply (relative coordinates), or None if it is not one."""
    text = reply.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        data = json.loads(text)
    except ValueError:
        return None
    items = data if isinstance(data, list) else [data]
    boxes = []
    for item in items:
        if not isinstance(item, dict):
            return None
        coords = item.get("bbox_2d")
        if not (isinstance(coords, list) and len(coords) == 4 and all(_number(c) for c in coords)):
            return None
        label = item.get("label")
        boxes.append(Box(label if isinstance(label, str) else None, tuple(float(c) for c in coords)))
    return boxes or None


def to_pixels(box: Box, width: int, height: int) -> Box:
    """Relative 0..1000 -> pixels of a `width` x `height` image, clipped to it, rounded to whole pixels."""
    x1, y1, x2, y2 = box.bbox
    sx, sy = width / SCALE, height / SCALE

    def clip(value: float, limit: int) -> float:
        return float(round(min(max(value, 0.0), limit)))

    return Box(box.label, (clip(x1 * sx, width), clip(y1 * sy, height), clip(x2 * sx, width), clip(y2 * sy, height)))


def boxes_in_pixels(reply: str, image_size: tuple[int, int]) -> list[Box] | None:
    """`image_size` is (width, height) of the original image, as PIL gives it."""
    boxes = parse_boxes(reply)
    return None if boxes is None else [to_pixels(b, *image_size) for b in boxes]


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two x1, y1, x2, y2 boxes; 0 for empty or inverted ones."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1]) + max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area - inter
    return inter / union if union > 0 else 0.0


def draw_boxes(image: Image.Image, boxes: list[Box], color: tuple[int, int, int] = (255, 0, 255)) -> Image.Image:
    """A copy of `image` with each pixel box outlined and its label written above it (inside if at the top)."""
    out = image.convert("RGB").copy()
    pen = ImageDraw.Draw(out)
    width = max(2, round(min(out.size) / 150))
    for box in boxes:
        x1, y1, x2, y2 = box.bbox
        pen.rectangle((x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)), outline=color, width=width)
        if box.label:
            left, top, right, bottom = pen.textbbox((0, 0), box.label)
            ty = y1 - (bottom - top) - 4 if y1 >= (bottom - top) + 4 else y1 + width + 1
            pen.rectangle((x1, ty, x1 + right - left + 4, ty + bottom - top + 3), fill=color)
            pen.text((x1 + 2, ty - top + 1), box.label, fill=(255, 255, 255))
    return out
