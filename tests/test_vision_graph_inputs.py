"""What `vision.onnx` does with bad (pixel_values, grid_thw) when they bypass VisionEncoder's checks.

VisionEncoder refuses each of these with a one-line QvlError before onnxruntime runs (the second test).
The graph itself has no assertion op: most bad grids make onnxruntime fail inside a kernel (GatherND, or
a Reshape inside the attention's If or Loop) with a long message, and grid rows with zero patches pass silently as empty media.
The README's table states these; this test keeps it true.
"""
import numpy as np
import onnxruntime as ort
import pytest
from tiny_facts import PATCH_DIM

from qvl_compile.errors import QvlError
from qvl_compile.runtime.vision import VisionEncoder

pytestmark = pytest.mark.torch_free

# (name, pixel rows, grid_thw, what the raw graph does: "error" or "runs", what VisionEncoder says)
CASES = [
    ("products above the rows", 16, [[1, 4, 6]], "error", "add up to 24 patches but pixel_values has 16 rows"),
    ("products below the rows", 20, [[1, 4, 4]], "error", "add up to 16 patches but pixel_values has 20 rows"),
    # Rows a whole number of frames short: the one-batch attention branch could take them, the row check refuses.
    ("a frame short", 16, [[2, 4, 4]], "error", "add up to 32 patches but pixel_values has 16 rows"),
    ("zero t", 16, [[0, 4, 4]], "error", "every entry must be positive, row 0 is [0, 4, 4]"),
    ("negative entries", 16, [[-1, 4, -4]], "error", "every entry must be positive"),
    ("h not a multiple of 2", 15, [[1, 3, 5]], "error", "multiples of the merge size 2, row 0 is [1, 3, 5]"),
    ("an extra zero-size row", 16, [[1, 4, 4], [0, 2, 2]], "runs", "every entry must be positive, row 1"),
    ("no rows at all", 0, np.zeros((0, 3), np.int64), "runs", "expected shape [num_grids >= 1, 3], got [0, 3]"),
]


@pytest.fixture(scope="module")
def vision_dir(golden_exports):
    return golden_exports["fp32"]


@pytest.fixture(scope="module")
def raw_session(vision_dir):
    options = ort.SessionOptions()
    options.log_severity_level = 4  # the kernels' own error logs would flood the test output
    return ort.InferenceSession(str(vision_dir / "vision.onnx"), options, providers=["CPUExecutionProvider"])


def _pixels(rows):
    return np.random.default_rng(0).standard_normal((rows, PATCH_DIM)).astype(np.float32)


@pytest.mark.parametrize("name, rows, grid, raw, _", CASES, ids=[c[0] for c in CASES])
def test_raw_graph_behaviour(raw_session, name, rows, grid, raw, _):
    feeds = {"pixel_values": _pixels(rows), "grid_thw": np.asarray(grid, np.int64)}
    if raw == "error":
        with pytest.raises(Exception, match="Non-zero status code returned while running (GatherND|Loop|If)"):
            raw_session.run(None, feeds)
    else:
        embeds, deepstack = raw_session.run(None, feeds)
        assert embeds.shape[0] == rows // 4 and deepstack.shape[1] == rows // 4


@pytest.mark.parametrize("name, rows, grid, _, message", CASES, ids=[c[0] for c in CASES])
def test_encoder_refuses_before_onnxruntime(vision_dir, name, rows, grid, _, message):
    encoder = VisionEncoder.from_export(vision_dir)
    with pytest.raises(QvlError) as caught:
        encoder(_pixels(rows), np.asarray(grid))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_raw_graph_refuses_wrong_dtypes(raw_session):
    with pytest.raises(Exception, match=r"Actual: \(tensor\(int32\)\) , expected: \(tensor\(int64\)\)"):
        raw_session.run(None, {"pixel_values": _pixels(16), "grid_thw": np.array([[1, 4, 4]], np.int32)})
    with pytest.raises(Exception, match=r"Actual: \(tensor\(double\)\) , expected: \(tensor\(float\)\)"):
        raw_session.run(None, {"pixel_values": _pixels(16).astype(np.float64), "grid_thw": np.array([[1, 4, 4]])})


def test_encoder_casts_int32_grid_and_float64_pixels(vision_dir):
    encoder = VisionEncoder.from_export(vision_dir)
    exact = encoder(_pixels(16), np.array([[1, 4, 4]], np.int64))
    cast = encoder(_pixels(16).astype(np.float64), np.array([[1, 4, 4]], np.int32))
    np.testing.assert_array_equal(exact.image_embeds, cast.image_embeds)
