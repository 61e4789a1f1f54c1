"""The export -> runtime contract: typed manifest, format version, the tested migration from format 1.

Torch-free: it reads the exports named by QVL_GOLDEN_EXPORTS (or builds them where torch is installed).
"""
import json
import shutil

import pytest

from qvl_compile.contract import CPU_FP32, FORMAT, KV_GROWN, KV_IN_PLACE, DecoderArtifact, VisionArtifact, parse_manifest
from qvl_compile.errors import QvlError
from qvl_compile.manifest import read_manifest
from qvl_compile.runtime.pipeline import Pipeline

pytestmark = pytest.mark.torch_free


def as_format_2(raw: dict) -> dict:
    """What format 2 wrote: no prefill graph record in the decoder."""
    artifacts = {name: {k: v for k, v in artifact.items() if k != "prefill"} for name, artifact in raw["artifacts"].items()}
    return dict(raw, format="qvl-compile/2", artifacts=artifacts)


def as_format_1(raw: dict) -> dict:
    """What qvl-compile 0.1 wrote: no family, no target, no cache mode; text context inside model.text."""
    raw = as_format_2(raw)
    old = {k: v for k, v in raw.items() if k != "family"}
    old["format"] = "qvl-compile/1"
    old["artifacts"] = {name: {k: v for k, v in artifact.items() if k not in ("target", "kv_cache")}
                        for name, artifact in raw["artifacts"].items()}
    old["options"] = {k: v for k, v in raw["options"].items() if k != "target"}
    model = {k: v for k, v in raw["model"].items() if k not in ("model_type", "max_position_embeddings")}
    old["model"] = model | {"text": model["text"] | {"max_position_embeddings": raw["model"]["max_position_embeddings"]}}
    return old


@pytest.fixture(scope="module")
def fp32_raw(golden_exports):
    return json.loads((golden_exports["fp32"] / "manifest.json").read_text())


def test_the_manifest_parses_into_typed_artifacts(golden_exports):
    manifest = read_manifest(golden_exports["fp32"])
    assert manifest.format == FORMAT and manifest.family == "qwen3_vl"
    vision, decoder = manifest.artifacts["vision"], manifest.artifacts["decoder"]
    assert isinstance(vision, VisionArtifact) and isinstance(decoder, DecoderArtifact)
    assert vision.target == CPU_FP32 and decoder.kv_cache == KV_IN_PLACE
    assert vision.graph == "vision.onnx" and [i.name for i in vision.inputs] == ["pixel_values", "grid_thw"]
    past_keys = decoder.shape.cache_names[0]
    assert [i.name for i in decoder.inputs][6:6 + decoder.num_layers] == past_keys
    assert parse_manifest(manifest.to_json()) == manifest  # what export writes, the runtime reads back


def test_format_1_is_migrated(fp32_raw):
    migrated = parse_manifest(as_format_1(fp32_raw))
    assert migrated == parse_manifest(fp32_raw)


def test_format_2_is_migrated(fp32_raw):
    old = as_format_2(fp32_raw)
    assert "prefill" not in old["artifacts"]["decoder"]
    migrated = parse_manifest(old)
    assert migrated == parse_manifest(fp32_raw) and migrated.artifacts["decoder"].prefill == {}


def test_format_1_without_attention_mask_migrates_to_the_grown_cache(fp32_raw):
    old = as_format_1(fp32_raw)
    decoder = old["artifacts"]["decoder"]
    decoder["inputs"] = [i for i in decoder["inputs"] if i["name"] != "attention_mask"]
    assert parse_manifest(old).artifacts["decoder"].kv_cache == KV_GROWN


def test_a_format_1_folder_generates_the_same_tokens(golden_exports, fp32_raw, tmp_path):
    folder = tmp_path / "old"
    shutil.copytree(golden_exports["fp32"], folder)
    (folder / "manifest.json").write_text(json.dumps(as_format_1(fp32_raw)))
    prompt = dict(prompt="Describe the picture.", max_new_tokens=6, greedy=True)
    assert Pipeline(folder).generate(**prompt) == Pipeline(golden_exports["fp32"]).generate(**prompt)


@pytest.mark.parametrize(("found", "message"), [
    ("qvl-compile/0", r"format 'qvl-compile/0' is too old to read; re-export with qvl-compile export"),
    ("qvl-compile/99", r"format 'qvl-compile/99' is newer than this qvl-compile reads \('qvl-compile/3'\); upgrade"),
    ("something-else", r"expected format 'qvl-compile/3', got 'something-else'"),
    (None, r"expected format 'qvl-compile/3', got None"),
])
def test_other_formats_are_refused_in_one_line(fp32_raw, found, message):
    with pytest.raises(QvlError, match=message) as caught:
        parse_manifest(dict(fp32_raw, format=found), where="out/manifest.json")
    assert "\n" not in str(caught.value) and str(caught.value).startswith("out/manifest.json: ")


def test_an_unknown_family_is_refused_in_one_line(golden_exports, fp32_raw, tmp_path):
    folder = tmp_path / "other"
    shutil.copytree(golden_exports["fp32"], folder)
    (folder / "manifest.json").write_text(json.dumps(dict(fp32_raw, family="qwen9_vl")))
    with pytest.raises(QvlError, match="model family 'qwen9_vl' is not supported; expected one of qwen3_vl"):
        Pipeline(folder)


# The fields of format qvl-compile/3. Changing a contract dataclass without bumping FORMAT_VERSION (and adding
# a migration or a refusal for the old format) fails here.
FORMAT_3_FIELDS = {
    "Manifest": ["format", "family", "source", "model", "versions", "options", "artifacts", "assets"],
    "VisionArtifact": ["files", "inputs", "outputs", "opset", "target", "quant", "export_check", "stage_seconds",
                       "source_sha256", "patch_dim", "spatial_merge_size", "out_hidden_size", "num_deepstack", "fused",
                       "export_grid", "tolerance"],
    "DecoderArtifact": ["files", "inputs", "outputs", "opset", "target", "quant", "export_check", "stage_seconds",
                        "source_sha256", "num_layers", "num_key_value_heads", "head_dim", "hidden_size", "vocab_size",
                        "num_deepstack", "image_token_id", "video_token_id", "kv_cache", "prefill"],
    "Target": ["io_dtype", "execution_provider"],
    "FileRecord": ["path", "bytes", "sha256"],
    "TensorRecord": ["name", "dtype", "shape"],
}


def test_the_contract_changes_only_with_its_version():
    from dataclasses import fields

    from qvl_compile import contract

    assert contract.FORMAT_VERSION == 3, "a new format: record its fields here and test its migration"
    found = {name: [f.name for f in fields(getattr(contract, name))] for name in FORMAT_3_FIELDS}
    assert found == FORMAT_3_FIELDS


@pytest.mark.parametrize("damage", ["drop opset", "extra file field", "drop family"])
def test_a_damaged_manifest_is_refused_in_one_line(fp32_raw, damage):
    raw = json.loads(json.dumps(fp32_raw))
    if damage == "drop opset":
        del raw["artifacts"]["decoder"]["opset"]
    elif damage == "extra file field":
        raw["artifacts"]["vision"]["files"][0]["colour"] = "blue"
    else:
        del raw["family"]
    with pytest.raises(QvlError, match="re-export the folder") as caught:
        parse_manifest(raw, where="out/manifest.json")
    assert "\n" not in str(caught.value)
