import json

import pytest

from qvl_compile.config import ModelConfig
from qvl_compile.errors import QvlError
from qvl_compile.families.qwen3_vl.fixtures import arch_dir


@pytest.mark.parametrize("arch", ["2b", "4b", "8b"])
def test_released_architectures_parse(arch):
    cfg = ModelConfig.from_dir(arch_dir(arch))
    assert cfg.vision.patch_dim == 3 * 2 * 16 * 16  # RGB x 2 frames x 16x16 pixels, as released
    assert cfg.vision.spatial_merge_size == 2
    assert cfg.text.mrope_section == (24, 20, 20) and cfg.text.mrope_interleaved
    assert cfg.image_token_id == 151655


def _raw(tiny_dir):
    return json.loads((tiny_dir / "config.json").read_text())


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda r: r["vision_config"].update(temporal_patch_size=3), "only temporal_patch_size 2 is supported, got 3"),
        (lambda r: r["vision_config"].update(spatial_merge_size=4), "only spatial_merge_size 2 is supported, got 4"),
        (lambda r: r["vision_config"].pop("deepstack_visual_indexes"), "tried deepstack_visual_indexes"),
        (lambda r: r["vision_config"].update(deepstack_visual_indexes=[9]), "deepstack_visual_indexes must lie in 0..3"),
        (lambda r: r.update(model_type="qwen2_vl"), "model_type 'qwen2_vl'"),
    ],
)
def test_unsupported_config_values_are_named(tiny_dir, edit, message):
    raw = _raw(tiny_dir)
    edit(raw)
    with pytest.raises(QvlError, match=message.replace("(", r"\(").replace("[", r"\[")):
        ModelConfig.from_dict(raw)


def test_missing_folder_and_non_checkpoint(tmp_path):
    with pytest.raises(QvlError, match="does not exist"):
        ModelConfig.from_dir(tmp_path / "nope")
    with pytest.raises(QvlError, match="expected config.json"):
        ModelConfig.from_dir(tmp_path)
