"""The shapes suite, exactly as specified in docs/task-suite.md: coloured shapes on white, six tasks.

    case = make_case("ground", np.random.default_rng(0))   # in memory: PIL images, prompt, answer
    write_cases(folder, seed=1, per_task=100)              # on disk: PNGs and cases.jsonl for `qvl-compile eval`

Everything is a function of the numpy generator it is given, so a seed reproduces a set exactly.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 30, 30), "green": (30, 160, 60), "blue": (30, 70, 220),
    "yellow": (235, 200, 30), "purple": (140, 50, 170), "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle")
TASKS = ("color", "shape", "count", "ground", "two_images", "motion")
MIN_SIDE, MAX_SIDE = 96, 384  # image width and height, inclusive
MIN_SHAPE, MAX_SHAPE = 0.2, 0.45  # a shape's side as a fraction of min(width, height)
MOTION_FRAMES = 4
MIN_STEP, MAX_STEP = 0.08, 0.15  # motion per frame, fraction of the image's width (or height)
BACKGROUND = (255, 255, 255)
BOXES_KEY = "shape_boxes"  # image.info entry: the drawn shapes' boxes (for training targets; never saved in a PNG)
MIN_GAP = 0.02  # white space between two shapes' boxes, fraction of min(width, height)


@dataclass(frozen=True)
class ShapeSizes:
    """Bounds of a shape's side as a fraction of min(width, height). The suite's are SPEC_SIZES; a trainer may start
    with larger shapes, which a small vision tower learns to tell apart first (docs/training.md)."""
    smallest: float = MIN_SHAPE
    largest: float = MAX_SHAPE


SPEC_SIZES = ShapeSizes()


@dataclass(frozen=True)
class Shape:
    kind: str  # circle | square | triangle
    color: str
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels; x2/y2 are the right/bottom edges

    @property
    def label(self) -> str:
        return f"{self.color} {self.kind}"


@dataclass(frozen=True)
class Case:
    task: str
    prompt: str
    answer: str
    images: tuple[Image.Image, ...] = ()
    video: tuple[Image.Image, ...] | None = None


def draw(size: tuple[int, int], shapes: list[Shape]) -> Image.Image:
    image = Image.new("RGB", size, BACKGROUND)
    pen = ImageDraw.Draw(image)
    for shape in shapes:
        x1, y1, x2, y2 = shape.box
        fill = COLORS[shape.color]
        if shape.kind == "circle":
            pen.ellipse((x1, y1, x2 - 1, y2 - 1), fill=fill)
        elif shape.kind == "square":
            pen.rectangle((x1, y1, x2 - 1, y2 - 1), fill=fill)
        else:  # upright: base along the bottom of the box, apex at the top centre
            pen.polygon([(x1, y2 - 1), (x2 - 1, y2 - 1), ((x1 + x2 - 1) / 2, y1)], fill=fill)
    image.info[BOXES_KEY] = tuple(shape.box for shape in shapes)
    return image


def grounding_reply(shape: Shape, width: int, height: int) -> str:
    """Qwen3-VL's convention: integers 0..1000 relative to the image's width (x) and height (y)."""
    x1, y1, x2, y2 = shape.box
    box = [round(1000 * x1 / width), round(1000 * y1 / height), round(1000 * x2 / width), round(1000 * y2 / height)]
    return json.dumps([{"bbox_2d": box, "label": shape.label}])


def _size(rng: np.random.Generator) -> tuple[int, int]:
    return int(rng.integers(MIN_SIDE, MAX_SIDE + 1)), int(rng.integers(MIN_SIDE, MAX_SIDE + 1))


def _side(rng: np.random.Generator, width: int, height: int, smallest: float, largest: float) -> int:
    shortest = min(width, height)
    low = math.ceil(smallest * shortest)
    return int(rng.integers(low, max(low, math.floor(largest * shortest)) + 1))


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int = 0) -> bool:
    """Whether the boxes overlap or come closer than `gap` pixels."""
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap


def place_boxes(rng: np.random.Generator, width: int, height: int, count: int,
                sizes: ShapeSizes) -> list[tuple[int, int, int, int]]:
    """`count` square boxes inside the image, pairwise disjoint and apart by MIN_GAP of the shorter side (two
    touching shapes of one colour would read as one); sizes shrink toward the minimum if crowded."""
    smallest, largest = sizes.smallest, sizes.largest
    gap = max(2, round(MIN_GAP * min(width, height)))
    while True:
        boxes: list[tuple[int, int, int, int]] = []
        for _ in range(200):
            side = _side(rng, width, height, smallest, largest)
            x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
            box = (x, y, x + side, y + side)
            if not any(_overlaps(box, other, gap) for other in boxes):
                boxes.append(box)
                if len(boxes) == count:
                    return boxes
        largest = max(MIN_SHAPE, largest - 0.05)
        smallest = min(smallest, largest)


def _pick(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def single_shape(rng: np.random.Generator, sizes: ShapeSizes, color: str | None = None) -> tuple[Image.Image, Shape]:
    width, height = _size(rng)
    shape = Shape(_pick(rng, SHAPES), color or _pick(rng, list(COLORS)), place_boxes(rng, width, height, 1, sizes)[0])
    return draw((width, height), [shape]), shape


def _color(rng, sizes):
    image, shape = single_shape(rng, sizes)
    return Case("color", "What color is the shape?", shape.color, (image,))


def _shape(rng, sizes):
    image, shape = single_shape(rng, sizes)
    return Case("shape", "What shape is this?", shape.kind, (image,))


def scene_boxes(rng: np.random.Generator, sizes: ShapeSizes, fewest: int,
                most: int) -> tuple[int, int, list[tuple[int, int, int, int]]]:
    """An image's width and height and `fewest` to `most` boxes placed in it: how every multi-shape image begins."""
    width, height = _size(rng)
    return width, height, place_boxes(rng, width, height, int(rng.integers(fewest, most + 1)), sizes)


def _count(rng, sizes):
    width, height, boxes = scene_boxes(rng, sizes, 1, 4)
    shapes = [Shape(_pick(rng, SHAPES), _pick(rng, list(COLORS)), box) for box in boxes]
    return Case("count", "How many shapes are there?", str(len(shapes)), (draw((width, height), shapes),))


def labelled_scene(rng: np.random.Generator, sizes: ShapeSizes, fewest: int = 1,
                   most: int = 3) -> tuple[Image.Image, Shape]:
    """`fewest` to `most` shapes with distinct (colour, shape) pairs, and the one a question names (ground's image)."""
    width, height, boxes = scene_boxes(rng, sizes, fewest, most)
    pairs = [(kind, color) for kind in SHAPES for color in COLORS]
    chosen = rng.choice(len(pairs), size=len(boxes), replace=False)
    shapes = [Shape(*pairs[int(i)], box) for i, box in zip(chosen, boxes)]
    target = shapes[int(rng.integers(len(shapes)))]
    return draw((width, height), shapes), target


def _ground(rng, sizes):
    image, target = labelled_scene(rng, sizes)
    return Case("ground", f"Locate the {target.label}.", grounding_reply(target, *image.size), (image,))


def two_single_shapes(rng: np.random.Generator, sizes: ShapeSizes) -> tuple[tuple[Image.Image, Image.Image],
                                                                            tuple[str, str]]:
    """Two one-shape images of different colours: (first, second) images and their colours."""
    first_color, second_color = (str(c) for c in rng.choice(list(COLORS), size=2, replace=False))
    first, _ = single_shape(rng, sizes, first_color)
    second, _ = single_shape(rng, sizes, second_color)
    return (first, second), (first_color, second_color)


def _two_images(rng, sizes):
    images, (first_color, second_color) = two_single_shapes(rng, sizes)
    asked, answer = (first_color, "first") if rng.integers(2) == 0 else (second_color, "second")
    return Case("two_images", f"Which image shows the {asked} shape, the first or the second?", answer, images)


def _motion(rng, sizes):
    width, height = _size(rng)
    direction = _pick(rng, ("left", "right", "up", "down"))
    horizontal = direction in ("left", "right")
    extent = width if horizontal else height
    step = int(round(rng.uniform(MIN_STEP, MAX_STEP) * extent))
    travel = step * (MOTION_FRAMES - 1)
    shortest = min(width, height)
    # The whole path stays inside the image: the side leaves room for the travel along the motion.
    largest = math.floor(min(sizes.largest * shortest, extent - travel))
    side = int(rng.integers(min(math.ceil(sizes.smallest * shortest), largest), largest + 1))
    across = int(rng.integers(0, (height if horizontal else width) - side + 1))
    start = int(rng.integers(0, extent - side - travel + 1))
    sign = 1 if direction in ("right", "down") else -1
    if sign < 0:
        start += travel
    kind, color = _pick(rng, SHAPES), _pick(rng, list(COLORS))
    frames = []
    for frame in range(MOTION_FRAMES):
        along = start + sign * step * frame
        x, y = (along, across) if horizontal else (across, along)
        frames.append(draw((width, height), [Shape(kind, color, (x, y, x + side, y + side))]))
    return Case("motion", "Which way does the shape move?", direction, video=tuple(frames))


_MAKERS = {"color": _color, "shape": _shape, "count": _count, "ground": _ground, "two_images": _two_images,
           "motion": _motion}


def make_case(task: str, rng: np.random.Generator, sizes: ShapeSizes = SPEC_SIZES) -> Case:
    if task not in _MAKERS:
        raise ValueError(f"task: expected one of {', '.join(TASKS)}, got {task!r}")
    return _MAKERS[task](rng, sizes)


def write_cases(folder: str | Path, seed: int, per_task: int, tasks=TASKS) -> Path:
    """`per_task` cases of each task as PNGs plus cases.jsonl (paths relative to `folder`); returns the JSONL."""
    folder = Path(folder)
    (folder / "media").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for task in tasks:
        for index in range(per_task):
            case_id = f"{task}-{index:04d}"
            case = make_case(task, rng)
            images = []
            for number, image in enumerate(case.images):
                images.append(f"media/{case_id}-{number}.png")
                image.save(folder / images[-1])
            video = None
            if case.video is not None:
                video = []
                for number, frame in enumerate(case.video):
                    video.append(f"media/{case_id}-frame{number}.png")
                    frame.save(folder / video[-1])
            lines.append(json.dumps({"id": case_id, "task": task, "prompt": case.prompt, "images": images,
                                     "video": video, "answer": case.answer}))
    path = folder / "cases.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path
