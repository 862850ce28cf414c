#!/usr/bin/env bash
# The GPU figures in one command, sized for one short lease of a GPU
# machine (about 3 minutes on an H100/H200; benchmarks/device_all.sh runs it
# with Figure 2):
#
#   bash benchmarks/gpu_checks.sh [OUT_DIR]          # on a CUDA machine
#   bash benchmarks/gpu_checks.sh --smoke [OUT_DIR]  # the same commands, tiny, on CPU (checks the plumbing)
#
# Needs python3 with torch, torchvision, numpy, pyyaml and pillow (a GPU
# image's usual set; nothing is installed): the library is read from src/.
# Each step's output goes to OUT_DIR (default $OUT, else /tmp/gpu_checks)
# as one .txt file, and a failing step does not stop the others; the exit
# status is the number of failed steps.  Each step is bounded in time
# (NEGATIVES_STEP_LIMIT seconds, default 150): one that overruns is cut and
# counted as failed.
#
#   env.txt          the GPU, driver, torch and CUDA versions
#   epoch.txt        benchmarks/gpu_epoch.py: one CIFAR-scale epoch (configs/cifar10.yaml: ResNet-18,
#                    8 batch-norm splits, batch 512, K=4096, blur off; 50k uint8 images on the device),
#                    eager, then plain batch-norm and cudnn.benchmark for comparison; any host sync in a
#                    step raises (torch.cuda.set_sync_debug_mode("error")). Target: <= 3 s an epoch
#   throughput.txt   benchmarks/throughput.py --device cuda --cifar-scale: ours against the
#                    reference pipeline (DataLoader workers of per-image transforms). Target: >= 2x
#   bands.txt        benchmarks/band_overhead.py at K=65536, batch 256, ResNet-18 on 32x32x3:
#                    every policy against `all`. Target: <= 5% each
#   shares.txt       benchmarks/band_overhead.py --shares-cost at the same scale: a few policies with the
#                    log's gradient shares (pretrain.share_queries) against the same without. Target: <= 3%
#   compile.txt      the epoch with torch.compile'd encoders (last: compiling takes the longest)
#   *_profile.txt    where a figure misses its goal (or its step fails): torch.profiler's top 10
#                    kernels of one step by GPU time (epoch_profile, bands_profile: the worst policy's
#                    step at K=65536)
set -uo pipefail
smoke=0
if [ "${1:-}" = "--smoke" ]; then
    smoke=1
    shift
fi
out="${1:-${OUT:-/tmp/gpu_checks}}"
mkdir -p "$out"
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py="${NEGATIVES_GPU_PYTHON:-python3}"
limit="${NEGATIVES_STEP_LIMIT:-150}"
failed=0

step() {  # step NAME COMMAND...: run (bounded), keep its output in NAME.txt, count a failure
    local name="$1"
    shift
    echo "==> $name: $*" | tee -a "$out/$name.txt"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$out/$name.txt"
    local status=${PIPESTATUS[0]}
    [ "$status" = 124 ] && echo "==> $name: cut after $limit s" | tee -a "$out/$name.txt"
    echo "==> $name: exit $status after $((SECONDS - start)) s" | tee -a "$out/$name.txt"
    [ "$status" = 0 ] || failed=$((failed + 1))
    return "$status"
}

# the last "epoch N s" a step printed, and whether it is within the goal
epoch_seconds() { grep -o 'epoch [0-9.]* s' "$out/$1.txt" | tail -1 | awk '{print $2}'; }
over() { awk -v x="$1" -v goal="$2" 'BEGIN { exit !(x == "" || x > goal) }'; }

step env "$py" -c 'import torch, platform
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "none (CPU)")'
if [ "$smoke" = 1 ]; then
    dev=(--device cpu --tiny)
    epoch_goal=0 bands_goal=0   # every path taken: the profiles of missed goals too
    bands=(--steps 2 --warmup 1 --policies all 'keep[95_100)' 'mochi[16_8_4]')
    shares=(--shares-cost --steps 2 --warmup 1 --policies all 'keep[95_100)')
    throughput=(--steps 2 --block 1 --warmup 1 --settle 0 --workers 1 --threads 1)
else
    command -v nvidia-smi >/dev/null && step env nvidia-smi
    dev=()
    epoch_goal=3 bands_goal=1.05
    bands=(--all-policies --device cuda --queue 65536 --batch 256 --backbone resnet18 --image-size 32 --channels 3
           --steps 20)
    shares=(--shares-cost --policies all 'keep[95_100)' 'drop[99.9_100)@replace' 'mochi[256_128_64_1]' --device cuda
            --queue 65536 --batch 256 --backbone resnet18 --image-size 32 --channels 3 --steps 10 --warmup 3)
    # the reference with as many DataLoader workers as the public code's CIFAR demos use, and more
    throughput=(--device cuda --cifar-scale --steps 12 --block 6 --threads 4 --workers 4 8 "$(($(nproc) - 1))")
fi

step epoch "$py" benchmarks/gpu_epoch.py "${dev[@]}"
if over "$(epoch_seconds epoch)" "$epoch_goal"; then
    # missed or failed: where the time goes, and any host sync named (warn, not raise)
    step epoch "$py" benchmarks/gpu_epoch.py "${dev[@]}" --sync-debug warn --profile "$out/epoch_profile.txt"
fi
step epoch "$py" benchmarks/gpu_epoch.py "${dev[@]}" --bn-splits 1
[ "$smoke" = 1 ] || step epoch "$py" benchmarks/gpu_epoch.py "${dev[@]}" --cudnn-benchmark
step throughput "$py" benchmarks/throughput.py "${throughput[@]}"
step bands "$py" benchmarks/band_overhead.py "${bands[@]}"
# the policy furthest over `all` (band_overhead's table: policy, images/s, step ms, all ms, ratio), if over 5%
worst=$(awk -v goal="$bands_goal" '$5 ~ /x$/ { r = $5; sub(/x$/, "", r); if (r > best) { best = r; name = $1 } }
             END { if (best > goal) print name }' "$out/bands.txt")
if [ -n "$worst" ]; then
    if [ "$smoke" = 1 ]; then
        step bands "$py" benchmarks/gpu_epoch.py "${dev[@]}" --policy "$worst" --profile "$out/bands_profile.txt"
    else
        step bands "$py" benchmarks/gpu_epoch.py --policy "$worst" --queue 65536 --batch 256 --warmup 2 \
            --images 5120 --profile "$out/bands_profile.txt"
    fi
fi
step shares "$py" benchmarks/band_overhead.py "${shares[@]}"
# (not in --smoke: compiling on a CPU takes minutes and checks nothing of ours)
[ "$smoke" = 1 ] || step compile "$py" benchmarks/gpu_epoch.py "${dev[@]}" --compile
echo "==> $failed failed step(s); outputs in $out"
exit "$failed"
