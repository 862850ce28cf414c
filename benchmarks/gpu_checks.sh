#!/usr/bin/env bash
# The GPU figures in one command, sized for one short lease of a GPU
# machine (about 8 minutes on an H100/H200; the device tool's `run`):
#
#   bash benchmarks/gpu_checks.sh [OUT_DIR]          # on a CUDA machine
#   bash benchmarks/gpu_checks.sh --smoke [OUT_DIR]  # the same commands, tiny, on CPU (checks the plumbing)
#
# Needs python3 with torch, torchvision, numpy, pyyaml and pillow (a GPU
# image's usual set; nothing is installed): the library is read from src/.
# Each step's output goes to OUT_DIR (default $OUT, else /tmp/gpu_checks)
# as one .txt file, and a failing step does not stop the others; the exit
# status is the number of failed steps.
#
#   env.txt          the GPU, driver, torch and CUDA versions
#   epoch.txt        benchmarks/gpu_epoch.py: one CIFAR-scale epoch (ResNet-18, batch 512, K=4096,
#                    50k uint8 images on the device), eager then compiled; any host sync in a
#                    step raises (torch.cuda.set_sync_debug_mode("error")). Target: <= 3 s an epoch
#   throughput.txt   benchmarks/throughput.py --device cuda --cifar-scale: ours against the
#                    reference pipeline (DataLoader workers of per-image transforms). Target: >= 2x
#   bands.txt        benchmarks/band_overhead.py at K=65536, batch 256, ResNet-18 on 32x32x3:
#                    every policy against `all`. Target: <= 5% each
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
failed=0

step() {  # step NAME COMMAND...: run, keep its output in NAME.txt, count a failure
    local name="$1"
    shift
    echo "==> $name: $*" | tee -a "$out/$name.txt"
    local start=$SECONDS
    "$@" 2>&1 | tee -a "$out/$name.txt"
    local status=${PIPESTATUS[0]}
    echo "==> $name: exit $status after $((SECONDS - start)) s" | tee -a "$out/$name.txt"
    [ "$status" = 0 ] || failed=$((failed + 1))
}

step env "$py" -c 'import torch, platform
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "none (CPU)")'
if [ "$smoke" = 1 ]; then
    step epoch "$py" benchmarks/gpu_epoch.py --tiny --device cpu
    step throughput "$py" benchmarks/throughput.py --steps 2 --block 1 --warmup 1 --settle 0 --workers 1 --threads 1
    step bands "$py" benchmarks/band_overhead.py --steps 2 --warmup 1 --policies all 'keep[95_100)' 'mochi[16_8_4]'
else
    command -v nvidia-smi >/dev/null && step env nvidia-smi
    step epoch "$py" benchmarks/gpu_epoch.py
    step epoch "$py" benchmarks/gpu_epoch.py --compile
    # the reference with as many DataLoader workers as the public code's CIFAR demos use, and more
    step throughput "$py" benchmarks/throughput.py --device cuda --cifar-scale --steps 12 --block 6 --threads 4 \
        --workers 4 8 "$(($(nproc) - 1))"
    step bands "$py" benchmarks/band_overhead.py --all-policies --device cuda --queue 65536 --batch 256 \
        --backbone resnet18 --image-size 32 --channels 3 --steps 20
fi
echo "==> $failed failed step(s); outputs in $out"
exit "$failed"
