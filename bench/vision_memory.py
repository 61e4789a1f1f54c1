"""Peak memory and time of the exported vision graph: one frame vs a 16-frame video of 32x32 patches.

Each case runs in a fresh process so ru_maxrss is that case's peak.
    python bench/vision_memory.py OUT_DIR [--frames 1 16] [--side 32] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CASE = """
import json, resource, sys, time, numpy as np
from qvl_compile.runtime.vision import VisionEncoder
enc = VisionEncoder.from_export(sys.argv[1], intra_op_threads=int(sys.argv[4]))
frames, side = int(sys.argv[2]), int(sys.argv[3])
grid = np.array([[frames, side, side]])
pixels = np.random.default_rng(0).random((int(grid.prod()), enc.patch_dim), dtype=np.float32)
pixels -= 0.5
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
enc(pixels, grid)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"frames": frames, "patches": int(grid.prod()), "seconds": round(seconds, 2),
                  "peak_mib": round(peak / 1024), "after_load_mib": round(loaded / 1024)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export_dir")
    parser.add_argument("--frames", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--side", type=int, default=32, help="frame height and width in patches")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print("| frames | patches | time (s) | peak RSS (MiB) | RSS after load (MiB) |")
    print("|---|---|---|---|---|")
    for frames in args.frames:
        out = subprocess.run([sys.executable, "-c", CASE, args.export_dir, str(frames), str(args.side),
                              str(args.threads)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {r['frames']} | {r['patches']} | {r['seconds']} | {r['peak_mib']} | {r['after_load_mib']} |", flush=True)


if __name__ == "__main__":
    main()
