"""The rewritten tower in PyTorch against the eager transformers tower (before any ONNX)."""
import pytest
import torch
from conftest import FLOAT64_REFERENCE_SLACK
from tiny_facts import PATCH_DIM

from qvl_compile.export.grids import GRID_MATRIX, random_pixels
from qvl_compile.families.qwen3_vl.loaders import reference_vision
from qvl_compile.rewrite.vision import RewrittenVisionTower

# MatMul patch embedding and per-frame SDPA reorder sums, and the rewrite computes rotary angles and the position
# table's interpolation fractions in float32, as its ONNX graph does: on the trained tiny model that gives 1e-7 to
# 8e-7 of scale at every grid but video t=2, 1.8e-5 there (measured, float64 weights). A wrong position or a frame
# seen by another frame is off by O(1).
TOLERANCE = 5e-5


@pytest.mark.parametrize("name", list(GRID_MATRIX))
def test_rewritten_tower_matches_eager(hf_visual64, name):
    """Both in float64 (conftest's hf_visual64): the rewrite's math, without fp32 rounding."""
    grid = GRID_MATRIX[name]
    pixels = torch.from_numpy(random_pixels(grid, PATCH_DIM, seed=7)).double()
    ref, ref_deep = reference_vision(hf_visual64, pixels, torch.tensor(grid))
    with torch.no_grad():
        got, got_deep = RewrittenVisionTower(hf_visual64).eval()(pixels, torch.tensor(grid, dtype=torch.int32))
    assert got.shape == ref.shape and got_deep.shape == ref_deep.shape
    assert got.dtype == torch.float64
    bound = FLOAT64_REFERENCE_SLACK * TOLERANCE  # conftest: 4.57 interpolates positions in float32
    assert (got - ref).abs().max() <= bound * ref.abs().max()
    assert (got_deep - ref_deep).abs().max() <= bound * ref_deep.abs().max()


def test_frame_attention_does_not_cross_frames(hf_visual):
    """Changing frame 2 of a video must leave frame 1's outputs unchanged (attention is per frame)."""
    grid = torch.tensor([[2, 4, 4]])
    pixels = torch.from_numpy(random_pixels(grid.tolist(), PATCH_DIM, seed=3))
    changed = pixels.clone()
    changed[16:] += 1.0
    tower = RewrittenVisionTower(hf_visual).eval()
    with torch.no_grad():
        a, _ = tower(pixels, grid)
        b, _ = tower(changed, grid)
    assert torch.equal(a[:4], b[:4]) and not torch.allclose(a[4:], b[4:])
