"""Sizes of the embedded (trained) tiny model, derived from its packaged shapes/config.json (torch-free), so tests name
what a number means (`PATCH_DIM`) instead of repeating it (1536)."""
import json
from importlib import resources

from qvl_compile.families.qwen3_vl.config import parse_vision

RAW_CONFIG = json.loads(resources.files("qvl_compile.families.qwen3_vl.tiny").joinpath("shapes/config.json").read_text())
VISION = parse_vision(RAW_CONFIG["vision_config"])
PATCH_DIM = VISION.patch_dim  # row length of pixel_values: C * temporal_patch * patch * patch
MERGE_UNIT = VISION.merge_unit  # patches per merged token
OUT_HIDDEN = VISION.out_hidden_size
NUM_LAYERS = RAW_CONFIG["text_config"]["num_hidden_layers"]
