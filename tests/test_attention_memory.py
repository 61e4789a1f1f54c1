"""Attention cost follows the sum of squared frame lengths, not the square of the total.

A 16-frame video of 32x32 patches has 16,384 patches: a dense mask over all of them would need
16384^2 * 4 heads * 4 bytes = 4 GiB for the scores of one layer; per-frame attention needs 16 x 1024^2.
"""
import json
import subprocess
import sys

import pytest
from tiny_facts import MERGE_UNIT, OUT_HIDDEN

SCRIPT = """
import json, resource, sys, numpy as np
from qvl_compile.runtime.vision import VisionEncoder
enc = VisionEncoder.from_export(sys.argv[1], intra_op_threads=2)
grid = np.array([[int(sys.argv[2]), 32, 32]])
patch_dim = enc.patch_dim
pixels = np.random.default_rng(0).random((int(grid.prod()), patch_dim), dtype=np.float32)
pixels -= 0.5
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = enc(pixels, grid)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_kib": after, "growth_kib": after - before, "shape": list(out.image_embeds.shape)}))
"""


def _peak(export_dir, frames):
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(export_dir), str(frames)],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # peak RSS depends on the machine's allocator and thread count
def test_sixteen_frame_video_memory_stays_per_frame(vision_export):
    one = _peak(vision_export, 1)
    sixteen = _peak(vision_export, 16)
    assert sixteen["shape"] == [16 * 32 * 32 // MERGE_UNIT, OUT_HIDDEN]
    # The dense path would add >= 4 GiB; per-frame attention adds a small multiple of one frame's work.
    assert sixteen["growth_kib"] < 1024 * 1024, (one, sixteen)
