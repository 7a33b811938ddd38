#!/usr/bin/env bash
# One-call GPU check: the `gpu`-marked tests and the five benchmarks on ViT-B/16 (batch 64, bfloat16, CUDA).
#
#   bash benchmarks/gpu_check.sh                 # on a CUDA machine; results in ./gpu_out (or $OUT)
#   DEVICE=cpu bash benchmarks/gpu_check.sh      # dry run of the same steps with tiny sizes on the CPU
#
# Every step runs under `timeout`, capped by what is left of BUDGET seconds (default 520), so the whole call ends
# within 9 minutes. Each step writes its table (.md), its JSON and its log into $OUT; $OUT/summary.txt lists the
# exit status of every step. The exit status is 0 only when every step passed.
# Environment: OUT (output folder), DEVICE (cuda | cpu), BUDGET (seconds), PYTHON (interpreter, default python3).
set -u

OUT=${OUT:-./gpu_out}
DEVICE=${DEVICE:-cuda}
BUDGET=${BUDGET:-520}
PY=${PYTHON:-python3}
START=$(date +%s)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
FAILED=0

# The GPU machine has no hydra-core/omegaconf: install the wheels shipped in .whl/ into a private site folder.
if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --target /tmp/site .whl/* && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
# The package from the working tree without installing it (no network needed for a build).
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}

echo "== machine"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
else
    echo "nvidia-smi not found (no NVIDIA driver on this machine)" | tee "$OUT/gpu.txt"
fi
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'

# run NAME LIMIT COMMAND...: runs COMMAND under timeout (LIMIT capped by the budget left), logs to $OUT/NAME.log
run() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - ($(date +%s) - START) - 5))
    if [ "$left" -lt 10 ]; then
        echo "$name: skipped (time budget spent)" | tee -a "$SUMMARY"
        FAILED=1
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (limit ${limit}s)"
    local began=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local status=${PIPESTATUS[0]}
    local took=$(($(date +%s) - began))
    if [ "$status" -eq 0 ]; then
        echo "$name: ok (${took}s)" >>"$SUMMARY"
    else
        echo "$name: FAILED with status $status after ${took}s (124: timed out)" >>"$SUMMARY"
        FAILED=1
    fi
}

# fftprompt-bench without the console script (the package is not installed, only on PYTHONPATH)
BENCH=("$PY" -c 'import sys; from fftprompt.bench import main; sys.exit(main(sys.argv[1:]))')

if [ "$DEVICE" = "cpu" ]; then
    # dry run: the same commands with a 2-block ViT at 32 px (methods) and ViT-Ti at 32 px (the others)
    MODEL=vit_tiny_patch16_224
    DTYPE=float32
    COMMON=(--img-size 32 --batch-size 2 --dtype "$DTYPE" --device cpu)
    METHODS_EXTRA=(--backbone-arg patch_size=8 --backbone-arg embed_dim=32 --backbone-arg depth=2
        --backbone-arg num_heads=2 --steps 1 --warmup 1 --n-frequency 200 --threads 2)
    FOURIERFT_EXTRA=(--steps 1 --warmup 0 --n-frequency 200 --targets qkv --no-memory --threads 2)
    FEATURES_EXTRA=(--repeats 1 --warmup 0 --threads 2)
    PROMPTS_EXTRA=(--img-size 32 --batch-size 2 --steps 1 --warmup 0 --threads 2)
    AUGMENT_ARGS=(--model vit_demo_patch8 --img-size 32 --batch-size 4 --steps 2 --warmup 1 --device cpu)
else
    MODEL=vit_base_patch16_224
    DTYPE=bfloat16
    COMMON=(--img-size 224 --batch-size 64 --dtype "$DTYPE" --device "$DEVICE")
    METHODS_EXTRA=(--steps 10 --warmup 3)
    FOURIERFT_EXTRA=(--steps 10 --warmup 3 --n-frequency 3000)
    FEATURES_EXTRA=(--repeats 20 --warmup 3)
    PROMPTS_EXTRA=(--img-size 224 --batch-size 64 --steps 10 --warmup 3)
    # the augmentations' overhead on a ViT-B/16 step with fft prompts + FourierFT (goal: <= 5 %)
    AUGMENT_ARGS=(--model "$MODEL" --img-size 224 --batch-size 64 --dtype "$DTYPE" --device "$DEVICE" --steps 10
        --warmup 3 --num-tokens 10 --n-frequency 3000 --scaling 300)
fi

run gpu_tests 120 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests
run bench_augment 60 "${BENCH[@]}" augment "${AUGMENT_ARGS[@]}" --json "$OUT/augment.json"
run bench_methods 150 "${BENCH[@]}" methods --backbone "$MODEL" "${COMMON[@]}" "${METHODS_EXTRA[@]}" --out-dir "$OUT"
run bench_fourierft 75 "${BENCH[@]}" fourierft --model "$MODEL" "${COMMON[@]}" "${FOURIERFT_EXTRA[@]}" \
    --json "$OUT/fourierft.json"
run bench_features 45 "${BENCH[@]}" features --model "$MODEL" "${COMMON[@]}" "${FEATURES_EXTRA[@]}" \
    --json "$OUT/features.json"
# `prompts` has no --device/--dtype option when its help does not list them: then it can only run on the CPU,
# which a ViT-B batch of 64 does not fit in this budget; the fft/VPT comparison is in bench_methods' rows then.
if "${BENCH[@]}" prompts --help 2>/dev/null | grep -q -- "--device"; then
    run bench_prompts 45 "${BENCH[@]}" prompts --model "$MODEL" "${PROMPTS_EXTRA[@]}" --device "$DEVICE" \
        --dtype "$DTYPE" --json "$OUT/prompts.json"
elif [ "$DEVICE" = "cpu" ]; then
    run bench_prompts 45 "${BENCH[@]}" prompts --model "$MODEL" "${PROMPTS_EXTRA[@]}" --json "$OUT/prompts.json"
else
    echo "bench_prompts: skipped (fftprompt-bench prompts has no --device option; see bench_methods)" | tee -a "$SUMMARY"
fi
# the markdown tables next to the JSON files, from the JSON (methods writes its own methods.md)
for name in fourierft features prompts augment; do
    if [ -s "$OUT/$name.json" ]; then
        "$PY" -c 'import importlib, json, sys
module = importlib.import_module("fftprompt.bench." + sys.argv[1])
print(module.format_table(json.load(open(sys.argv[2]))))' "$name" "$OUT/$name.json" >"$OUT/$name.md"
    fi
done

echo "== summary ($(($(date +%s) - START))s in all)"
cat "$SUMMARY"
exit $FAILED
