"""What the quantized embedding table saves and costs: decoder file sizes and greedy next-token agreement with
the float32 transformers model, INT4 decoder with the quantized table vs with a float32 table. Both keep a 4-bit
lm_head (`lm_head_bits=4`), as the committed table (docs/perf) was measured before the default became 8 bits at
accuracy level 4.

    python bench/embedding_effect.py MODEL_DIR WORK_DIR [--seeds 4]

Both decoders are exported from MODEL_DIR into WORK_DIR. Agreement is counted at every prompt position of
the export check's multimodal prompt (two images and a video), one prompt per seed, against transformers in
float32 with the checkpoint's weights streamed in module by module (any size fits in memory).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from qvl_compile.export.checkpoint_files import CheckpointReader
from qvl_compile.export.decoder_options import QuantOptions
from qvl_compile.export.decoder_verify import next_token_agreement
from qvl_compile.export.pipeline import export_model
from qvl_compile.export.streamed_reference import checkpoint_source, stream_parameters
from qvl_compile.registry import family_named
from qvl_compile.runtime.decoder import TextDecoder

VARIANTS = {"int4, 4-bit table": QuantOptions(lm_head_bits=4),
            "int4, float32 table": QuantOptions(lm_head_bits=4, quantize_embedding=False)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("work_dir", type=Path)
    parser.add_argument("--seeds", type=int, default=4)
    args = parser.parse_args()
    manifest = None
    rows = {}
    for index, (name, options) in enumerate(VARIANTS.items()):
        out = args.work_dir / f"decoder-{index}"
        manifest = export_model(args.model_dir, out, component="decoder", quant=options, force=True)
        size = sum((out / f.path).stat().st_size for f in manifest.artifacts["decoder"].files)
        rows[name] = {"decoder_bytes": size, "export": str(out)}
    family = family_named(manifest.family)
    skeleton = family.load_skeleton(args.model_dir)
    with stream_parameters(skeleton, checkpoint_source(skeleton, CheckpointReader(args.model_dir))) as reference:
        for row in rows.values():
            decoder = TextDecoder.from_export(Path(row["export"]))
            counts = [next_token_agreement(decoder, reference, family, seed=seed) for seed in range(args.seeds)]
            row["agreement_with_fp32"] = [sum(c[0] for c in counts), sum(c[1] for c in counts)]
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
