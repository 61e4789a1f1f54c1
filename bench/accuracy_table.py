"""The README's accuracy table: `qvl-compile eval` accuracy per task for PyTorch fp32 and each export setting.

    python bench/accuracy_table.py WORK_DIR [--model MODEL_DIR] [--seed 20261203] [--per-task 100]

WORK_DIR receives the cases (`qvl-compile cases --seed SEED`; the trainer draws with seed 0 and checks
itself on seed 999983), one export per setting, predictions per setting, and results.json / results.md.
Also reported: the share of cases whose ONNX fp32 reply equals PyTorch's. Settings whose folder exists are
not exported again.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from machine import summary as machine_summary  # bench scripts share helpers by path

CLI = [sys.executable, "-m", "qvl_compile.cli"]  # this interpreter's qvl-compile, activated or not
# name -> `qvl-compile export` options (vision + decoder in one folder)
SETTINGS = {
    "ONNX fp32": ["--quant", "fp32"],
    "INT4 b32 L1": ["--block-size", "32", "--accuracy-level", "1"],
    "INT4 b32 L4": ["--block-size", "32", "--accuracy-level", "4"],
    "INT4 b128 L1": ["--block-size", "128", "--accuracy-level", "1"],
    "INT4 b128 L4": ["--block-size", "128", "--accuracy-level", "4"],
    "INT4 b32 L4, int8 vision": ["--block-size", "32", "--accuracy-level", "4", "--vision-quant", "int8"],
    "INT4 b32 L4, int8 KV cache": ["--block-size", "32", "--accuracy-level", "4", "--kv-cache", "int8"],
    "INT4 b32 L4, int8 prefill graph": ["--block-size", "32", "--accuracy-level", "4", "--prefill", "int8"],
    "INT4 b32 L4, fp32 lm_head": ["--block-size", "32", "--accuracy-level", "4", "--no-quantize-lm-head"],
    "INT4 b32 L4, 4-bit lm_head": ["--block-size", "32", "--accuracy-level", "4", "--lm-head-bits", "4"],
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def run_eval(name: str, answer, cases, work: Path) -> dict:
    from qvl_compile.runtime.evaluate import accuracy_table, run_cases

    start = time.perf_counter()
    predictions = list(run_cases(cases, answer))
    seconds = time.perf_counter() - start
    (work / f"predictions-{slug(name)}.jsonl").write_text("".join(json.dumps(p.as_dict()) + "\n" for p in predictions))
    table = accuracy_table(predictions)
    print(f"{name}: {table['overall']['accuracy']:.3f} overall in {seconds:.0f} s", file=sys.stderr)
    return {"table": table, "replies": {p.case.id: p.reply for p in predictions}, "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", type=Path)
    parser.add_argument("--model", type=Path, help="checkpoint (default: `qvl-compile tiny` into WORK/model)")
    parser.add_argument("--seed", type=int, default=20261203)
    parser.add_argument("--per-task", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), help="a subset of the export settings")
    args = parser.parse_args()

    from qvl_compile.runtime.evaluate import pipeline_answerer, read_cases
    from qvl_compile.runtime.pipeline import Pipeline
    from qvl_compile.training.reference_answers import torch_answerer

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    model = args.model or work / "model"
    if not model.is_dir():
        subprocess.run([*CLI, "-q", "tiny", str(model)], check=True)
    cases_dir = work / f"cases-{args.seed}"
    if not cases_dir.is_dir():
        subprocess.run([*CLI, "cases", str(cases_dir), "--seed", str(args.seed), "--per-task",
                        str(args.per_task)], check=True)
    cases = read_cases(cases_dir / "cases.jsonl")
    results = {"cpu": machine_summary(), "seed": args.seed, "cases": len(cases), "settings": {}}
    results["settings"]["PyTorch fp32"] = run_eval("PyTorch fp32", torch_answerer(model, args.max_new_tokens,
                                                                                  args.threads), cases, work)
    for name in args.settings:
        out = work / f"export-{slug(name)}"
        if not (out / "manifest.json").is_file():
            subprocess.run([*CLI, "-q", "export", str(model), str(out), *SETTINGS[name]], check=True)
        pipe = Pipeline(out, intra_op_threads=args.threads)
        results["settings"][name] = run_eval(name, pipeline_answerer(pipe, args.max_new_tokens), cases, work)
    torch_replies = results["settings"]["PyTorch fp32"]["replies"]
    for setting in results["settings"].values():
        setting["same_reply_as_pytorch"] = round(
            sum(setting["replies"][k] == v for k, v in torch_replies.items()) / len(torch_replies), 4)
    (work / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (work / "results.md").write_text(markdown(results))
    print(markdown(results))


def markdown(results: dict) -> str:
    settings = results["settings"]
    tasks = list(next(iter(settings.values()))["table"]["tasks"])
    lines = [f"{results['cases']} cases (seed {results['seed']}), greedy; {results['cpu']}", "",
             "| setting | " + " | ".join(tasks) + " | all | same reply as PyTorch |",
             "|---|" + "---:|" * (len(tasks) + 2)]
    for name, setting in settings.items():
        table = setting["table"]
        cells = [f"{100 * table['tasks'][t]['accuracy']:.0f}" for t in tasks]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {100 * table['overall']['accuracy']:.1f} | "
                     f"{100 * setting['same_reply_as_pytorch']:.1f}% |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
