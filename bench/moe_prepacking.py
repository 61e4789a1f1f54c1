"""onnxruntime's weight prepacking against memory and decode speed, per decoder export.

    python bench/moe_prepacking.py LABEL=OUT_DIR [LABEL=OUT_DIR ...] [--context 512] [--decode-tokens 32]
        [--repeats 3] [--threads 2]

By default onnxruntime prepacks MatMulNBits and QMoE weights into its own layouts at session load, copies it keeps
in anonymous memory. With `session.disable_prepacking=1` the kernels read the external-data file as mapped, so
resident memory is the pages touched, and file-backed. Each (export, setting) runs in its own process, rounds
interleaved; reported: VmHWM after loading, VmHWM after a `--context`-token prompt and the decode, decode tokens/s.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

SETTINGS = {"prepacked (default)": {}, "disable_prepacking": {"session.disable_prepacking": "1"}}


def measure(export_dir: Path, setting: str, context: int, tokens: int, threads: int) -> dict:
    """One process's figures (run in a child): the decoder's session rebuilt with the setting's config entries."""
    import onnxruntime as ort

    import qvl_compile.runtime.decoder as runtime_decoder

    sys.path.insert(0, str(Path(__file__).parent))
    from decoder_speed import Ours
    from moe_decode import peak_rss_gb

    def session_with_setting(path, providers=None, intra_op_threads=0, mem_pattern=False):
        """runtime.session.make_session's options plus the setting's config entries."""
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads, options.enable_mem_pattern, options.log_severity_level = intra_op_threads, False, 3
        for key, value in SETTINGS[setting].items():
            options.add_session_config_entry(key, value)
        return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
    runtime_decoder.make_session = session_with_setting  # the decoder's only session factory
    run = Ours(export_dir, threads, None, export_dir)
    loaded = peak_rss_gb()
    ids = np.random.default_rng(0).integers(0, run.decoder.facts.vocab_size, context)
    speed = run.decode(ids, tokens)
    return {"loaded": loaded, "peak": peak_rss_gb(), "tokens_per_s": speed}


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from moe_decode import run_arguments

    parser = run_arguments(__doc__)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)  # OUT_DIR SETTING
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(Path(args.child[0]), args.child[1], args.context, args.decode_tokens, args.threads)))
        return
    results: dict[tuple[str, str], list[dict]] = {}
    for repeat in range(args.repeats):
        for item in args.runs:
            label, _, folder = item.partition("=")
            for setting in SETTINGS:
                child = subprocess.run([sys.executable, __file__, "x", "--child", folder, setting, "--context",
                                        str(args.context), "--decode-tokens", str(args.decode_tokens), "--threads",
                                        str(args.threads)], capture_output=True, text=True, check=True)
                results.setdefault((label, setting), []).append(json.loads(child.stdout.splitlines()[-1]))
                print(f"round {repeat + 1}: {label}, {setting}: {results[(label, setting)][-1]}", file=sys.stderr)
    print(f"| export | setting | VmHWM after load (GB) | VmHWM after {args.context}-token prompt + decode (GB) | "
          "decode (tokens/s) |")
    print("|---|---|---|---|---|")
    for (label, setting), rows in results.items():
        speeds = [r["tokens_per_s"] for r in rows]
        print(f"| {label} | {setting} | {statistics.median(r['loaded'] for r in rows):.2f} | "
              f"{statistics.median(r['peak'] for r in rows):.2f} | {statistics.median(speeds):.2f} "
              f"({min(speeds):.2f}-{max(speeds):.2f}) |")
    sys.path.insert(0, str(Path(__file__).parent))
    from machine import summary

    print(f"\nmedian (min-max) of {args.repeats} interleaved rounds, one process each, {args.threads} threads")
    print(summary())


if __name__ == "__main__":
    main()
