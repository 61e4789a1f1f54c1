#!/usr/bin/env bash
# Export 2B, 4B and 8B (all components, INT4 decoder, verification included) and generate with one 448x448
# image; onnxruntime-genai's builder on the same 2B checkpoint beside them. The README's "Real checkpoint
# sizes" table comes from this script's log.
#
#     bash bench/real_sizes.sh WORK_DIR [SIZES...]      # default sizes: 2b 4b 8b; needs /usr/bin/time
#
# Peak RSS is /usr/bin/time's "Maximum resident set size" of the command (the largest process). The genai
# builder needs `pip install '.[bench]'`; it is skipped when onnxruntime_genai is not importable.
set -euo pipefail
work=${1:?usage: bash bench/real_sizes.sh WORK_DIR [SIZES...]}
shift
sizes=("${@:-2b 4b 8b}")
read -r -a sizes <<< "${sizes[*]}"
mkdir -p "$work"
lscpu | grep -E "Model name|Flags" | sed 's/^/# /'

measure() {  # name, command...: wall seconds and peak RSS from /usr/bin/time
    local name=$1
    shift
    /usr/bin/time -v "$@" > "$work/$name.log" 2>&1
    local wall rss
    wall=$(grep "Elapsed (wall clock)" "$work/$name.log" | awk '{print $NF}')
    rss=$(grep "Maximum resident set size" "$work/$name.log" | awk '{printf "%.2f GB", $NF / 1e6}')
    echo "$name: wall $wall, peak RSS $rss"
}

for size in "${sizes[@]}"; do
    [ -d "$work/r$size" ] || measure "random-$size" qvl-compile random "$size" "$work/r$size"
    measure "export-$size" qvl-compile export "$work/r$size" "$work/e$size" --force
    du -b "$work/e$size"/vision.onnx* "$work/e$size"/decoder.onnx* | awk '{printf "  %s %.3f GB\n", $2, $1 / 1e9}'
    python bench/real_size.py "$work/e$size" --threads 2
done
if python -c "import onnxruntime_genai" 2>/dev/null && [ -d "$work/r2b" ]; then
    rm -rf "$work/genai-2b"
    measure "genai-builder-2b" python -m onnxruntime_genai.models.builder -m "$work/r2b" -o "$work/genai-2b" \
        -p int4 -e cpu
    du -cb "$work/genai-2b"/*.onnx* | tail -1 | awk '{printf "  genai model files %.3f GB\n", $1 / 1e9}'
fi
