"""Where prefill spends its time, ours against PyTorch's: one `--tokens`-token text prompt through our decoder graph
under onnxruntime's profiler and through transformers' model under PyTorch's, time summed by operator after a
warm-up run, side by side in one run.

    python bench/prefill_profile.py OUT_DIR --torch MODEL_DIR [--tokens 1000] [--threads 2] [--top 8]

Each side's operators are also put in three groups, so the two columns can be compared: the weight matmuls
(ours: MatMulNBits / MatMul; PyTorch: its mm / addmm kernels), attention (ours: GroupQueryAttention; PyTorch: its
scaled-dot-product kernels), and everything else. Token ids are seeded random ids (prefill speed does not depend on
them); PyTorch computes only the last position's logits, as our graph does (`logits_to_keep=1`).
"""
from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import numpy as np
from machine import summary as machine_summary  # bench scripts share helpers by path
from vision_profile import last_run_by_op

OURS_GROUPS = {"weight matmuls": ("MatMulNBits", "MatMul", "Gemm"), "attention": ("GroupQueryAttention",)}
TORCH_GROUPS = {"weight matmuls": ("aten::mm", "aten::addmm", "aten::bmm"),
                "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu",
                              "aten::_scaled_dot_product_attention_math", "aten::_flash_attention_forward")}


def ours(export_dir: Path, ids: np.ndarray, threads: int) -> tuple[float, dict[str, float]]:
    """-> (wall ms of the profiled prefill, op type -> kernel ms). The graph that reads the prompt: the int8 prefill
    graph where the export has one (`--prefill int8`), else decoder.onnx."""
    from qvl_compile.runtime.decoder import TextDecoder

    with tempfile.TemporaryDirectory() as scratch:
        decoder = TextDecoder.from_export(export_dir, intra_op_threads=threads,
                                          profile_prefix=str(Path(scratch) / "prefill"))
        positions = np.broadcast_to(np.arange(len(ids)), (3, 1, len(ids))).copy()  # [3 axes, batch 1, tokens]
        for _ in range(2):  # warm-up, then the profiled run (the last in the file)
            decoder.forward(ids[None], positions, decoder.empty_cache())
        events = json.loads(Path(decoder.session_for(ids[None]).end_profiling()).read_text())
    return last_run_by_op(events)


def pytorch(model_dir: Path, ids: np.ndarray, threads: int) -> tuple[float, dict[str, float]]:
    """-> (wall ms of the profiled prefill, op name -> self CPU ms)."""
    import time

    import torch
    from torch.profiler import ProfilerActivity, profile

    from qvl_compile.families.qwen3_vl.loaders import load_full_model

    torch.set_num_threads(threads)
    model = load_full_model(model_dir)
    prompt = torch.from_numpy(ids[None])
    with torch.no_grad():
        model(input_ids=prompt, use_cache=True, logits_to_keep=1)  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as trace:
            start = time.perf_counter()
            model(input_ids=prompt, use_cache=True, logits_to_keep=1)
            wall = (time.perf_counter() - start) * 1000
    by_op = {event.key: event.self_cpu_time_total / 1000 for event in trace.key_averages()}
    return wall, by_op


def grouped(by_op: dict[str, float], groups: dict[str, tuple[str, ...]]) -> dict[str, float]:
    totals: dict[str, float] = collections.Counter()
    for op, ms in by_op.items():
        totals[next((name for name, ops in groups.items() if op in ops), "everything else")] += ms
    return dict(totals)


def table(title: str, wall: float, by_op: dict[str, float], top: int) -> list[str]:
    lines = [f"**{title}**: run {wall:.0f} ms", "", "| op | ms | share of run |", "|---|---:|---:|"]
    lines += [f"| {op} | {ms:.0f} | {ms / wall:.0%} |" for op, ms in sorted(by_op.items(), key=lambda kv: -kv[1])[:top]]
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=Path)
    parser.add_argument("--torch", type=Path, required=True, help="the checkpoint the export came from")
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=8)
    args = parser.parse_args()
    ids = np.random.default_rng(0).integers(1000, 5000, args.tokens)
    ours_wall, ours_ops = ours(args.export, ids, args.threads)
    torch_wall, torch_ops = pytorch(args.torch, ids, args.threads)
    lines = table(f"ours ({args.export.name}), prefill {args.tokens} tokens", ours_wall, ours_ops, args.top)
    lines += table(f"PyTorch eager fp32 (sdpa), prefill {args.tokens} tokens", torch_wall, torch_ops, args.top)
    ours_groups, torch_groups = grouped(ours_ops, OURS_GROUPS), grouped(torch_ops, TORCH_GROUPS)
    lines += ["| group | ours ms | PyTorch ms | ours / PyTorch |", "|---|---:|---:|---:|"]
    for name in [*OURS_GROUPS, "everything else"]:
        mine, theirs = ours_groups.get(name, 0.0), torch_groups.get(name, 0.0)
        lines.append(f"| {name} | {mine:.0f} | {theirs:.0f} | {mine / theirs:.2f}x |" if theirs else
                     f"| {name} | {mine:.0f} | {theirs:.0f} | - |")
    lines.append(f"| whole prefill (wall) | {ours_wall:.0f} | {torch_wall:.0f} | {ours_wall / torch_wall:.2f}x |")
    print("\n".join(lines + ["", f"{args.threads} threads; {machine_summary()}"]))


if __name__ == "__main__":
    main()
