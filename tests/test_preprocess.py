"""Image preprocessing against transformers' PIL image processor on many sizes, aspect ratios and modes."""
import numpy as np
import pytest
import transformers
from PIL import Image

from qvl_compile.errors import QvlError
from qvl_compile.runtime.preprocess import ImageProcessorConfig, load_image, preprocess_image, smart_resize

CASES = [(300, 400, "RGB"), (17, 900, "RGB"), (1000, 120, "L"), (256, 256, "RGBA"), (513, 777, "P"),
         (64, 64, "CMYK"), (5000, 4000, "RGB"), (31, 33, "LA"), (2048, 96, "RGB"), (640, 480, "I;16")]


@pytest.fixture(scope="module")
def processor(tiny_dir):
    if transformers.__version__ < "5":
        pytest.skip("transformers 4.57's slow image processor ignores preprocessor_config.json's `size` "
                    "(it keeps 3136..1003520 pixels); the 5.x PIL processor follows it, as the released fast one does")
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil.from_pretrained(tiny_dir)


@pytest.mark.parametrize("height, width, mode", CASES, ids=[f"{h}x{w}-{m}" for h, w, m in CASES])
def test_pixels_and_grid_match_transformers(processor, tiny_dir, height, width, mode):
    rng = np.random.default_rng(height * 7 + width)
    image = Image.fromarray(rng.integers(0, 255, (height, width, 4), dtype=np.uint8), "RGBA").convert(mode)
    ours, grid = preprocess_image(image, ImageProcessorConfig.from_dir(tiny_dir))
    ref = processor(images=[image], return_tensors="np")
    assert [list(grid)] == ref["image_grid_thw"].tolist()
    assert ours.shape == ref["pixel_values"].shape and ours.dtype == np.float32
    # Not bit-identical: transformers rescales then normalises in float32 with another operation order;
    # the difference is one float32 ulp of values in [-1, 1].
    assert np.abs(ours - ref["pixel_values"]).max() <= 1e-6


def test_smart_resize_bounds():
    # 400/32 = 12.5 rounds half to even (Python and transformers alike): 12 * 32 = 384, grid 18 x 24,
    # the grid transformers' processor gives a 300x400 image (tests/test_tiny_model.py).
    assert smart_resize(300, 400, 32, 65536, 16777216) == (288, 384)
    h, w = smart_resize(10, 10, 32, 65536, 16777216)
    assert h * w >= 65536 and h % 32 == w % 32 == 0
    with pytest.raises(QvlError, match="aspect ratio must be at most 200"):
        smart_resize(10, 2500, 32, 65536, 16777216)


def test_bad_image_files(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(QvlError, match="empty file"):
        load_image(empty)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(QvlError, match="not a readable image"):
        load_image(text)
    with pytest.raises(QvlError, match="does not exist"):
        load_image(tmp_path / "missing.png")
