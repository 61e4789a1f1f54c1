"""The shapes suite's generator against its written spec (docs/task-suite.md), judged from the pixels:
colours, sizes, placement, grounding coordinates and motion are measured on the images, not read back
from the generator's own records."""
import json
from collections import deque

import numpy as np
import pytest

from qvl_compile.tasks.shapes import COLORS, TASKS, make_case, write_cases

pytestmark = pytest.mark.torch_free

WHITE = (255, 255, 255)
CASES_PER_TASK = 40


def components(image) -> list[tuple[str, tuple[int, int, int, int]]]:
    """(colour name, pixel box x1, y1, x2, y2 with exclusive x2/y2) of each 4-connected non-white region."""
    pixels = np.asarray(image)
    seen = np.all(pixels == WHITE, axis=-1)
    height, width = seen.shape
    found = []
    for y, x in zip(*np.nonzero(~seen)):
        if seen[y, x]:
            continue
        colour = tuple(int(c) for c in pixels[y, x])
        queue, xs, ys = deque([(y, x)]), [], []
        seen[y, x] = True
        while queue:
            cy, cx = queue.popleft()
            xs.append(cx), ys.append(cy)
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < height and 0 <= nx < width and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        name = next((n for n, rgb in COLORS.items() if rgb == colour), None)
        assert name is not None, f"a shape's colour {colour} is not one of the six"
        found.append((name, (min(xs), min(ys), max(xs) + 1, max(ys) + 1)))
    return found


def cases(task):
    rng = np.random.default_rng(12345)
    return [make_case(task, rng) for _ in range(CASES_PER_TASK)]


def check_image(image, shapes):
    assert 96 <= image.width <= 384 and 96 <= image.height <= 384
    shortest = min(image.size)
    for _, (x1, y1, x2, y2) in shapes:
        side = max(x2 - x1, y2 - y1)  # a triangle's apex row is one pixel, so its extent is its box's
        assert 0.2 * shortest - 1 <= side <= 0.45 * shortest + 1
        assert 0 <= x1 and 0 <= y1 and x2 <= image.width and y2 <= image.height


@pytest.mark.parametrize("task", ["color", "shape"])
def test_single_shape_cases(task):
    kinds_seen, colours_seen = set(), set()
    for case in cases(task):
        (image,) = case.images
        shapes = components(image)
        assert len(shapes) == 1
        check_image(image, shapes)
        colour, (x1, y1, x2, y2) = shapes[0]
        colours_seen.add(colour)
        pixels = np.asarray(image)[y1:y2, x1:x2]
        filled = float(np.mean(np.any(pixels != WHITE, axis=-1)))  # square 1, circle pi/4, triangle 1/2
        kind = "square" if filled > 0.95 else "circle" if filled > 0.7 else "triangle"
        assert 0.45 < filled
        kinds_seen.add(kind)
        if task == "color":
            assert case.answer == colour and case.prompt == "What color is the shape?"
        else:
            assert case.answer == kind and case.prompt == "What shape is this?"
    assert len(colours_seen) >= 4 and (task == "color" or kinds_seen == {"circle", "square", "triangle"})


def test_count_cases_hold_that_many_disjoint_shapes():
    answers = set()
    for case in cases("count"):
        shapes = components(case.images[0])
        check_image(case.images[0], shapes)
        assert case.answer == str(len(shapes))
        answers.add(case.answer)
    assert answers == {"1", "2", "3", "4"}


def test_grounding_answers_follow_qwen_convention():
    for case in cases("ground"):
        (image,) = case.images
        shapes = components(image)
        assert 1 <= len(shapes) <= 3
        check_image(image, shapes)
        reply = json.loads(case.answer)
        assert len(reply) == 1 and set(reply[0]) == {"bbox_2d", "label"}
        colour, kind = reply[0]["label"].split()
        assert case.prompt == f"Locate the {colour} {kind}."
        x1, y1, x2, y2 = reply[0]["bbox_2d"]
        matches = [box for name, box in shapes if name == colour]
        width, height = image.size
        # The drawn region's extent, in 0..1000 units, within rounding of the stated box.
        assert any(abs(round(1000 * b[0] / width) - x1) <= 6 and abs(round(1000 * b[2] / width) - x2) <= 6
                   and abs(round(1000 * b[3] / height) - y2) <= 6 and abs(round(1000 * b[1] / height) - y1) <= 6
                   for b in matches), (case.answer, matches, image.size)


def test_two_image_cases():
    answers = set()
    for case in cases("two_images"):
        first, second = (components(image) for image in case.images)
        assert len(first) == len(second) == 1 and first[0][0] != second[0][0]
        asked = case.prompt.split(" the ")[1].split()[0]
        assert case.prompt == f"Which image shows the {asked} shape, the first or the second?"
        assert case.answer == ("first" if first[0][0] == asked else "second")
        answers.add(case.answer)
    assert answers == {"first", "second"}


def test_motion_cases_move_in_a_straight_line():
    answers = set()
    for case in cases("motion"):
        assert not case.images and len(case.video) == 4
        boxes = []
        for frame in case.video:
            shapes = components(frame)
            assert len(shapes) == 1
            check_image(frame, shapes)
            boxes.append(shapes[0][1])
        width, height = case.video[0].size
        dx = [b[0] - a[0] for a, b in zip(boxes, boxes[1:])]
        dy = [b[1] - a[1] for a, b in zip(boxes, boxes[1:])]
        horizontal = any(dx)
        steps, extent, still = (dx, width, dy) if horizontal else (dy, height, dx)
        assert not any(still) and len(set(steps)) == 1
        assert 0.08 * extent - 1 <= abs(steps[0]) <= 0.15 * extent + 1
        direction = ("right" if steps[0] > 0 else "left") if horizontal else ("down" if steps[0] > 0 else "up")
        assert case.answer == direction and case.prompt == "Which way does the shape move?"
        answers.add(direction)
    assert answers == {"left", "right", "up", "down"}


def test_written_cases_are_the_eval_format_and_reproducible(tmp_path):
    first = write_cases(tmp_path / "a", seed=7, per_task=2)
    again = write_cases(tmp_path / "b", seed=7, per_task=2)
    lines = [json.loads(line) for line in first.read_text().splitlines()]
    assert [line["task"] for line in lines] == [t for t in TASKS for _ in range(2)]
    for line in lines:
        assert set(line) == {"id", "task", "prompt", "images", "video", "answer"}
        for path in line["images"] + (line["video"] or []):
            assert (first.parent / path).is_file()
            assert (first.parent / path).read_bytes() == (again.parent / path).read_bytes()
    assert first.read_text() == again.read_text()
    other = write_cases(tmp_path / "c", seed=8, per_task=2)
    assert other.read_text() != first.read_text()


@pytest.mark.parametrize("task", TASKS)
def test_training_sizes_make_larger_valid_shapes(task):
    """The trainer's early stages draw larger shapes (ShapeSizes); every task still yields a valid case, shapes
    stay inside the image and apart, and a single shape's side keeps to the asked range."""
    from qvl_compile.tasks.shapes import ShapeSizes

    sizes = ShapeSizes(0.55, 0.9)
    rng = np.random.default_rng(7)
    for _ in range(10):
        case = make_case(task, rng, sizes)
        for image in case.images + (case.video or ()):
            shapes = components(image)
            assert shapes and all(0 <= x1 and 0 <= y1 and x2 <= image.width and y2 <= image.height
                                  for _, (x1, y1, x2, y2) in shapes)
            if task in ("color", "shape", "two_images"):
                ((_, (x1, y1, x2, y2)),) = shapes
                assert 0.55 * min(image.size) - 1 <= max(x2 - x1, y2 - y1) <= 0.9 * min(image.size) + 1
