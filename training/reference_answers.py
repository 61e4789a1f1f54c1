"""Greedy replies from transformers' own model (the PyTorch fp32 column of the accuracy table)."""
from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

import torch

from qvl_compile.runtime.evaluate import EvalCase
from qvl_compile.runtime.preprocess import load_image
from qvl_compile.tasks.shapes import Case
from qvl_compile.training.examples import ExampleEncoder, collate


def torch_answerer(model_dir: str | Path, max_new_tokens: int, threads: int = 0) -> Callable[[EvalCase], str]:
    """Same prompt ids and pixels as the pipeline (the runtime's preprocessing), then `model.generate`."""
    from qvl_compile.families.qwen3_vl.loaders import load_full_model

    if threads:
        torch.set_num_threads(threads)
    encoder = ExampleEncoder(model_dir)
    model = load_full_model(model_dir).eval()
    takes_types = "mm_token_type_ids" in inspect.signature(model.forward).parameters
    stop = [encoder.end_id, encoder.pad_id]

    @torch.no_grad()
    def answer(case: EvalCase) -> str:
        suite_case = Case(case.task, case.prompt, case.answer, tuple(load_image(p) for p in case.images),
                          None if case.video is None else tuple(load_image(p) for p in case.video))
        example = encoder.encode(suite_case, with_reply=False)
        batch = collate([example], encoder.pad_id, model.config.image_token_id, model.config.video_token_id)
        batch.pop("labels")
        if not takes_types:
            batch.pop("mm_token_type_ids")
        model.model.rope_deltas = None
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop,
                             pad_token_id=encoder.pad_id)
        return encoder.tokenizer.decode(out[0, batch["input_ids"].shape[1]:].tolist(), skip_special_tokens=True)

    return answer
