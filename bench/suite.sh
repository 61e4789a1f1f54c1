#!/usr/bin/env bash
# One command for the performance tables and plots in docs/perf/ (Qwen3-VL-2B architecture, random weights).
#   pip install torch==2.13.0 -e '.[export,bench]'
#   bash bench/suite.sh WORK_DIR        # about 45 minutes on 2 cores; the decoder export peaks near 21 GB
#   LLAMA_CPP=/path/to/llama.cpp [LLAMA_BUILD=build-noamx] bash bench/suite.sh WORK_DIR   # also llama.cpp (docs/perf/llama_cpp.md)
# Steps whose output folder exists are skipped, so a rerun only re-measures.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:?usage: bash bench/suite.sh WORK_DIR}
out=docs/perf
threads=${THREADS:-2}
mkdir -p "$work" "$out"

[ -d "$work/r2b" ] || qvl-compile random 2b "$work/r2b"
[ -d "$work/vision-fp32" ] || qvl-compile export "$work/r2b" "$work/vision-fp32" --component vision
[ -d "$work/vision-int8" ] || qvl-compile export "$work/r2b" "$work/vision-int8" --component vision --vision-quant int8
[ -d "$work/decoder-int4" ] || qvl-compile export "$work/r2b" "$work/decoder-int4" --component decoder
[ -d "$work/decoder-int4-kv8" ] || qvl-compile export "$work/r2b" "$work/decoder-int4-kv8" --component decoder --kv-cache int8
[ -d "$work/decoder-int4-b32" ] || qvl-compile export "$work/r2b" "$work/decoder-int4-b32" --component decoder --block-size 32
[ -d "$work/decoder-int4-h4" ] || qvl-compile export "$work/r2b" "$work/decoder-int4-h4" --component decoder --lm-head-bits 4
[ -d "$work/decoder-int4-p8" ] || qvl-compile export "$work/r2b" "$work/decoder-int4-p8" --component decoder --prefill int8
# The end-to-end runner: the INT4 decoder plus the int8 vision graph in one folder (export keeps the decoder).
if [ ! -d "$work/e2e" ]; then
  cp -r "$work/decoder-int4" "$work/e2e"
  qvl-compile export "$work/r2b" "$work/e2e" --component vision --vision-quant int8
fi
[ -d "$work/genai" ] || python -m onnxruntime_genai.models.builder -m "$work/r2b" -o "$work/genai" -p int4 -e cpu
# llama.cpp (optional): its own converter and quantizer make the GGUF (docs/perf/llama_cpp.md)
llama=()
llama_build=${LLAMA_BUILD:-build}  # LLAMA_BUILD=build-noamx where the AMX build cannot read a prompt (docs/perf/llama_cpp.md)
if [ -n "${LLAMA_CPP:-}" ]; then
  [ -f "$work/r2b-f16.gguf" ] || python bench/llama_cpp_convert.py "$LLAMA_CPP" "$work/r2b" --outfile "$work/r2b-f16.gguf" --outtype f16
  [ -f "$work/r2b-q4_0.gguf" ] || "$LLAMA_CPP/$llama_build/bin/llama-quantize" "$work/r2b-f16.gguf" "$work/r2b-q4_0.gguf" Q4_0 "$threads"
  llama=(--llama-bench "$LLAMA_CPP/$llama_build/bin/llama-bench" --gguf "$work/r2b-q4_0.gguf")
fi

python bench/bandwidth.py --threads "$threads" --export "$work/decoder-int4" --context 512 | tee "$out/bandwidth_2b.txt"
python bench/vision_int8_weights.py "$work/vision-fp32" --threads "$threads" | tee "$out/vision_int8_weights_2b.md"
python bench/vision_speed.py --torch "$work/r2b" --ours "$work/vision-fp32" --ours "$work/vision-int8" \
  --names "ours fp32" "ours int8" --threads "$threads" --markdown "$out/vision_2b.md" --plot "$out/vision_2b_latency.png"
python bench/vision_attention.py --rounds 3 --threads "$threads" --markdown "$out/vision_attention_2b.md"
python bench/vision_speed.py --torch "$work/r2b" --ours "$work/vision-fp32" --ours "$work/vision-int8" --names "ours fp32" "ours int8" \
  --workload "image 448x448" --workload "image 896x896" --workload "video 8 frames 448x448" --threads "$threads" \
  --markdown "$out/vision_2b_targets.md"
python bench/decoder_speed.py --ours "$work/decoder-int4" --compare-copy --ours-level 1 --genai "$work/genai" \
  "${llama[@]}" --torch "$work/r2b" --threads "$threads" | tee "$out/decoder_2b.md"
python bench/decoder_speed.py --ours "$work/decoder-int4" --genai "$work/genai" "${llama[@]}" --prefill 0 \
  --context 128 512 1024 2048 --repeats 2 --threads "$threads" --plot "$out/decoder_2b_context.png" \
  | tee "$out/decoder_2b_context.md"
python bench/decoder_speed.py --ours "$work/decoder-int4" --also "ours, int8 KV cache=$work/decoder-int4-kv8" \
  --prefill 1000 --context 128 512 1024 2048 --repeats 3 --threads "$threads" | tee "$out/decoder_2b_kv_cache.md"
python bench/kv_cache_prefill.py --tokens 256 1000 2000 --threads "$threads" | tee "$out/kv_cache_prefill_2b.md"
python bench/decoder_kernels.py --sections block_size --rounds 5 --threads "$threads" \
  | tee "$out/decoder_kernels_block_size_2b.md"
python bench/prefill_profile.py "$work/decoder-int4" --torch "$work/r2b" --tokens 1000 --threads "$threads" \
  | tee "$out/prefill_profile_2b.md"
# --prefill int8: the kernels by rows (where the runtime switches graphs), then the decoders side by side
python bench/decoder_kernels.py --sections prefill_int8 --rounds 3 --threads "$threads" \
  | tee "$out/decoder_kernels_prefill_int8_2b.md"
python bench/decoder_speed.py --ours "$work/decoder-int4" --also "int8 prefill graph (--prefill int8)=$work/decoder-int4-p8" \
  "${llama[@]}" --torch "$work/r2b" --prefill 1000 --context 512 --repeats 3 --threads "$threads" \
  | tee "$out/decoder_2b_prefill_int8.md"
python bench/e2e_speed.py --ours "$work/e2e" --torch "$work/r2b" --size 448 --new-tokens 64 --threads "$threads" \
  | tee "$out/e2e_2b.md"
# The default export end to end (fp32 vision, INT4 decoder) against llama.cpp's own multimodal CLI
if [ -n "${LLAMA_CPP:-}" ]; then
  [ -f "$work/r2b-mmproj-f32.gguf" ] || python bench/llama_cpp_convert.py "$LLAMA_CPP" "$work/r2b" --outfile "$work/r2b-mmproj-f32.gguf" --outtype f32 --mmproj
  if [ ! -d "$work/e2e-default" ]; then
    cp -r "$work/decoder-int4" "$work/e2e-default"
    qvl-compile export "$work/r2b" "$work/e2e-default" --component vision
  fi
  python bench/e2e_speed.py --ours "$work/e2e-default" --llama-mtmd "$LLAMA_CPP/$llama_build/bin/llama-mtmd-cli" \
    --gguf "$work/r2b-q4_0.gguf" --mmproj "$work/r2b-mmproj-f32.gguf" --size 448 --new-tokens 64 --threads "$threads" \
    | tee "$out/e2e_2b_llama.md"
  python bench/decoder_speed.py --ours "$work/decoder-int4" --also "ours, int8 KV cache=$work/decoder-int4-kv8" "${llama[@]}" \
    --prefill 1000 --context 512 2048 --repeats 3 --threads "$threads" | tee "$out/decoder_2b_kv_cache_llama.md"
  # the default (block 128) against block 32, a 4-bit lm_head and the int8 KV cache, llama.cpp and PyTorch
  python bench/decoder_speed.py --ours "$work/decoder-int4" --also "block 32 (the default before)=$work/decoder-int4-b32" \
    --also "block 128, 4-bit lm_head=$work/decoder-int4-h4" --also "block 128, int8 KV cache=$work/decoder-int4-kv8" \
    "${llama[@]}" --torch "$work/r2b" --prefill 1000 --context 128 512 2048 --repeats 3 --threads "$threads" \
    | tee "$out/decoder_2b_block_size.md"
  python bench/e2e_speed.py --ours "$work/e2e" --llama-mtmd "$LLAMA_CPP/$llama_build/bin/llama-mtmd-cli" --gguf "$work/r2b-q4_0.gguf" \
    --mmproj "$work/r2b-mmproj-f32.gguf" --size 448 --new-tokens 64 --threads "$threads" | tee "$out/e2e_2b_llama_int8.md"
  # --prefill int8, with the fp32 and the int8 vision graph, beside the default and int8 vision alone
  for vision in fp32 int8; do
    if [ ! -d "$work/e2e-p8-$vision" ]; then
      cp -r "$work/decoder-int4-p8" "$work/e2e-p8-$vision"
      qvl-compile export "$work/r2b" "$work/e2e-p8-$vision" --component vision --vision-quant "$vision"
    fi
  done
  python bench/e2e_speed.py --ours "$work/e2e-default" --also "int8 prefill graph=$work/e2e-p8-fp32" \
    --also "int8 vision=$work/e2e" --also "int8 prefill graph, int8 vision=$work/e2e-p8-int8" \
    --llama-mtmd "$LLAMA_CPP/$llama_build/bin/llama-mtmd-cli" --gguf "$work/r2b-q4_0.gguf" \
    --mmproj "$work/r2b-mmproj-f32.gguf" --size 448 --new-tokens 64 --threads "$threads" | tee "$out/e2e_2b_llama_prefill_int8.md"
fi

# Qwen3-VL-MoE 30B-A3B at real width, reduced depth (3 and 8 decoder layers; 64 experts for the doubling check)
[ -d "$work/moe3" ] || qvl-compile random 30b-a3b "$work/moe3" --layers 3
[ -d "$work/moe8" ] || qvl-compile random 30b-a3b "$work/moe8" --layers 8
if [ ! -d "$work/moe3-e64" ]; then
  mkdir -p "$work/arch-30b-e64"
  cp families/qwen3_vl_moe/archs/qwen3-vl-30b-a3b/preprocessor_config.json "$work/arch-30b-e64/"
  python -c "import json, sys; raw = json.load(open(sys.argv[1])); raw['text_config']['num_experts'] = 64; \
json.dump(raw, open(sys.argv[2], 'w'), indent=2)" families/qwen3_vl_moe/archs/qwen3-vl-30b-a3b/config.json \
    "$work/arch-30b-e64/config.json"
  qvl-compile random "$work/arch-30b-e64" "$work/moe3-e64" --layers 3
fi
for name in moe3 moe8 moe3-e64; do
  [ -d "$work/$name-out" ] || qvl-compile export "$work/$name" "$work/$name-out" --component decoder
done
python bench/moe_decode.py "dense 2B=$work/decoder-int4" "30B-A3B 3 layers, 64 experts=$work/moe3-e64-out" \
  "30B-A3B 3 layers=$work/moe3-out" "30B-A3B 8 layers=$work/moe8-out" --context 512 --repeats 5 --decode-tokens 64 \
  --depths "30B-A3B 3 layers" "30B-A3B 8 layers" --dense "dense 2B" --extrapolate 48 \
  --experts-pair "30B-A3B 3 layers, 64 experts" "30B-A3B 3 layers" --threads "$threads" | tee "$out/moe_30b_a3b.md"
