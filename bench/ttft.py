"""Time to first token for one image, torch-free: preprocess, vision graph, decoder prefill, first token.

    python bench/ttft.py OUT_DIR [--size 448] [--repeats 3] [--threads 2]

The prompt is built at the token-id level (12 text tokens, the image's placeholders, 8 text tokens), so
it runs on random-weight checkpoints that ship no tokenizer; tokenizing a short prompt takes well under
a millisecond and is left out.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from qvl_compile.manifest import read_manifest
from qvl_compile.runtime.decoder import TextDecoder
from qvl_compile.runtime.preprocess import ImageProcessorConfig, preprocess_image
from qvl_compile.runtime.rope_index import mrope_position_ids
from qvl_compile.runtime.vision import VisionEncoder

SAMPLE = Path(__file__).resolve().parents[1] / "runtime" / "samples" / "red-house.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("--size", type=int, default=448, help="the image is resized to SIZE x SIZE first")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    model = read_manifest(args.export_dir).model
    vision = VisionEncoder.from_export(args.export_dir, intra_op_threads=args.threads)
    decoder = TextDecoder.from_export(args.export_dir, intra_op_threads=args.threads)
    cfg = ImageProcessorConfig(16, 2, 2, 65536, 16777216, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    image = Image.open(SAMPLE).convert("RGB").resize((args.size, args.size))
    text_ids = np.random.default_rng(0).integers(0, min(model["image_token_id"], 1000), 20)
    rows = {"preprocess": [], "vision": [], "prefill + first token": [], "total": []}
    for _ in range(args.repeats):
        start = time.perf_counter()
        pixels, grid = preprocess_image(image, cfg)
        t1 = time.perf_counter()
        out = vision(pixels, np.array([grid]))
        t2 = time.perf_counter()
        pads = [model["image_token_id"]] * (int(np.prod(grid)) // 4)
        ids = np.concatenate([text_ids[:12], [model["vision_start_token_id"]], pads,
                              [model["vision_end_token_id"]], text_ids[12:]]).astype(np.int64)
        positions, _ = mrope_position_ids(ids, model["image_token_id"], model["video_token_id"], [grid], [])
        logits, _ = decoder.forward(ids[None], positions[:, None], decoder.empty_cache(), out.image_embeds,
                                    out.deepstack_embeds)
        int(logits[0, -1].argmax())
        t3 = time.perf_counter()
        for name, value in zip(rows, (t1 - start, t2 - t1, t3 - t2, t3 - start)):
            rows[name].append(value)
    print(f"| {args.export_dir.name}: {args.size}x{args.size} image, grid {list(grid)}, {len(ids)} prompt tokens "
          f"| median (min-max) s over {args.repeats} |")
    print("|---|---|")
    for name, values in rows.items():
        print(f"| {name} | {statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f}) |")


if __name__ == "__main__":
    main()
