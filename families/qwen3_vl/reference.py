"""transformers' `Qwen3VLForConditionalGeneration` as the decoder oracle, on either transformers line.

A forward pre-hook on the language model captures exactly what transformers feeds its text stack
(merged embeddings, 3-row M-RoPE positions, visual mask, DeepStack features), so the exported decoder
can be given the same visual features and positions and compared logit for logit.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class MultimodalPrompt:
    input_ids: torch.Tensor  # [1, S]
    image_grid_thw: torch.Tensor | None = None  # [images, 3]
    pixel_values: torch.Tensor | None = None
    video_grid_thw: torch.Tensor | None = None  # [videos, 3]
    pixel_values_videos: torch.Tensor | None = None
    media_grid_thw: list = field(default_factory=list)  # every grid row in prompt order (the vision call's order)


def build_prompt(config, parts: list, seed: int = 0) -> MultimodalPrompt:
    """parts: ("text", n) for n random text tokens, ("image", (1, h, w)) or ("video", (t, h, w)), in order.

    Placeholders are laid out as Qwen3-VL's processor lays them out: one pad per merged patch; a video
    becomes one group per temporal patch (timestamp text, vision_start, pads, vision_end). Text tokens
    are random ids below the special tokens, so no tokenizer is needed (random-weight checkpoints have none).
    """
    rng = np.random.default_rng(seed)
    vision = config.vision_config
    patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2  # row length of pixel_values
    merge_unit = vision.spatial_merge_size**2
    text_vocab = min(config.vision_start_token_id, config.image_token_id, config.video_token_id)
    ids, images, videos, media = [], [], [], []

    def text(n):
        ids.extend(int(i) for i in rng.integers(0, text_vocab, n))

    for kind, value in parts:
        if kind == "text":
            text(value)
            continue
        t, h, w = value
        per_frame = h * w // merge_unit
        media.append((t, h, w))
        pad = config.image_token_id if kind == "image" else config.video_token_id
        (images if kind == "image" else videos).append((t, h, w))
        for _ in range(1 if kind == "image" else t):
            if kind == "video":
                text(3)  # the "<T seconds>" timestamp before each temporal patch
            count = per_frame * (t if kind == "image" else 1)
            ids.extend([config.vision_start_token_id, *[pad] * count, config.vision_end_token_id])

    def pixels(grids):
        if not grids:
            return None, None
        rows = sum(t * h * w for t, h, w in grids)
        return (torch.from_numpy(rng.uniform(-1, 1, (rows, patch_dim)).astype(np.float32)),
                torch.tensor(grids, dtype=torch.int64))

    pixel_values, image_grid = pixels(images)
    video_values, video_grid = pixels(videos)
    return MultimodalPrompt(torch.tensor([ids]), image_grid, pixel_values, video_grid, video_values, media)


def with_token_types(model, kwargs: dict) -> dict:
    """`kwargs` plus `mm_token_type_ids` (1 image pad, 2 video pad) when the model takes them (transformers 5.x)."""
    if "mm_token_type_ids" in inspect.signature(model.forward).parameters:
        ids, config = kwargs["input_ids"], model.config
        kwargs["mm_token_type_ids"] = ((ids == config.image_token_id).long()
                                       + 2 * (ids == config.video_token_id).long())
    return kwargs


@dataclass
class TextStackInputs:
    position_ids: torch.Tensor  # [3, B, S] (the M-RoPE rows)
    visual_mask: torch.Tensor | None  # [B, S]
    deepstack: torch.Tensor | None  # [D, V, H]
    inputs_embeds: torch.Tensor  # [B, S, H]


class TextStackRecorder:
    """Records the language model's inputs on every forward of `model`."""

    def __init__(self, model):
        self.calls: list[TextStackInputs] = []
        self._handle = model.model.language_model.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        pos = kwargs.get("position_ids")
        embeds = kwargs["inputs_embeds"]
        if pos is None:  # text only: the text model counts on from the cache length on all three rows
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            start = 0 if cache is None else cache.get_seq_length()
            pos = torch.arange(start, start + embeds.shape[1]).view(1, 1, -1).expand(3, embeds.shape[0], -1)
        if pos.ndim == 3 and pos.shape[0] == 4:  # 5.x prepends the plain text positions
            pos = pos[1:]
        deep = kwargs.get("deepstack_visual_embeds")
        self.calls.append(TextStackInputs(
            position_ids=pos.detach().clone(),
            visual_mask=None if kwargs.get("visual_pos_masks") is None else kwargs["visual_pos_masks"].clone(),
            deepstack=None if deep is None else torch.stack(list(deep)).detach().clone(),
            inputs_embeds=kwargs["inputs_embeds"].detach().clone(),
        ))

    def close(self):
        self._handle.remove()


@torch.no_grad()
def run_reference(model, prompt: MultimodalPrompt, next_tokens: list[int]):
    """Prefill, then one cached step per token of `next_tokens` (teacher forcing).

    Returns (logits per call: [1, S, vocab] then [1, 1, vocab] ..., recorded text-stack inputs).
    """
    recorder = TextStackRecorder(model)
    kwargs = dict(input_ids=prompt.input_ids, use_cache=True)
    for name in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"):
        if getattr(prompt, name) is not None:
            kwargs[name] = getattr(prompt, name)
    with_token_types(model, kwargs)
    try:
        model.model.rope_deltas = None
        out = model(**kwargs)
        logits = [out.logits]
        cache = getattr(out, "cache", None) or out.past_key_values
        length = prompt.input_ids.shape[1]
        cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        for token in next_tokens:
            step = {"input_ids": torch.tensor([[token]]), cache_kw: cache, "use_cache": True,
                    "cache_position": torch.tensor([length])}
            out = model(**step)
            logits.append(out.logits)
            cache = getattr(out, "cache", None) or out.past_key_values
            length += 1
    finally:
        recorder.close()
    return logits, recorder.calls
