"""Training-only tasks that are not in the suite: each builds a feature a suite task needs and cannot find alone.

`image_color` ("What color is the shape in the second image?") asks the model to read one image of two by its
place. two_images ("Which image shows the blue shape, ...?") then only has to compare that colour with the one
asked for; learned directly it never left chance (docs/training.md).
"""
from __future__ import annotations

import numpy as np

from qvl_compile.tasks.shapes import COLORS, SPEC_SIZES, TASKS, Case, ShapeSizes, make_case, single_shape

STEPPING_STONES = ("image_color",)
TRAINING_TASKS = TASKS + STEPPING_STONES


def _image_color(rng: np.random.Generator, sizes: ShapeSizes) -> Case:
    first_color, second_color = rng.choice(list(COLORS), size=2, replace=False)
    first, _ = single_shape(rng, sizes, str(first_color))
    second, _ = single_shape(rng, sizes, str(second_color))
    place, answer = ("first", first_color) if rng.integers(2) == 0 else ("second", second_color)
    return Case("image_color", f"What color is the shape in the {place} image?", str(answer), (first, second))


def make_training_case(task: str, rng: np.random.Generator, sizes: ShapeSizes = SPEC_SIZES) -> Case:
    """A suite case, or one of the stepping stones above."""
    if task == "image_color":
        return _image_color(rng, sizes)
    return make_case(task, rng, sizes)
