#!/usr/bin/env bash
# One-call GPU check: the `gpu`-marked tests and the benchmarks on ViT-B/16 (batch 64, bfloat16, CUDA), eager and
# compiled, plus operator/launch counts, the end-to-end training throughput and the frequency-domain augmentations'
# overhead.
#
#   bash benchmarks/gpu_check.sh                 # on a CUDA machine; results in ./gpu_out (or $OUT)
#   DEVICE=cpu bash benchmarks/gpu_check.sh      # dry run of the same steps with tiny sizes on the CPU
#
# Every step runs under `timeout`, capped by what is left of BUDGET seconds (default 560), so the whole call ends
# within 10 minutes. Steps write their logs, tables and JSON into $OUT/work; at the end the headline JSON files
# (fourierft, features, methods, ops, train: copy them to benchmarks/results/<machine>/) and summary.txt are put into
# $OUT itself and everything else into $OUT/gpu_check.tar.gz (the device tool returns at most 8 files).
# $OUT/summary.txt lists the exit status of every step; the exit status is 0 only when every step passed.
# Environment: OUT (output folder), DEVICE (cuda | cpu), BUDGET (seconds), PYTHON (interpreter, default python3),
# WHEELS (folder of the Hydra wheels, default .whl, else ../shared/wheels),
# COMPILE (torch.compile of the compiled rows: an inductor mode such as reduce-overhead, or backend:NAME; default
# backend:cudagraphs on CUDA: CUDA graphs of the eager kernels, which compile in seconds; backend:aot_eager on CPU).
set -u

OUT=${OUT:-./gpu_out}
DEVICE=${DEVICE:-cuda}
BUDGET=${BUDGET:-560}
PY=${PYTHON:-python3}
START=$(date +%s)
mkdir -p "$OUT/work"
OUT=$(cd "$OUT" && pwd)
WORK=$OUT/work
cd "$(dirname "$0")/.."
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
FAILED=0

# The GPU machine has no hydra-core/omegaconf: install the wheels (the *.whl and *.tar.gz files of ../shared/wheels,
# copied or carried to .whl/) into a private site folder. Only fftprompt-bench train needs them.
WHEELS=${WHEELS:-.whl}
[ -d "$WHEELS" ] || WHEELS=../shared/wheels
if [ -d "$WHEELS" ] && ! "$PY" -c 'import hydra' 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --target /tmp/site "$WHEELS"/*.whl "$WHEELS"/*.tar.gz &&
        export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
# The package from the working tree without installing it (no network needed for a build).
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}

echo "== machine"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$WORK/gpu.txt"
else
    echo "nvidia-smi not found (no NVIDIA driver on this machine)" | tee "$WORK/gpu.txt"
fi
cat /proc/loadavg | tee "$WORK/loadavg_start.txt"
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'

# run NAME LIMIT COMMAND...: runs COMMAND under timeout (LIMIT capped by the budget left), logs to $WORK/NAME.log
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
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$WORK/$name.log"
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
    # dry run: the same commands with the micro ViT's sizes (configs/backbone/vit_micro.yaml) at 32 px (methods, ops,
    # fourierft, train) and ViT-Ti at 32 px (the others)
    MODEL=vit_tiny_patch16_224
    DTYPE=float32
    COMPILE=${COMPILE:-backend:aot_eager}
    COMMON=(--img-size 32 --batch-size 2 --dtype "$DTYPE" --device cpu)
    # shellcheck disable=SC2207  # the printed words are KEY=VALUE pairs without spaces
    TINY=($("$PY" -c 'from importlib.resources import files
from omegaconf import OmegaConf
micro = OmegaConf.load(files("fftprompt.configs") / "backbone" / "vit_micro.yaml")
print(" ".join(f"--backbone-arg {k}={micro[k]}" for k in ("patch_size", "embed_dim", "depth", "num_heads")))'))
    METHODS_EXTRA=("${TINY[@]}" --steps 1 --warmup 1 --n-frequency 200 --threads 2 --compile-methods fourierft)
    OPS_EXTRA=("${TINY[@]}" --warmup 1 --n-frequency 200 --threads 2 --methods fourierft,features)
    FOURIERFT_EXTRA=("${TINY[@]}" --steps 1 --warmup 1 --n-frequency 200 --targets qkv --no-memory --threads 2)
    FEATURES_EXTRA=(--repeats 1 --warmup 0 --threads 2)
    PROMPTS_EXTRA=(--img-size 32 --batch-size 2 --steps 1 --warmup 0 --threads 2)
    TRAIN_ARGS=(--images 40 --image-px 64 --classes 4 --img-size 32 --batch-size 8 --workers 2 --epochs 2
        --raw-steps 2 --threads 2 --override backbone=vit_micro --override prompt.num_tokens=2
        --override prompt.hidden_dim=16 --override prompt.num_heads=2 --override adapter.n_frequency=50)
    AUGMENT_ARGS=(--model vit_demo_patch8 --img-size 32 --batch-size 4 --steps 2 --warmup 1 --device cpu)
else
    MODEL=vit_base_patch16_224
    DTYPE=bfloat16
    COMPILE=${COMPILE:-backend:cudagraphs}
    COMMON=(--img-size 224 --batch-size 64 --dtype "$DTYPE" --device "$DEVICE")
    METHODS_EXTRA=(--steps 10 --warmup 3)
    OPS_EXTRA=(--warmup 3 --methods fourierft,fourierft_peft,lora,vpt_shallow,fft_shallow,features,generator)
    FOURIERFT_EXTRA=(--steps 10 --warmup 3 --n-frequency 3000)
    FEATURES_EXTRA=(--repeats 20 --warmup 3)
    PROMPTS_EXTRA=(--img-size 224 --batch-size 64 --steps 10 --warmup 3)
    # experiment=dtd's model (ViT-B/16, fft prompts for ViT-B, FourierFT n=3000) without weights, bf16 on one GPU
    TRAIN_ARGS=(--images 2000 --image-px 512 --classes 10 --img-size 224 --batch-size 64 --workers 12 --epochs 3
        --data-dir /tmp/fftprompt-jpegs --override trainer=gpu --override backbone=vit_base
        --override prompt=fft_vitb --override adapter=fourierft_vitb)
    # the augmentations' overhead on a ViT-B/16 step with fft prompts + FourierFT (goal: <= 5 %)
    AUGMENT_ARGS=(--model "$MODEL" --img-size 224 --batch-size 64 --dtype "$DTYPE" --device "$DEVICE" --steps 10
        --warmup 3 --num-tokens 10 --n-frequency 3000 --scaling 300)
fi

run gpu_tests 90 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests
run bench_fourierft 100 "${BENCH[@]}" fourierft --model "$MODEL" "${COMMON[@]}" "${FOURIERFT_EXTRA[@]}" \
    --compile "$COMPILE" --json "$WORK/fourierft.json"
run bench_features 30 "${BENCH[@]}" features --model "$MODEL" "${COMMON[@]}" "${FEATURES_EXTRA[@]}" \
    --json "$WORK/features.json"
run bench_methods 150 "${BENCH[@]}" methods --backbone "$MODEL" "${COMMON[@]}" "${METHODS_EXTRA[@]}" \
    --compile "$COMPILE" --out-dir "$WORK"
run bench_ops 45 "${BENCH[@]}" ops --backbone "$MODEL" "${COMMON[@]}" "${OPS_EXTRA[@]}" --json "$WORK/ops.json"
run bench_ops_compiled 60 "${BENCH[@]}" ops --backbone "$MODEL" "${COMMON[@]}" "${OPS_EXTRA[@]}" \
    --compile "$COMPILE" --json "$WORK/ops_compiled.json"
run bench_train 120 "${BENCH[@]}" train "${TRAIN_ARGS[@]}" --json "$WORK/train.json"
run bench_augment 45 "${BENCH[@]}" augment "${AUGMENT_ARGS[@]}" --json "$WORK/augment.json"
# `prompts` has no --device/--dtype option when its help does not list them: then it can only run on the CPU,
# which a ViT-B batch of 64 does not fit in this budget; the fft/VPT comparison is in bench_methods' rows then.
if "${BENCH[@]}" prompts --help 2>/dev/null | grep -q -- "--device"; then
    run bench_prompts 45 "${BENCH[@]}" prompts --model "$MODEL" "${PROMPTS_EXTRA[@]}" --device "$DEVICE" \
        --dtype "$DTYPE" --json "$WORK/prompts.json"
elif [ "$DEVICE" = "cpu" ]; then
    run bench_prompts 45 "${BENCH[@]}" prompts --model "$MODEL" "${PROMPTS_EXTRA[@]}" --json "$WORK/prompts.json"
else
    echo "bench_prompts: skipped (fftprompt-bench prompts has no --device option; see bench_methods)" | tee -a "$SUMMARY"
fi
# the markdown tables next to the JSON files, from the JSON (methods writes its own methods.md)
for name in fourierft features prompts ops ops_compiled train; do
    if [ -s "$WORK/$name.json" ]; then
        module=${name%_compiled}
        "$PY" -c 'import importlib, json, sys
module = importlib.import_module("fftprompt.bench." + sys.argv[1])
print(module.format_table(json.load(open(sys.argv[2]))))' "$module" "$WORK/$name.json" >"$WORK/$name.md"
    fi
done
cat /proc/loadavg >"$WORK/loadavg_end.txt"

echo "== summary ($(($(date +%s) - START))s in all)"
for name in fourierft features methods ops train augment; do
    [ -s "$WORK/$name.json" ] && cp "$WORK/$name.json" "$OUT/$name.json"
done
tar -czf "$OUT/gpu_check.tar.gz" -C "$WORK" . && rm -rf "$WORK"
cat "$SUMMARY"
exit $FAILED
