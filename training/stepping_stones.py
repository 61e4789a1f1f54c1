"""Training-only tasks that are not in the suite: each builds a feature a suite task needs and cannot find alone.

`image_color` ("What color is the shape in the second image?") asks the model to read one image of two by its
place. two_images ("Which image shows the blue shape, ...?") then only has to compare that colour with the one
asked for; learned directly it never left chance (docs/training.md).
"""
from __future__ import annotations

import numpy as np

from qvl_compile.tasks.shapes import SPEC_SIZES, TASKS, Case, ShapeSizes, make_case, two_single_shapes


def _image_color(rng: np.random.Generator, sizes: ShapeSizes) -> Case:
    images, colors = two_single_shapes(rng, sizes)
    place = int(rng.integers(2))  # 0: the first image, 1: the second
    return Case("image_color", f"What color is the shape in the {('first', 'second')[place]} image?", colors[place],
                images)


_MAKERS = {"image_color": _image_color}
STEPPING_STONES = tuple(_MAKERS)
TRAINING_TASKS = TASKS + STEPPING_STONES


def make_training_case(task: str, rng: np.random.Generator, sizes: ShapeSizes = SPEC_SIZES) -> Case:
    """A suite case, or one of the stepping stones above."""
    if task in _MAKERS:
        return _MAKERS[task](rng, sizes)
    return make_case(task, rng, sizes)
