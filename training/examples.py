"""Suite cases -> model inputs, with the runtime's own preprocessing, chat template and placeholder expansion,
so the model is trained on exactly what the torch-free pipeline will feed it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from qvl_compile.registry import family_named
from qvl_compile.runtime.preprocess import ImageProcessorConfig, preprocess_image
from qvl_compile.runtime.prompt import load_chat_template, user_message
from qvl_compile.runtime.video import Video, VideoProcessorConfig, preprocess_video
from qvl_compile.tasks.shapes import Case

IGNORE = -100  # label of positions that carry no loss


@dataclass(frozen=True)
class Example:
    task: str
    input_ids: np.ndarray  # [S]
    labels: np.ndarray  # [S]: the reply's tokens and <|im_end|>, IGNORE elsewhere
    image_rows: list[np.ndarray]  # per image [patches, 1536]
    image_grids: list[tuple[int, int, int]]
    video_rows: list[np.ndarray]
    video_grids: list[tuple[int, int, int]]


class ExampleEncoder:
    def __init__(self, checkpoint: str | Path):
        import json

        checkpoint = Path(checkpoint)
        config = json.loads((checkpoint / "config.json").read_text())
        self.family = family_named(config["model_type"])
        self.merge_size = int(config["vision_config"]["spatial_merge_size"])
        self.tokenizer = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
        self.template = load_chat_template(checkpoint)
        self.image_config = ImageProcessorConfig.from_dir(checkpoint)
        self.video_config = VideoProcessorConfig.from_dir(checkpoint)
        self.end_id = self.tokenizer.token_to_id("<|im_end|>")
        self.pad_id = self.tokenizer.token_to_id("<|endoftext|>")

    def encode(self, case: Case, with_reply: bool = True) -> Example:
        """The prompt as the pipeline builds it, then (with_reply) the reply's tokens and <|im_end|>, labelled."""
        image_rows, image_grids, video_rows, video_grids, stamps = [], [], [], [], []
        for image in case.images:
            rows, grid = preprocess_image(image, self.image_config)
            image_rows.append(rows), image_grids.append(grid)
        if case.video is not None:
            rows, grid, times = preprocess_video(Video.from_images(list(case.video)), self.video_config)
            video_rows.append(rows), video_grids.append(grid), stamps.append(times)
        messages = user_message(case.prompt, len(image_grids), len(video_grids))
        text = self.template.render(messages=messages, add_generation_prompt=True)
        text = self.family.expand_prompt(text, image_grids, video_grids, stamps, self.merge_size)
        prompt = self.tokenizer.encode(text, add_special_tokens=False).ids
        reply = self.tokenizer.encode(case.answer, add_special_tokens=False).ids + [self.end_id] if with_reply else []
        ids = np.asarray(prompt + reply, np.int64)
        labels = np.asarray([IGNORE] * len(prompt) + reply, np.int64)
        return Example(case.task, ids, labels, image_rows, image_grids, video_rows, video_grids)


def collate(examples: list[Example], pad_id: int, image_token_id: int, video_token_id: int) -> dict:
    """Right-padded batch in transformers' Qwen3-VL forward signature (mm_token_type_ids for 5.x)."""
    length = max(len(e.input_ids) for e in examples)
    ids = np.full((len(examples), length), pad_id, np.int64)
    labels = np.full((len(examples), length), IGNORE, np.int64)
    mask = np.zeros((len(examples), length), np.int64)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        ids[row, :n], labels[row, :n], mask[row, :n] = example.input_ids, example.labels, 1
    batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
             "labels": torch.from_numpy(labels)}
    images = [r for e in examples for r in e.image_rows]
    if images:
        batch["pixel_values"] = torch.from_numpy(np.concatenate(images))
        batch["image_grid_thw"] = torch.tensor([g for e in examples for g in e.image_grids], dtype=torch.int64)
    videos = [r for e in examples for r in e.video_rows]
    if videos:
        batch["pixel_values_videos"] = torch.from_numpy(np.concatenate(videos))
        batch["video_grid_thw"] = torch.tensor([g for e in examples for g in e.video_grids], dtype=torch.int64)
    token_types = (batch["input_ids"] == image_token_id).long() + 2 * (batch["input_ids"] == video_token_id).long()
    batch["mm_token_type_ids"] = token_types
    return batch
