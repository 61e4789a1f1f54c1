"""Grounding replies (parse, pixels, IoU, drawing) and the eval scorer and case reader."""
import json

import numpy as np
import pytest
from PIL import Image

from qvl_compile.errors import QvlError
from qvl_compile.runtime.evaluate import accuracy_table, is_correct, read_cases, run_cases
from qvl_compile.runtime.grounding import Box, boxes_in_pixels, draw_boxes, iou, parse_boxes, to_pixels

pytestmark = pytest.mark.torch_free

REPLY = '[{"bbox_2d": [100, 250, 500, 750], "label": "red circle"}]'


def test_parse_the_qwen_reply_forms():
    assert parse_boxes(REPLY) == [Box("red circle", (100.0, 250.0, 500.0, 750.0))]
    fenced = '```json\n[\n\t{"bbox_2d": [1, 2, 3, 4], "label": "a"},\n\t{"bbox_2d": [5, 6, 7, 8]}\n]\n```'
    assert parse_boxes(fenced) == [Box("a", (1.0, 2.0, 3.0, 4.0)), Box(None, (5.0, 6.0, 7.0, 8.0))]
    assert parse_boxes('{"bbox_2d": [1, 2, 3, 4], "label": "b"}') == [Box("b", (1.0, 2.0, 3.0, 4.0))]


@pytest.mark.parametrize("reply", ["red", "", "[]", "[1, 2]", '[{"bbox_2d": [1, 2, 3]}]', '[{"box": [1, 2, 3, 4]}]',
                                   '[{"bbox_2d": [1, 2, "3", 4]}]', '[{"bbox_2d": [1, 2, true, 4]}]', '[{"bbox_2d": '])
def test_what_is_not_a_box_list(reply):
    assert parse_boxes(reply) is None


def test_pixels_are_relative_to_width_and_height():
    (box,) = boxes_in_pixels(REPLY, (640, 480))
    assert box.bbox == (64.0, 120.0, 320.0, 360.0) and box.label == "red circle"
    assert to_pixels(Box(None, (-20, 0, 1100, 1000)), 200, 100).bbox == (0.0, 0.0, 200.0, 100.0)  # clipped
    assert boxes_in_pixels("a red circle", (640, 480)) is None


def test_iou_by_geometry():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (10, 10, 20, 20)) == 0.0
    assert iou((0, 0, 10, 10), (2, 2, 4, 4)) == pytest.approx(4 / 100)
    assert iou((5, 5, 0, 0), (0, 0, 10, 10)) == 0.0  # inverted boxes are empty


def test_scoring_rules():
    assert is_correct(" red\n", "red") and not is_correct("Red", "red") and not is_correct("red.", "red")
    near = '[{"bbox_2d": [110, 260, 510, 760], "label": "red circle"}]'
    far = '[{"bbox_2d": [400, 250, 800, 750], "label": "red circle"}]'
    assert is_correct(near, REPLY) and not is_correct(far, REPLY) and not is_correct("the red circle", REPLY)


def test_draw_boxes_outlines_the_box():
    image = Image.new("RGB", (200, 100), (255, 255, 255))
    (box,) = boxes_in_pixels(REPLY, image.size)
    drawn = np.asarray(draw_boxes(image, [box]))
    assert tuple(drawn[60, 20]) == (255, 0, 255)  # the left edge, x = 20
    assert tuple(drawn[50, 40]) == (255, 255, 255)  # inside stays as it was
    assert np.asarray(image).min() == 255  # the input is not modified


def _write(tmp_path, lines):
    path = tmp_path / "cases.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_read_cases_resolves_paths_against_the_file(tmp_path):
    (tmp_path / "media").mkdir()
    Image.new("RGB", (96, 96)).save(tmp_path / "media" / "a.png")
    path = _write(tmp_path, [{"id": 1, "task": "t", "prompt": "p", "images": ["media/a.png"], "video": None,
                              "answer": "x"}, ""])
    (case,) = read_cases(path)
    assert case.id == "1" and case.images == (tmp_path / "media" / "a.png",) and case.video is None


@pytest.mark.parametrize("line, message", [
    ("{not json", "cases.jsonl:1: expected one JSON object per line"),
    ("[1]", "cases.jsonl:1: expected a JSON object, got list"),
    ({"id": "a", "prompt": "p"}, "expected 'answer' as a string, got null"),
    ({"id": "a", "prompt": "p", "answer": "x", "images": ["gone.png"]}, "images file"),
    ({"id": "a", "prompt": "p", "answer": "x", "video": "clip.mp4"}, "'video' must be a list of file paths"),
])
def test_bad_case_files_name_the_line(tmp_path, line, message):
    with pytest.raises(QvlError, match=message.replace("[", r"\[").replace("(", r"\(")):
        read_cases(_write(tmp_path, [line]))


def test_duplicate_ids_and_empty_files_are_refused(tmp_path):
    case = {"id": "a", "prompt": "p", "answer": "x"}
    with pytest.raises(QvlError, match="id 'a' appears twice"):
        read_cases(_write(tmp_path, [case, case]))
    with pytest.raises(QvlError, match="holds no cases"):
        read_cases(_write(tmp_path, [""]))


def test_accuracy_table_counts_per_task(tmp_path):
    path = _write(tmp_path, [{"id": i, "task": "even" if i % 2 == 0 else "odd", "prompt": str(i), "answer": "yes"}
                             for i in range(5)])
    predictions = list(run_cases(read_cases(path), lambda case: "yes" if int(case.prompt) < 3 else "no"))
    table = accuracy_table(predictions)
    assert table["tasks"] == {"even": {"correct": 2, "total": 3, "accuracy": 0.6667},
                              "odd": {"correct": 1, "total": 2, "accuracy": 0.5}}
    assert table["overall"] == {"correct": 3, "total": 5, "accuracy": 0.6}
