"""The torch-free pipeline: images, a video and a prompt in, generated tokens out (streamed).

    pipe = Pipeline("out")                      # sessions are created once and reused
    for token_id, text_so_far in pipe.stream("Describe.", images=["cat.png"]):
        ...
    result = pipe.generate("Describe.", images=["cat.png"], max_new_tokens=64, greedy=True)

Calls may overlap: threads sharing one Pipeline, or several open streams in one thread. Everything a call
changes (its KV cache, IO binding, sampler state) is its own; what they share is read-only during a call
(onnxruntime sessions, whose run() is thread-safe, the tokenizer and the configs).
"""
from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image
from tokenizers import Tokenizer

from qvl_compile.errors import QvlError
from qvl_compile.manifest import check_files, read_manifest
from qvl_compile.registry import family_named
from qvl_compile.runtime.context import check_fits
from qvl_compile.runtime.conversation import single_turn, split_media
from qvl_compile.runtime.decoder import TextDecoder
from qvl_compile.runtime.preprocess import ImageProcessorConfig, load_image, preprocess_image, to_rgb
from qvl_compile.runtime.prompt import RESERVED_TOKENS, load_chat_template
from qvl_compile.runtime.sampling import SamplingConfig, next_token
from qvl_compile.runtime.stopping import check_stop_strings, visible_text
from qvl_compile.runtime.video import Video, VideoProcessorConfig, preprocess_video, read_video
from qvl_compile.runtime.vision import VisionEncoder


@dataclass(frozen=True)
class PreparedPrompt:
    input_ids: np.ndarray  # [S]
    position_ids: np.ndarray  # [3, S]
    rope_delta: int
    pixel_values: np.ndarray | None  # [num_patches, patch_dim], media in prompt order
    grid_thw: np.ndarray | None  # [num_media, 3]
    media_rows: tuple[np.ndarray, ...] = ()  # per medium, its rows of pixel_values (for per-medium caching)


@dataclass(frozen=True)
class GenerationResult:
    text: str
    token_ids: list[int]


class Pipeline:
    def __init__(self, export_dir: str | Path, providers: list[str] | None = None, intra_op_threads: int = 0,
                 verify_hashes: bool = False):
        self.export_dir = Path(export_dir)
        manifest = read_manifest(self.export_dir)
        check_files(self.export_dir, manifest.assets, hashes=verify_hashes)
        self.family = family_named(manifest.family)  # its prompt and position strategies
        model = manifest.model
        self.image_token_id, self.video_token_id = int(model["image_token_id"]), int(model["video_token_id"])
        self.merge_size = int(model["vision"]["spatial_merge_size"])
        self.decoder = TextDecoder.from_export(self.export_dir, providers, intra_op_threads, verify_hashes)
        self.vision = VisionEncoder.from_export(self.export_dir, providers, intra_op_threads, verify_hashes)
        tokenizer_path = self.export_dir / "tokenizer.json"
        if not tokenizer_path.is_file():
            raise QvlError(f"{self.export_dir}: expected tokenizer.json (copied from the checkpoint at export)")
        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self.template = load_chat_template(self.export_dir)
        self.image_config = ImageProcessorConfig.from_dir(self.export_dir)
        self.sampling = SamplingConfig.from_dir(self.export_dir)
        self.max_context = manifest.max_context
        reserved = [self.tokenizer.token_to_id(token) for token in RESERVED_TOKENS]
        self.never_generated = np.asarray([i for i in reserved if i is not None], np.int64)  # media placeholders

    def prepare(self, prompt: str, images=(), video=None, system: str | None = None) -> PreparedPrompt:
        """One user turn (images, then the video, then the text), after an optional system prompt."""
        return self.prepare_messages(single_turn(prompt, images, video, system))

    def prepare_messages(self, messages: list[dict]) -> PreparedPrompt:
        """Render the chat template, expand placeholders, preprocess media, compute M-RoPE positions."""
        rendered, media = split_media(messages)
        rows, grids, image_grids, video_grids, stamps = [], [], [], [], []
        for item in media:
            if item.kind == "image":
                image = item.source
                pixels, grid = preprocess_image(to_rgb(image) if isinstance(image, Image.Image) else load_image(image),
                                                self.image_config)
                image_grids.append(grid)
            else:
                clip = item.source if isinstance(item.source, Video) else read_video(item.source, self.video_config)
                pixels, grid, times = preprocess_video(clip, self.video_config)
                video_grids.append(grid), stamps.append(times)
            rows.append(pixels), grids.append(grid)
        text = self.template.render(messages=rendered, add_generation_prompt=True)
        text = self.family.expand_prompt(text, image_grids, video_grids, stamps, self.merge_size)
        ids = np.asarray(self.tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int64)
        positions, delta = self.family.position_ids(ids, self.image_token_id, self.video_token_id, image_grids,
                                                    video_grids, self.merge_size)
        return PreparedPrompt(ids, positions, delta, np.concatenate(rows) if rows else None,
                              np.asarray(grids, np.int64) if grids else None, tuple(rows))

    @functools.cached_property
    def video_config(self) -> VideoProcessorConfig:
        """Read on the first video, once: image-only deployments never need the file."""
        return VideoProcessorConfig.from_dir(self.export_dir)

    def check_context(self, prepared: PreparedPrompt, max_new_tokens: int) -> None:
        check_fits(len(prepared.input_ids), max_new_tokens, self.max_context)

    def stream(self, prompt: str, images=(), video=None, max_new_tokens: int = 128, greedy: bool = False,
               seed: int | None = None, sampling: SamplingConfig | None = None, system: str | None = None,
               stop=None) -> Iterator[tuple[int, str]]:
        """Yield (token id, reply text so far) for each generated token; stops at EOS, a stop string or
        max_new_tokens. Text that may still become a stop string is held back until it is decided."""
        return self.stream_messages(single_turn(prompt, images, video, system), max_new_tokens, greedy, seed, sampling,
                                    stop)

    def stream_messages(self, messages: list[dict], max_new_tokens: int = 128, greedy: bool = False,
                        seed: int | None = None, sampling: SamplingConfig | None = None,
                        stop=None) -> Iterator[tuple[int, str]]:
        """`stream` for a whole conversation (see runtime/conversation.py)."""
        cfg = sampling or self.sampling
        return self.stream_prepared(self.prepare_messages(messages), max_new_tokens, cfg.greedy() if greedy else cfg,
                                    seed, stop)

    def stream_prepared(self, prepared: PreparedPrompt, max_new_tokens: int, sampling: SamplingConfig,
                        seed: int | None = None, stop=None) -> Iterator[tuple[int, str]]:
        """`stream` for a prompt already prepared (its length is known before the first token)."""
        sampling.validate()
        stop = check_stop_strings(stop)
        self.check_context(prepared, max_new_tokens)
        return self._decode(prepared, max_new_tokens, sampling, seed, stop)

    def _decode(self, prepared: PreparedPrompt, max_new_tokens: int, cfg: SamplingConfig, seed: int | None,
                stop: tuple[str, ...]) -> Iterator[tuple[int, str]]:
        seq = len(prepared.input_ids)
        visual = deepstack = None
        if prepared.pixel_values is not None:
            out = self.vision(prepared.pixel_values, prepared.grid_thw)
            visual, deepstack = out.image_embeds, out.deepstack_embeds
        # Filled in place (no copy per token) unless the export predates the attention_mask input.
        cache = self.decoder.empty_cache(capacity=seq + max_new_tokens if self.decoder.supports_in_place else None)
        logits, cache = self.decoder.forward(prepared.input_ids[None], prepared.position_ids[:, None],
                                             cache, visual, deepstack)
        rng = np.random.default_rng(seed)
        history = list(prepared.input_ids)
        generated: list[int] = []
        next_position = seq + prepared.rope_delta
        for step in range(max_new_tokens):
            token = next_token(logits[0, -1], history, cfg, rng, self.never_generated)
            generated.append(token)
            history.append(token)
            decoded = self.tokenizer.decode(generated, skip_special_tokens=True)
            last = token in cfg.eos_token_ids or step == max_new_tokens - 1
            state = visible_text(decoded, stop, ended=last)
            yield token, state.text
            if last or state.finished:
                break
            position = np.full((3, 1, 1), next_position + step, np.int64)
            logits, cache = self.decoder.forward(np.array([[token]]), position, cache)

    def generate(self, prompt: str, images=(), video=None, max_new_tokens: int = 128, greedy: bool = False,
                 seed: int | None = None, sampling: SamplingConfig | None = None, system: str | None = None,
                 stop=None) -> GenerationResult:
        ids, shown = [], ""
        for token, so_far in self.stream(prompt, images, video, max_new_tokens, greedy, seed, sampling, system, stop):
            ids.append(token)
            shown = so_far
        return GenerationResult(shown, ids)


__all__ = ["Pipeline", "GenerationResult", "PreparedPrompt", "SamplingConfig", "replace"]
