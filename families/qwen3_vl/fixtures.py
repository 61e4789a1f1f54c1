"""Write seeded random-weight Qwen3-VL checkpoints in the layout released checkpoints ship.

`write_tiny` writes the embedded default (small architecture, tokenizer, processors);
`write_random` takes any released architecture folder (config.json + preprocessor_config.json),
for real-size work without downloading weights. Weights are a pure function of (names, shapes, seed)
and regenerate bit-exactly.
"""
from __future__ import annotations

import copy
import json
import logging
import math
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import save_file

from qvl_compile.config import ModelConfig
from qvl_compile.errors import QvlError
from qvl_compile.export.atomic import atomic_output_dir
from qvl_compile.export.checkpoint_files import INDEX_NAME
from qvl_compile.families.qwen3_vl.tiny.tokenizer import (
    build_released_size_tokenizer,
    build_tokenizer,
    special_token_ids,
    write_tokenizer,
)

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _package_json(name: str) -> dict:
    return json.loads(resources.files("qvl_compile.families.qwen3_vl.tiny").joinpath(name).read_text())


def _parameter_shapes(raw_config: dict, vision_only: bool) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the checkpoint's tensors, from transformers' own model on the meta device."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    return model_parameter_shapes(Qwen3VLConfig, Qwen3VLForConditionalGeneration, raw_config, vision_only)


def model_parameter_shapes(config_class, model_class, raw_config: dict, vision_only: bool) -> dict[str, tuple[int, ...]]:
    """Names and shapes of `model_class`'s tensors built from `raw_config` on the meta device, as released
    checkpoints store them (no tied lm_head), sorted by name."""
    config = config_class(**copy.deepcopy(raw_config))
    with torch.device("meta"):
        model = model_class(config)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if raw_config.get("tie_word_embeddings", False):
        shapes.pop("lm_head.weight", None)  # released tied checkpoints do not store it
    if vision_only:
        shapes = {k: v for k, v in shapes.items() if k.startswith("model.visual.")}
    return dict(sorted(shapes.items()))


def _random_tensor(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    return _scaled(name, shape, torch.randn(shape, generator=gen, dtype=torch.float32))


def _scaled(name: str, shape: tuple[int, ...], values: torch.Tensor) -> torch.Tensor:
    """Scale chosen per kind so activations stay O(1) and every parameter matters to parity. `shape` is the
    whole tensor's (the fan-in), `values` all of it or a block of its rows."""
    is_norm = "norm" in name and name.endswith(".weight") and len(shape) == 1
    if is_norm:
        return 1.0 + 0.1 * values
    if name.endswith(".bias"):
        return 0.02 * values
    if name.endswith("pos_embed.weight"):
        return 0.5 * values
    if name.endswith("embed_tokens.weight"):
        return values
    # Fused MoE experts are a stack of [in, out] matrices (as released MoE checkpoints store them): fan-in shape[1].
    if ".experts." in name and len(shape) == 3:
        return values / math.sqrt(shape[1])
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    return values / math.sqrt(fan_in)


def write_weights(raw_config: dict, out_dir: Path, seed: int, vision_only: bool, parameter_shapes=None) -> None:
    """One model.safetensors of seeded random weights (`parameter_shapes(raw_config, vision_only)`: the family's
    tensor names and shapes; default Qwen3-VL's)."""
    dtype = _DTYPES[raw_config.get("dtype") or raw_config.get("torch_dtype") or "float32"]
    gen = torch.Generator().manual_seed(seed)
    tensors = {
        name: _random_tensor(name, shape, gen).to(dtype).contiguous()
        for name, shape in (parameter_shapes or _parameter_shapes)(raw_config, vision_only).items()
    }
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    log.info("wrote %d tensors (%s, seed %d)", len(tensors), dtype, seed)


# Rows of a large tensor drawn at once by the streaming writer: bounds its fp32 scratch to 64 MiB.
CHUNK_ELEMENTS = 16 << 20
# Shard size of real-size random checkpoints (released checkpoints use about 4-5 GB per shard).
SHARD_BYTES = 4 << 30


def _random_in_chunks(name: str, shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """`_random_tensor` drawn block of rows by block of rows straight into `dtype`: the fp32 scratch never
    exceeds CHUNK_ELEMENTS (the 8B embedding alone is 2.5 GB in fp32)."""
    out = torch.empty(shape, dtype=dtype)
    row = math.prod(shape[1:]) if len(shape) > 1 else 1
    step = max(1, CHUNK_ELEMENTS // row)
    for start in range(0, shape[0] if shape else 1, step):
        block = out[start:start + step] if shape else out
        block.copy_(_scaled(name, shape, torch.randn(block.shape, generator=gen, dtype=torch.float32)))
    return out


def _stream_weights(raw_config: dict, out_dir: Path, seed: int, vision_only: bool, shard_bytes: int,
                    parameter_shapes=None) -> None:
    """Real-size random weights, made tensor by tensor and streamed into shards: memory holds one tensor."""
    from qvl_compile.export.checkpoint_files import TensorSpec, write_sharded

    dtype = _DTYPES[raw_config.get("dtype") or raw_config.get("torch_dtype") or "float32"]
    gen = torch.Generator().manual_seed(seed)
    shapes = (parameter_shapes or _parameter_shapes)(raw_config, vision_only)
    specs = [TensorSpec(name, shape, dtype) for name, shape in shapes.items()]
    files = write_sharded(out_dir, specs, lambda spec: _random_in_chunks(spec.name, spec.shape, dtype, gen), shard_bytes)
    log.info("wrote %d tensors (%s, seed %d) in %d file(s)", len(specs), dtype, seed, len(files))


def _generation_config(ids: dict[str, int]) -> dict:
    # Qwen3-VL Instruct's released sampling defaults.
    return {
        "bos_token_id": ids["<|endoftext|>"],
        "do_sample": True,
        "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
        "pad_token_id": ids["<|endoftext|>"],
        "repetition_penalty": 1.0,
        "temperature": 0.7,
        "top_k": 20,
        "top_p": 0.8,
        "transformers_version": "4.57.0.dev0",
    }


# The trained embedded model (docs/training.md): architecture, processor sizes and weights in tiny/shapes/.
TRAINED = "shapes"


def _tiny_config(tok, variant: str | None) -> dict:
    """The embedded config (`variant` None: the seeded random model's) with the tokenizer's ids filled in."""
    return with_tokenizer_ids(_package_json(f"{variant}/config.json" if variant else "config.json"), tok)


def with_tokenizer_ids(raw: dict, tok) -> dict:
    """A tiny config with the tiny tokenizer's vocabulary size and special-token ids filled in, validated."""
    ids = special_token_ids(tok)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    raw["text_config"]["vocab_size"] = int(math.ceil(vocab / 64) * 64)
    raw["image_token_id"] = ids["<|image_pad|>"]
    raw["video_token_id"] = ids["<|video_pad|>"]
    raw["vision_start_token_id"] = ids["<|vision_start|>"]
    raw["vision_end_token_id"] = ids["<|vision_end|>"]
    ModelConfig.from_dict(raw, source="embedded tiny config")  # validate before writing anything
    return raw


def write_tiny_layout(tmp: Path, tok, raw: dict, variant: str | None) -> None:
    """Everything but the weights: config, generation defaults, processors, tokenizer and template."""
    (tmp / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
    (tmp / "generation_config.json").write_text(json.dumps(_generation_config(special_token_ids(tok)), indent=2) + "\n")
    for name in ("preprocessor_config.json", "video_preprocessor_config.json"):
        (tmp / name).write_text(json.dumps(_package_json(f"{variant}/{name}" if variant else name), indent=2) + "\n")
    write_tokenizer(tok, tmp, model_max_length=raw["text_config"]["max_position_embeddings"])


def trained_weights_path() -> Path:
    return Path(str(resources.files("qvl_compile.families.qwen3_vl.tiny").joinpath(f"{TRAINED}/model.safetensors")))


def write_tiny(out_dir: str | Path, seed: int = 0, force: bool = False, trained: bool = True) -> Path:
    """The embedded default: the model trained on the shapes suite (`trained=False`: the tiny seeded random
    model, whose weights are a pure function of `seed`), with tokenizer and processor configs."""
    tok = build_tokenizer()
    variant = TRAINED if trained else None
    raw = _tiny_config(tok, variant)
    if trained and not trained_weights_path().is_file():
        raise QvlError(f"the trained weights {trained_weights_path()} are missing from this installation")
    with atomic_output_dir(out_dir, force=force, marker="config.json") as tmp:
        write_tiny_layout(tmp, tok, raw, variant)
        if trained:
            (tmp / "model.safetensors").write_bytes(trained_weights_path().read_bytes())
        else:
            write_weights(raw, tmp, seed, vision_only=False)
    return Path(out_dir)


def write_tiny_untrained(out_dir: str | Path, seed: int = 0, force: bool = False) -> Path:
    """The trained model's architecture with transformers' own initialisation: where training starts."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    tok = build_tokenizer()
    raw = _tiny_config(tok, TRAINED)
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(Qwen3VLConfig(**copy.deepcopy(raw)))
    tensors = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    with atomic_output_dir(out_dir, force=force, marker="config.json") as tmp:
        write_tiny_layout(tmp, tok, raw, TRAINED)
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    return Path(out_dir)


def arch_dir(arch: str) -> Path:
    """'2b' / '4b' / '8b' (released architectures shipped with the package) or a folder path."""
    name = f"qwen3-vl-{arch.lower()}"
    packaged = resources.files("qvl_compile.families.qwen3_vl.archs").joinpath(name)
    if packaged.is_dir():
        return Path(str(packaged))
    if Path(arch).is_dir():
        return Path(arch)
    raise QvlError(f"architecture {arch!r}: expected 2b, 4b, 8b or a folder with config.json")


def _write_released_size_tokenizer(raw: dict, folder: Path) -> None:
    """A tokenizer with the released special-token ids and `vocab_size` entries, its chat template and the
    released sampling defaults, so `generate` runs through the real CLI path at real size."""
    text = raw["text_config"]
    tok = build_released_size_tokenizer(int(text["vocab_size"]))
    ids = special_token_ids(tok)
    for key, token in (("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                       ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")):
        if key in raw and raw[key] != ids[token]:
            raise QvlError(f"config.json {key} is {raw[key]}, the released-layout tokenizer has {token} at {ids[token]}")
    write_tokenizer(tok, folder, model_max_length=int(text.get("max_position_embeddings", 32768)))
    if not (folder / "generation_config.json").is_file():
        (folder / "generation_config.json").write_text(json.dumps(_generation_config(ids), indent=2) + "\n")


def write_random(arch_dir: str | Path, out_dir: str | Path, seed: int = 0, vision_only: bool = False,
                 force: bool = False, shard_bytes: int = SHARD_BYTES, layers: int | None = None,
                 parameter_shapes=None) -> Path:
    """Random weights for a released architecture folder (config.json, preprocessor_config.json), written
    tensor by tensor into safetensors shards of at most `shard_bytes` with an index, as released, with a
    released-layout tokenizer unless the folder brings its own. `layers`: that many decoder layers instead of
    the architecture's (real width, reduced depth)."""
    arch_dir = Path(arch_dir)
    ModelConfig.from_dir(arch_dir)
    if not (arch_dir / "preprocessor_config.json").is_file():
        raise QvlError(f"{arch_dir}: expected preprocessor_config.json beside config.json")
    raw = json.loads((arch_dir / "config.json").read_text())
    if layers is not None:
        raw = with_decoder_layers(raw, layers)
    with atomic_output_dir(out_dir, force=force, marker="config.json") as tmp:
        for src in sorted([*arch_dir.glob("*.json"), *arch_dir.glob("*.jinja"), *arch_dir.glob("merges.txt")]):
            if src.name != INDEX_NAME:
                (tmp / src.name).write_bytes(src.read_bytes())
        if layers is not None:
            (tmp / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
        if not (tmp / "tokenizer.json").is_file():  # the released architectures ship none; an ARCH_DIR may
            _write_released_size_tokenizer(raw, tmp)
        _stream_weights(raw, tmp, seed, vision_only, shard_bytes, parameter_shapes)
    return Path(out_dir)


def with_decoder_layers(raw: dict, layers: int) -> dict:
    """The config with `layers` decoder layers (at least the DeepStack taps, which feed layers 0..D-1)."""
    deepstack = len(raw["vision_config"].get("deepstack_visual_indexes", ()))
    if not deepstack <= layers:
        raise QvlError(f"--layers: expected at least {deepstack} (the DeepStack taps), got {layers}")
    raw = copy.deepcopy(raw)
    raw["text_config"]["num_hidden_layers"] = int(layers)
    return raw
