#!/usr/bin/env bash
# The paper's Figure 2 on one GPU, in one command (configs/fashion-mnist-gpu.yaml:
# 18 ResNet-18 runs on the full Fashion-MNIST, jobs_per_gpu of them sharing the GPU):
#
#   bash benchmarks/gpu_figure2.sh [OUT_DIR]           # on a CUDA machine
#   bash benchmarks/gpu_figure2.sh --smoke [OUT_DIR]   # the same path, tiny, on CPU (checks the plumbing)
#
# Runs `snakemake fig2` with that config in OUT_DIR/work (default OUT_DIR:
# $OUT, else /tmp/gpu_figure2) and copies there what a reader needs:
#
#   fig2.pdf, fig2.png, fig2.csv   the figure and its table
#   logs/                          every job's log
#   summary.txt                    the device, date, command and wall time of the run
#   nvidia-smi.csv                 GPU utilisation and memory every 5 s during the run (on a GPU)
#
# Needs python3 (NEGATIVES_GPU_PYTHON) with torch, torchvision, numpy, pandas,
# matplotlib, seaborn, scipy, pyyaml, pillow and snakemake. Wheels of what a
# machine lacks (it may reach no package index) can travel with the tree in
# .whl/ (benchmarks/device_bundle.sh): they are installed into /tmp/site
# first, unless NEGATIVES_GPU_SITE names the folder a caller installed them
# into (benchmarks/device_all.sh). Snakemake schedules greedily: the runs only
# share the GPU's slots, and no ILP solver is needed. Fashion-MNIST is read from
# NEGATIVES_FASHION_MNIST, else .data/fashion-mnist (the IDX files carried
# with the tree), else Debian's /usr/share/datasets/fashion-mnist. The exit
# status is snakemake's.
set -uo pipefail
smoke=0
if [ "${1:-}" = "--smoke" ]; then
    smoke=1
    shift
fi
out="${1:-${OUT:-/tmp/gpu_figure2}}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
root="$PWD"
py="${NEGATIVES_GPU_PYTHON:-python3}"
if [ -n "${NEGATIVES_GPU_SITE:-}" ]; then
    export PYTHONPATH="$NEGATIVES_GPU_SITE${PYTHONPATH:+:$PYTHONPATH}"   # installed there by the caller
elif compgen -G ".whl/*.whl" >/dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export PATH="$(dirname "$(command -v "$py")"):$PATH"   # the jobs' `python` is this one

data="${NEGATIVES_FASHION_MNIST:-}"
if [ -z "$data" ]; then
    if [ -d .data/fashion-mnist ]; then data="$root/.data/fashion-mnist"; else data=/usr/share/datasets/fashion-mnist; fi
fi
work="$out/work"
mkdir -p "$work"
override="$work/override.yaml"
# the config is an overlay on config.yaml: read it layered, as the workflow does
slots=$("$py" -c 'from negatives.config_files import read_config
print(read_config("configs/fashion-mnist-gpu.yaml")["jobs_per_gpu"])')
if [ "$smoke" = 1 ]; then
    # the same workflow, tiny and on the CPU
    slots=2
    cat >"$override" <<EOF
datasets: {fashion-mnist: {root: "$data", train_images: 1200, test_images: 200}}
seeds: [0]
jobs_per_gpu: $slots
pretrain: {backbone: small-cnn, width: 4, dim: 16, epochs: 2, batch_size: 32, queue_size: 1024, bn_splits: 2,
           device: cpu, threads: 1, knn_monitor: 100, knn_monitor_every: 1}
evaluate: {device: cpu, threads: 1, fewshot_labels_per_class: 2, knn_k: 20}
analysis: {queries: 100, negatives: 120}
EOF
else
    echo "datasets: {fashion-mnist: {root: \"$data\"}}" >"$override"
fi

cmd=("$py" -m snakemake fig2 -s "$root/Snakefile" -d "$work" --cores "$(nproc)" --scheduler greedy
     --resources "gpu=$slots" --configfile "$root/configs/fashion-mnist-gpu.yaml" "$override")
smi=""
if [ "$smoke" = 0 ] && command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,memory.total --format=csv -l 5 >"$out/nvidia-smi.csv" &
    smi=$!
fi
echo "==> ${cmd[*]}"
start=$(date +%s)
"${cmd[@]}" 2>&1 | tee "$out/snakemake.log"
status=${PIPESTATUS[0]}
wall=$(($(date +%s) - start))
[ -n "$smi" ] && kill "$smi" 2>/dev/null

device=$("$py" -c 'import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU")')
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "device: $device ($(nproc) CPU cores)"
    echo "mode: $([ "$smoke" = 1 ] && echo 'smoke (tiny, CPU)' || echo 'configs/fashion-mnist-gpu.yaml')"
    echo "command: ${cmd[*]}"
    echo "wall time: ${wall} s"
    echo "snakemake exit status: $status"
} | tee "$out/summary.txt"
for ext in pdf png csv; do
    cp "$work/results/figures/fig2.$ext" "$out/" 2>/dev/null
done
[ -d "$work/logs" ] && cp -r "$work/logs" "$out/"
exit "$status"
