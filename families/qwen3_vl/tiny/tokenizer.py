"""A small byte-level BPE tokenizer with Qwen3-VL's special tokens and chat template.

Trained deterministically on an embedded corpus, so the embedded default model is self-contained
(no hub). The special tokens keep Qwen's order; their ids follow the learned vocabulary.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

# Qwen2/Qwen3 special tokens, in the order the released vocabulary lists them (ids 151643..151668).
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>",
)
# Tokens the tokenizer marks as special (skipped when decoding); the rest are added but not special.
_NON_SPECIAL = {"<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"}
# Qwen2's pre-tokenizer split pattern (contractions, letters, single digits, punctuation, spaces).
_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BASE_VOCAB_SIZE = 1000
RELEASED_FIRST_SPECIAL_ID = 151643  # <|endoftext|> in the released Qwen2/Qwen3 vocabulary


def _package_text(name: str) -> str:
    return resources.files("qvl_compile.families.qwen3_vl.tiny").joinpath(name).read_text()


def build_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BASE_VOCAB_SIZE,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    lines = _package_text("corpus.txt").splitlines()
    tok.train_from_iterator(lines, trainer=trainer)
    tok.add_special_tokens(
        [AddedToken(t, special=t not in _NON_SPECIAL, normalized=False) for t in SPECIAL_TOKENS]
    )
    return tok


def build_released_size_tokenizer(vocab_size: int) -> Tokenizer:
    """The tiny tokenizer's BPE with the released layout: unreachable filler entries pad the learned vocabulary
    to RELEASED_FIRST_SPECIAL_ID, so every special token sits at its released id (<|endoftext|> 151643,
    <|image_pad|> 151655, ...), and reserved added tokens fill the ids up to the model's `vocab_size`.
    Text still encodes with the small learned vocabulary; a random model's filler ids decode to their names."""
    base = build_tokenizer()
    state = json.loads(base.to_str())["model"]
    vocab = {token: index for token, index in state["vocab"].items() if index < BASE_VOCAB_SIZE}
    vocab |= {f"<|filler_{i}|>": i for i in range(len(vocab), RELEASED_FIRST_SPECIAL_ID)}
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = base.normalizer, base.pre_tokenizer, base.decoder
    tok.add_special_tokens([AddedToken(t, special=t not in _NON_SPECIAL, normalized=False) for t in SPECIAL_TOKENS])
    reserved = vocab_size - tok.get_vocab_size(with_added_tokens=True)
    tok.add_tokens([AddedToken(f"<|reserved_{i}|>", special=False, normalized=False) for i in range(reserved)])
    return tok


def special_token_ids(tok: Tokenizer) -> dict[str, int]:
    return {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}


def write_tokenizer(tok: Tokenizer, out_dir: Path, model_max_length: int) -> None:
    """tokenizer.json, vocab.json + merges.txt, tokenizer_config.json and chat_template.jinja."""
    tok.save(str(out_dir / "tokenizer.json"))
    tok.model.save(str(out_dir))  # vocab.json, merges.txt (what the slow Qwen2Tokenizer reads)
    template = _package_text("chat_template.jinja")
    (out_dir / "chat_template.jinja").write_text(template)
    ids = special_token_ids(tok)
    added = {
        str(ids[t]): {
            "content": t, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": t not in _NON_SPECIAL,
        }
        for t in SPECIAL_TOKENS
    }
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": [t for t in SPECIAL_TOKENS[1:14]],
        "bos_token": None,
        "chat_template": template,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": model_max_length,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
