"""The tensor-only position code against transformers' own implementation (either installed line)."""
import ast
from pathlib import Path

import pytest
import torch

from qvl_compile.export.grids import GRID_MATRIX
from qvl_compile.rewrite.positions import interpolated_position_embedding, patch_coordinates, rotary_cos_sin

GRIDS = list(GRID_MATRIX.values()) + [((1, 2, 50),), ((4, 2, 2), (1, 96, 2))]
REWRITE_DIR = Path(__file__).resolve().parents[1] / "rewrite"


def _hf_position_ids(hf_visual, grid):
    """[N, 2] (row, col) from transformers: 5.x helper, or 4.57's rot_pos_emb via its frequency table."""
    try:
        from transformers.vision_utils import get_vision_position_ids
    except ImportError:
        return None
    return get_vision_position_ids(grid, hf_visual.spatial_merge_size)


@pytest.mark.parametrize("grid", GRIDS, ids=[str(g) for g in GRIDS])
def test_rotary_angles_match_transformers(hf_visual, grid):
    grid = torch.tensor(grid)
    n = int(grid.prod(1).sum())
    coords = patch_coordinates(grid, n, 2)
    ids = _hf_position_ids(hf_visual, grid)
    if ids is not None:  # 5.x: integer positions compared exactly
        assert torch.equal(torch.stack([coords.row, coords.col], 1), ids)
        cos_ref, sin_ref = hf_visual.rotary_pos_emb(torch.zeros(1), ids)
    else:  # 4.57.x: rot_pos_emb returns the angle table; the model takes cos/sin of cat(angles, angles)
        angles = hf_visual.rot_pos_emb(grid)
        emb = torch.cat([angles, angles], -1)
        cos_ref, sin_ref = emb.cos(), emb.sin()
    cos, sin = rotary_cos_sin(coords, hf_visual.rotary_pos_emb.inv_freq)
    assert cos.shape == cos_ref.shape and cos.dtype == cos_ref.dtype
    # Same float ops on the same integers: bit-identical.
    assert torch.equal(cos, cos_ref) and torch.equal(sin, sin_ref)


@pytest.mark.parametrize("grid", GRIDS, ids=[str(g) for g in GRIDS])
def test_interpolation_matches_transformers(hf_visual, grid):
    grid = torch.tensor(grid)
    n = int(grid.prod(1).sum())
    table = hf_visual.pos_embed.weight.detach()
    ours = interpolated_position_embedding(patch_coordinates(grid, n, 2), table)
    if hasattr(hf_visual, "fast_pos_embed_interpolate"):  # 4.57.x
        with torch.no_grad():
            ref = hf_visual.fast_pos_embed_interpolate(grid)
        # 4.57 samples with linspace (start + i * step, or end - (n-1-i) * step), we with the closed form
        # i * (side-1) / (h-1) that 5.x uses: the source coordinate (up to 47) differs by a float32 ulp
        # (~4e-6), which moves a value by that times the table's local slope (table std 0.5).
        atol = 2e-5
    else:  # 5.x
        from transformers.vision_utils import get_vision_interpolation_indices_and_weights

        idx, w = get_vision_interpolation_indices_and_weights(
            grid, hf_visual.num_grid_per_side, mode="bilinear", align_corners=True, spatial_merge_size=2)
        ref = (table[idx] * w[:, :, None]).sum(1)
        atol = 2e-6  # same closed form; only the 4-tap summation order may differ, values are O(1)
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    torch.testing.assert_close(ours, ref, rtol=0, atol=atol)


def _calls(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            for node in ast.walk(tree) if isinstance(node, ast.Call)}


@pytest.mark.parametrize("name", ["positions.py", "vision.py"])
def test_traced_rewrite_code_has_no_data_dependent_python(name):
    banned = {"item", "tolist", "linspace", "repeat_interleave", "split", "nonzero", "unique"}
    assert not (_calls(REWRITE_DIR / name) & banned)


def test_coordinates_are_int64_even_for_int32_grid():
    grid = torch.tensor([[1, 4, 6], [2, 2, 2]], dtype=torch.int32)
    coords = patch_coordinates(grid, 32, 2)
    assert coords.row.dtype == coords.col.dtype == torch.int64
    ref = patch_coordinates(grid.to(torch.int64), 32, 2)
    assert torch.equal(coords.row, ref.row) and torch.equal(coords.col, ref.col)
