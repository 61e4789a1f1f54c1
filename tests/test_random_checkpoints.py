"""Random real-size checkpoints are written as released ones are: sharded safetensors with an index,
tensor by tensor. Checked on the tiny architecture with small shards (the real sizes are in -m slow)."""
import json

import pytest
import torch
from safetensors.torch import load_file

from qvl_compile.export.checkpoint_files import INDEX_NAME, TensorSpec, load_tensors, weight_files, write_sharded
from qvl_compile.families.qwen3_vl.fixtures import _parameter_shapes, write_random


def _specs_and_maker():
    tensors = {f"t{i}": torch.full((256,), float(i)) for i in range(5)}  # 1 KiB each in float32
    tensors["half"] = torch.linspace(-3, 3, 96).to(torch.bfloat16).reshape(4, 24)
    specs = [TensorSpec(name, tuple(t.shape), t.dtype) for name, t in tensors.items()]
    return tensors, specs, lambda spec: tensors[spec.name]


def test_writer_shards_by_size_and_indexes_every_tensor(tmp_path):
    tensors, specs, make = _specs_and_maker()
    files = write_sharded(tmp_path, specs, make, max_shard_bytes=2048)
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    assert [f.name for f in files] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert sorted(index["weight_map"]) == sorted(tensors)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    for name, shard in index["weight_map"].items():  # read back by safetensors itself
        loaded = load_file(str(tmp_path / shard))[name]
        assert loaded.dtype == tensors[name].dtype and torch.equal(loaded, tensors[name])
    assert weight_files(tmp_path) == files  # the export side reads it, size check included


def test_a_checkpoint_that_fits_one_shard_is_plain_model_safetensors(tmp_path):
    tensors, specs, make = _specs_and_maker()
    write_sharded(tmp_path, specs, make, max_shard_bytes=1 << 20)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    assert {k: torch.equal(v, tensors[k]) for k, v in load_file(str(tmp_path / "model.safetensors")).items()} == \
        {k: True for k in tensors}


def test_a_tensor_unlike_its_plan_is_refused(tmp_path):
    _, specs, _ = _specs_and_maker()
    with pytest.raises(ValueError, match=r"t0: made \(3,\) torch.float32, planned \(256,\) torch.float32"):
        write_sharded(tmp_path, specs, lambda spec: torch.zeros(3), max_shard_bytes=1 << 20)


def test_random_checkpoint_is_sharded_and_loads(tiny_dir, tmp_path):
    out = write_random(tiny_dir, tmp_path / "random", seed=1, shard_bytes=256 << 10)
    raw = json.loads((out / "config.json").read_text())
    expected = _parameter_shapes(raw, vision_only=False)
    shards = weight_files(out)
    assert len(shards) > 3 and (out / INDEX_NAME).is_file()
    tensors = load_tensors(out, "")
    assert {k: tuple(v.shape) for k, v in tensors.items()} == expected
    assert all(torch.isfinite(t.float()).all() for t in tensors.values())
    from qvl_compile.families.qwen3_vl.loaders import load_full_model

    model = load_full_model(out)  # transformers' own sharded loading
    name = "model.language_model.layers.1.mlp.up_proj.weight"
    assert torch.equal(model.state_dict()[name], tensors[name].float())


@pytest.mark.parametrize("shape", [(300, 7), (4000,), (64, 3, 2)])
def test_chunked_draws_keep_the_scale_of_each_kind(shape, monkeypatch):
    from qvl_compile.families.qwen3_vl import fixtures

    monkeypatch.setattr(fixtures, "CHUNK_ELEMENTS", 50)  # several chunks even for small tensors
    gen = torch.Generator().manual_seed(0)
    weight = fixtures._random_in_chunks("layers.0.mlp.up_proj.weight", shape, torch.float32, gen)
    norm = fixtures._random_in_chunks("layers.0.input_layernorm.weight", shape, torch.float32, gen)
    fan_in = shape[0] if len(shape) == 1 else int(torch.tensor(shape[1:]).prod())
    assert weight.shape == shape and abs(float(weight.std()) * fan_in**0.5 - 1) < 0.25
    if len(shape) == 1:
        assert abs(float(norm.mean()) - 1) < 0.1


def test_released_architectures_get_a_tokenizer_with_the_released_ids(tmp_path):
    """The 2B architecture, vision weights only: its tokenizer puts every special token at its released id
    and has vocab_size entries; the chat template and sampling defaults come with it."""
    from tokenizers import Tokenizer

    from qvl_compile.families.qwen3_vl.fixtures import arch_dir

    out = write_random(arch_dir("2b"), tmp_path / "2b", vision_only=True)
    config = json.loads((out / "config.json").read_text())
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.get_vocab_size(with_added_tokens=True) == config["text_config"]["vocab_size"]
    assert tok.token_to_id("<|endoftext|>") == 151643  # Qwen's published special-token ids
    assert tok.token_to_id("<|image_pad|>") == config["image_token_id"] == 151655
    assert tok.token_to_id("<|video_pad|>") == config["video_token_id"] == 151656
    assert (out / "chat_template.jinja").is_file() and (out / "generation_config.json").is_file()
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [151645, 151643]
