"""Training-only tasks that are not in the suite: each builds a feature a suite task needs and cannot find alone.

`image_color` ("What color is the shape in the second image?") asks the model to read one image of two by its
place. `two_images_red` and `two_images_rgb` are the suite's two_images with the colour asked drawn from one and
then three colours: learned directly, two_images never left chance, and through these it reached 100%
(docs/training.md, "Which image").
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from qvl_compile.tasks.shapes import (
    COLORS,
    SHAPES,
    SPEC_SIZES,
    TASKS,
    Case,
    Shape,
    ShapeSizes,
    draw,
    grounding_reply,
    labelled_scene,
    make_case,
    scene_boxes,
    single_shape,
    two_single_shapes,
)


def _image_color(rng: np.random.Generator, sizes: ShapeSizes) -> Case:
    images, colors = two_single_shapes(rng, sizes)
    place = int(rng.integers(2))  # 0: the first image, 1: the second
    return Case("image_color", f"What color is the shape in the {('first', 'second')[place]} image?", colors[place],
                images)


def _two_images_asking(name: str, colors: tuple[str, ...]):
    """two_images with the asked colour drawn from `colors` only. Asked about all six, the answer is an equality
    (the second image's colour == the asked one) that no single feature predicts, and the loss sat at chance
    (ln 2 / 2) through every run; asked about red alone it is "is the second image red", a single feature."""
    def make(rng: np.random.Generator, sizes: ShapeSizes) -> Case:
        asked = str(rng.choice(colors))
        other = str(rng.choice([c for c in COLORS if c != asked]))
        place = int(rng.integers(2))  # where the asked colour goes: 0 the first image, 1 the second
        colors_in_order = (asked, other) if place == 0 else (other, asked)
        images = tuple(single_shape(rng, sizes, color)[0] for color in colors_in_order)
        return Case(name, f"Which image shows the {asked} shape, the first or the second?",
                    ("first", "second")[place], images)
    return make


def _ground_one(rng: np.random.Generator, sizes: ShapeSizes) -> Case:
    """Grounding with one shape in the image: the box is then where the coloured patches are, with nothing to
    match first (the suite's ground has 1 to 3 shapes and asks for one by its label)."""
    image, shape = single_shape(rng, sizes)
    return Case("ground_one", f"Locate the {shape.label}.", grounding_reply(shape, *image.size), (image,))


def _side_of(image: Image.Image, shape: Shape) -> str:
    """Which half of the image the shape's centre is in: "left" or "right"."""
    x1, _, x2, _ = shape.box
    return "left" if (x1 + x2) / 2 < image.size[0] / 2 else "right"


def _shape_side(rng: np.random.Generator, sizes: ShapeSizes) -> Case:
    """Which half the one shape's centre is in: the coarsest position readout, one bit of what a box needs."""
    image, shape = single_shape(rng, sizes)
    return Case("shape_side", "Is the shape on the left or on the right?", _side_of(image, shape), (image,))


_EDGES = {"left": (0, "width"), "top": (1, "height"), "right": (2, "width"), "bottom": (3, "height")}


def _edge_of(rng: np.random.Generator, image: Image.Image, shape: Shape) -> tuple[str, int, int]:
    """One of the shape's box edges, drawn -> (edge name, edge in pixels, the image's width or height, whichever the
    edge is measured along)."""
    edge = str(rng.choice(list(_EDGES)))
    index, across = _EDGES[edge]
    return edge, shape.box[index], image.size[0] if across == "width" else image.size[1]


def _asked_edge(rng: np.random.Generator, sizes: ShapeSizes):
    """One shape and one of its box's edges, drawn in that order -> (image, edge name, edge in pixels, the image's
    width or height, whichever the edge is measured along)."""
    image, shape = single_shape(rng, sizes)
    return (image, *_edge_of(rng, image, shape))


def _shape_edge(rng: np.random.Generator, sizes: ShapeSizes) -> Case:
    """One number of a box alone: the asked edge of the one shape, as the grounding reply writes it (0..1000 of the
    image's width or height). In the suite's reply the digits are 12 of about 33 tokens; here they are the answer."""
    image, edge, position, size = _asked_edge(rng, sizes)
    return Case("shape_edge", f"Where is the {edge} edge of the shape?", str(round(1000 * position / size)), (image,))


def _shape_tenth(rng: np.random.Generator, sizes: ShapeSizes) -> Case:
    """The first digit of a box's number as one answer: which tenth of the image's width (or height) the asked edge
    of the one shape lies in, 0..9. One token, all of the example's loss; `shape_edge` spreads it over 3 digits."""
    image, edge, position, size = _asked_edge(rng, sizes)
    return Case("shape_tenth", f"Which tenth of the image is the {edge} edge of the shape in?",
                str(min(9, 10 * position // size)), (image,))


def _colour_scene(rng: np.random.Generator, sizes: ShapeSizes, asked: str | None) -> tuple[Image.Image, Shape]:
    """Two or three shapes of distinct colours (so the colour alone names one), and the named one: of colour
    `asked`, or any of them when None."""
    width, height, boxes = scene_boxes(rng, sizes, 2, 3)
    others = [c for c in COLORS if c != asked]
    colors = ([asked] if asked else []) + [str(c) for c in rng.choice(others, size=len(boxes) - bool(asked), replace=False)]
    shapes = [Shape(str(rng.choice(SHAPES)), color, box) for color, box in zip(colors, boxes)]
    return draw((width, height), shapes), shapes[0 if asked else int(rng.integers(len(shapes)))]


def _colour_side(name: str, asked: str | None):
    """Which half the shape of one colour is in, among two or three of distinct colours: picking a shape out by
    its colour, red only first (one fixed feature to look up, as two_images_red was), then any colour."""
    def make(rng: np.random.Generator, sizes: ShapeSizes) -> Case:
        image, target = _colour_scene(rng, sizes, asked)
        return Case(name, f"Is the {target.color} shape on the left or on the right?", _side_of(image, target), (image,))
    return make


def _ground_side(rng: np.random.Generator, sizes: ShapeSizes) -> Case:
    """Which half the named shape of two or three is in: picking the shape out by its label, with a one-bit answer
    (the suite's ground scored 51% on one-shape images and 3-10% with more: docs/training.md, "Picking out")."""
    image, target = labelled_scene(rng, sizes, fewest=2)
    return Case("ground_side", f"Is the {target.label} on the left or on the right?", _side_of(image, target), (image,))


def _ground_tenth(rng: np.random.Generator, sizes: ShapeSizes) -> Case:
    """shape_tenth for the named shape of two or three: the first digit of one of its box's numbers."""
    image, target = labelled_scene(rng, sizes, fewest=2)
    edge, position, size = _edge_of(rng, image, target)
    return Case("ground_tenth", f"Which tenth of the image is the {edge} edge of the {target.label} in?",
                str(min(9, 10 * position // size)), (image,))


_RED, _RED_BLUE_GREEN = ("red",), ("red", "blue", "green")
_MAKERS = {"image_color": _image_color, "two_images_red": _two_images_asking("two_images_red", _RED),
           "two_images_rgb": _two_images_asking("two_images_rgb", _RED_BLUE_GREEN), "ground_one": _ground_one,
           "shape_side": _shape_side, "shape_edge": _shape_edge, "shape_tenth": _shape_tenth,
           "ground_side": _ground_side, "ground_tenth": _ground_tenth,
           "red_side": _colour_side("red_side", "red"), "color_side": _colour_side("color_side", None)}
STEPPING_STONES = tuple(_MAKERS)
TRAINING_TASKS = TASKS + STEPPING_STONES


def make_training_case(task: str, rng: np.random.Generator, sizes: ShapeSizes = SPEC_SIZES) -> Case:
    """A suite case, or one of the stepping stones above."""
    if task in _MAKERS:
        return _MAKERS[task](rng, sizes)
    return make_case(task, rng, sizes)
