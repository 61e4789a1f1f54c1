#!/usr/bin/env bash
# A recipe on one GPU (docs/training.md, "GPU runs"): one run per learning rate, side by side, each fitted to BUDGET
# seconds. Run from the repository root on a machine with torch, transformers, tokenizers, jinja2, numpy and Pillow
# (the package itself need not be installed):
#
#     [RECIPE=grounding] [LRS="5e-4 1e-3"] [SEED=3] [START=checkpoint folder] [AUX=10] bash training/gpu_run.sh OUT [BUDGET]
#
# START defaults to the committed checkpoint (`qvl-compile tiny`). AUX: --vision-aux-weight (default 0, off).
# OUT receives, per learning rate, the weights in parts of at most 15 MB (lr<LR>.safetensors.part-aa, -ab: join
# them with cat) and runs.tar (each run's train_config.json, train_log.jsonl and console output).
set -euo pipefail
out=$(realpath "${1:?usage: gpu_run.sh OUT [BUDGET]}")
budget=${2:-450}
device=${DEVICE:-cuda} batch=${BATCH:-64}  # DEVICE=cpu BATCH=4 for a dry run on a laptop
recipe=${RECIPE:-grounding} lrs=${LRS:-5e-4 1e-3} seed=${SEED:-3} aux=${AUX:-0} start=${START:+$(realpath "$START")}
work=$(mktemp -d)

# The package as setuptools maps it (pyproject.toml's package-dir), without installing it.
mkdir -p "$work/pkg" && cp -r qvl_compile "$work/pkg/"
for d in rewrite export families runtime golden tasks training serve; do cp -r "$d" "$work/pkg/qvl_compile/$d"; done
export PYTHONPATH="$work/pkg" PYTHONUNBUFFERED=1
cd "$work"  # python -m puts the working folder first on the path: the checkout's qvl_compile/ alone would shadow it
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
[ -n "$start" ] || { start="$work/base"; python3 -m qvl_compile.cli tiny "$start"; }

for lr in $lrs; do
    timeout $((budget + 90)) python3 -m qvl_compile.training.shapes "$work/lr$lr" --recipe "$recipe" \
        --start-from "$start" --batch "$batch" --lr "$lr" --seed "$seed" --device "$device" --workers 6 \
        --time-budget "$budget" --held-out 64 --vision-aux-weight "$aux" > "$work/lr$lr.console.txt" 2>&1 &
done
wait || true

for lr in $lrs; do
    run="$work/lr$lr"
    tail -n 2 "$run.console.txt"
    cp "$run.console.txt" "$run/console.txt"
    [ -f "$run/model.safetensors" ] && split -b 15M "$run/model.safetensors" "$out/lr$lr.safetensors.part-"
done
tar -C "$work" -cf "$out/runs.tar" $(cd "$work" && ls -d lr*/train_config.json lr*/train_log.jsonl lr*/console.txt)
ls -l "$out"
