"""The trainer's stepping stones are well-formed suite-style cases: the colour asked comes from the stone's own
set, the answer names the image that shows it, and the image pair is drawn as two_images draws it."""
import json

import numpy as np
import pytest

from qvl_compile.tasks.shapes import COLORS
from qvl_compile.training.stepping_stones import STEPPING_STONES, TRAINING_TASKS, make_training_case

CASES = 40


def _colors_of(image) -> set[str]:
    pixels = {tuple(p) for p in np.asarray(image.convert("RGB")).reshape(-1, 3).tolist()}
    return {name for name, rgb in COLORS.items() if tuple(rgb) in pixels}


@pytest.mark.parametrize("stone, allowed", [("two_images_red", {"red"}), ("two_images_rgb", {"red", "blue", "green"})])
def test_which_image_stones_ask_only_their_colours_and_name_the_right_image(stone, allowed):
    rng = np.random.default_rng(7)
    asked_seen, answers = set(), []
    for _ in range(CASES):
        case = make_training_case(stone, rng)
        asked = case.prompt.split("shows the ")[1].split(" shape")[0]
        assert case.prompt == f"Which image shows the {asked} shape, the first or the second?"
        first, second = (_colors_of(image) for image in case.images)
        assert len(first) == 1 and len(second) == 1 and first != second
        assert asked in (first | second)
        assert case.answer == ("first" if asked in first else "second")
        asked_seen.add(asked)
        answers.append(case.answer)
    assert asked_seen <= allowed and len(asked_seen) == len(allowed)
    assert 0.25 < answers.count("first") / CASES < 0.75  # both places, not one answer learned as a prior


def test_stones_are_training_tasks_beside_the_suite():
    assert set(STEPPING_STONES) == {"image_color", "two_images_red", "two_images_rgb", "ground_one", "shape_side",
                                    "shape_edge", "shape_tenth", "ground_side", "ground_tenth", "red_side",
                                    "color_side"}
    assert set(STEPPING_STONES) <= set(TRAINING_TASKS)


def test_ground_one_boxes_the_only_shape_in_qwen_coordinates():
    rng = np.random.default_rng(8)
    for _ in range(CASES):
        case = make_training_case("ground_one", rng)
        (image,) = case.images
        (reply,) = json.loads(case.answer)
        assert case.prompt == f"Locate the {reply['label']}."
        pixels = np.asarray(image.convert("RGB")).astype(int)
        ys, xs = np.nonzero((pixels != 255).any(-1))  # everything drawn: the one shape
        width, height = image.size
        drawn = [1000 * xs.min() / width, 1000 * ys.min() / height, 1000 * (xs.max() + 1) / width,
                 1000 * (ys.max() + 1) / height]
        slack = 2 * 1000 / min(width, height)  # two pixels: antialiased edges, rounding to integers
        assert np.allclose(reply["bbox_2d"], drawn, atol=slack), (reply, drawn)


def test_shape_side_names_the_half_that_holds_the_shapes_centre():
    rng = np.random.default_rng(9)
    answers = []
    for _ in range(CASES):
        case = make_training_case("shape_side", rng)
        (image,) = case.images
        _, xs = np.nonzero((np.asarray(image.convert("RGB")) != 255).any(-1))
        centre = (xs.min() + xs.max() + 1) / 2
        if abs(centre - image.size[0] / 2) > 2:  # two pixels off the middle: the side is plain in the picture
            assert case.answer == ("left" if centre < image.size[0] / 2 else "right"), (centre, image.size)
        answers.append(case.answer)
    assert set(answers) == {"left", "right"}


def test_shape_edge_is_the_asked_edge_of_the_drawn_shape():
    """The answer is the asked box edge in Qwen coordinates, read here from the drawn pixels (a circle or triangle
    touches its box's edges within a pixel or two)."""
    rng = np.random.default_rng(10)
    asked = []
    for _ in range(CASES):
        case = make_training_case("shape_edge", rng)
        (image,) = case.images
        edge = case.prompt.removeprefix("Where is the ").removesuffix(" edge of the shape?")
        ys, xs = np.nonzero((np.asarray(image.convert("RGB")) != 255).any(-1))
        width, height = image.size
        drawn = {"left": 1000 * xs.min() / width, "top": 1000 * ys.min() / height,
                 "right": 1000 * (xs.max() + 1) / width, "bottom": 1000 * (ys.max() + 1) / height}[edge]
        scale = 1000 / (width if edge in ("left", "right") else height)
        assert abs(int(case.answer) - drawn) <= 3 * scale + 1, (edge, case.answer, drawn)
        asked.append(edge)
    assert set(asked) == {"left", "top", "right", "bottom"}


def test_shape_tenth_is_the_tenth_that_holds_the_asked_edge_of_the_drawn_shape():
    """Read from the drawn pixels: the asked edge's position, as a fraction of the image's width or height, lies in
    the answered tenth (within two pixels where the edge sits on a tenth's border)."""
    rng = np.random.default_rng(11)
    asked, answers = [], set()
    for _ in range(CASES * 2):
        case = make_training_case("shape_tenth", rng)
        (image,) = case.images
        edge = case.prompt.removeprefix("Which tenth of the image is the ").removesuffix(" edge of the shape in?")
        ys, xs = np.nonzero((np.asarray(image.convert("RGB")) != 255).any(-1))
        width, height = image.size
        size = width if edge in ("left", "right") else height
        drawn = {"left": xs.min(), "top": ys.min(), "right": xs.max() + 1, "bottom": ys.max() + 1}[edge]
        tenth = int(case.answer)
        assert 0 <= tenth <= 9 and case.answer == str(tenth)
        assert tenth * size / 10 - 2 <= drawn <= (tenth + 1) * size / 10 + 2, (edge, tenth, drawn, size)
        asked.append(edge)
        answers.add(tenth)
    assert set(asked) == {"left", "top", "right", "bottom"} and len(answers) >= 8


def _one_shape_of_colour(image, color: str):
    """Rows and columns of the pixels of `color`, or None where two shapes share it. Shapes' boxes are disjoint
    and apart, so two shapes of one colour leave a gap in the rows or in the columns their pixels cover."""
    mask = (np.asarray(image.convert("RGB")).astype(int) == np.array(COLORS[color])).all(-1)
    ys, xs = np.nonzero(mask)
    if not len(xs) or (np.diff(np.unique(ys)) > 1).any() or (np.diff(np.unique(xs)) > 1).any():
        return None
    return ys, xs


def test_ground_side_picks_the_named_shape_of_two_or_three():
    rng = np.random.default_rng(11)
    answers, checked = [], 0
    for _ in range(CASES):
        case = make_training_case("ground_side", rng)
        label = case.prompt.removeprefix("Is the ").removesuffix(" on the left or on the right?")
        assert case.prompt == f"Is the {label} on the left or on the right?"
        (image,) = case.images
        named = _one_shape_of_colour(image, label.split()[0])
        drawn = (np.asarray(image.convert("RGB")) != 255).any(-1).sum()
        if named is not None:
            _, xs = named
            assert drawn > len(xs) + 100  # another shape to pass over
            centre = (xs.min() + xs.max() + 1) / 2
            if abs(centre - image.size[0] / 2) > 2:  # two pixels off the middle: the side is plain in the picture
                assert case.answer == ("left" if centre < image.size[0] / 2 else "right"), (case.prompt, centre)
                checked += 1
        answers.append(case.answer)
    assert set(answers) == {"left", "right"} and checked > CASES // 2


def test_ground_tenth_is_the_first_digit_of_the_named_shapes_edge():
    rng = np.random.default_rng(12)
    checked = 0
    for _ in range(CASES):
        case = make_training_case("ground_tenth", rng)
        edge, label = case.prompt.removeprefix("Which tenth of the image is the ").removesuffix(" in?").split(" edge of the ")
        assert edge in ("left", "top", "right", "bottom")
        (image,) = case.images
        named = _one_shape_of_colour(image, label.split()[0])
        if named is None:
            continue
        ys, xs = named
        width, height = image.size
        drawn = {"left": xs.min() / width, "right": (xs.max() + 1) / width, "top": ys.min() / height,
                 "bottom": (ys.max() + 1) / height}[edge]
        if abs(10 * drawn - round(10 * drawn)) > 0.05:  # not within a pixel or so of a tenth's boundary
            assert case.answer == str(min(9, int(10 * drawn))), (case.prompt, drawn)
            checked += 1
    assert checked > CASES // 3


@pytest.mark.parametrize("stone, allowed", [("red_side", {"red"}), ("color_side", set(COLORS))])
def test_colour_side_stones_name_a_colour_only_one_shape_has(stone, allowed):
    rng = np.random.default_rng(13)
    asked_seen, answers = set(), []
    for _ in range(CASES):
        case = make_training_case(stone, rng)
        color = case.prompt.removeprefix("Is the ").removesuffix(" shape on the left or on the right?")
        assert case.prompt == f"Is the {color} shape on the left or on the right?"
        (image,) = case.images
        assert len(_colors_of(image)) >= 2  # two or three shapes, each of its own colour
        named = _one_shape_of_colour(image, color)
        assert named is not None
        _, xs = named
        centre = (xs.min() + xs.max() + 1) / 2
        if abs(centre - image.size[0] / 2) > 2:
            assert case.answer == ("left" if centre < image.size[0] / 2 else "right"), (case.prompt, centre)
        asked_seen.add(color)
        answers.append(case.answer)
    assert asked_seen <= allowed and len(asked_seen) >= min(len(allowed), 5)
    assert set(answers) == {"left", "right"}
