#!/usr/bin/env bash
# Every GPU measurement in one command, for one short lease of a bare GPU
# machine (the device tool's `run`, carrying the bundle of
# benchmarks/device_bundle.sh); its bounds end it within 8 minutes:
#
#   bash benchmarks/device_all.sh [--smoke] [--checks-limit S] [--figure-limit S] [OUT_DIR]
#
#   device tool: run(command="bash benchmarks/device_all.sh", carry=[".whl", ".data"], timeout_s=570)
#
# 1. installs the wheels of .whl/ (NEGATIVES_WHEELS) into a scratch folder
#    (NEGATIVES_GPU_SITE, default /tmp/negatives-site) put on PYTHONPATH; none: nothing to install;
# 2. reads Fashion-MNIST from .data/fashion-mnist unless NEGATIVES_FASHION_MNIST names it;
# 3. runs benchmarks/gpu_checks.sh, then benchmarks/gpu_figure2.sh, each bounded in time
#    (--checks-limit, NEGATIVES_CHECKS_LIMIT: 160 s; --figure-limit, NEGATIVES_FIGURE_LIMIT: 250 s;
#    600 s and 900 s with --smoke): a part that overruns is cut, its whole process group
#    (snakemake's jobs, nvidia-smi) killed, and the next part still runs;
# 4. where Figure 2 misses its goal (not finished, over 10 minutes, or the GPU busy under 80% of
#    the time on average), a torch.profiler summary of one of its steps (30 s at most; always
#    with --smoke, to check the path).
# --smoke runs the parts' own --smoke modes: the same commands, tiny, on CPU.
#
# OUT_DIR (default $OUT, else /tmp/device_all) receives at most five files, each under 16 MiB:
#
#   summary.txt            the device, date, command, bundle and data; per part: exit status, wall
#                          time, cut or not (a failed part's last lines); the key result lines of each part
#   fig2.png, fig2.pdf, fig2.csv   the figure and its table, when made
#   logs.tar.gz            everything else: gpu_checks' .txt files, gpu_figure2's summary, snakemake.log,
#                          job logs and nvidia-smi.csv, each part's console output
#
# The python is NEGATIVES_GPU_PYTHON (default python3), for both parts;
# NEGATIVES_CHECKS_SCRIPT and NEGATIVES_FIGURE_SCRIPT replace the parts' scripts
# (the tests' stand-ins). The exit status is 0 only if the bundle installed, its
# imports work, and every part succeeded in time.
set -uo pipefail
smoke=0
checks_limit="${NEGATIVES_CHECKS_LIMIT:-}"
figure_limit="${NEGATIVES_FIGURE_LIMIT:-}"
out=""
args=("$@")
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) smoke=1; shift ;;
        --checks-limit) checks_limit="${2:?--checks-limit SECONDS}"; shift 2 ;;
        --figure-limit) figure_limit="${2:?--figure-limit SECONDS}"; shift 2 ;;
        -h | --help) awk 'NR > 1 && !/^#/ { exit } NR > 1' "${BASH_SOURCE[0]}"; exit 0 ;;
        -*) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) out="$1"; shift ;;
    esac
done
if [ "$smoke" = 1 ]; then
    checks_limit="${checks_limit:-600}" figure_limit="${figure_limit:-900}"
else
    checks_limit="${checks_limit:-160}" figure_limit="${figure_limit:-250}"
fi
out="${out:-${OUT:-/tmp/device_all}}"
mkdir -p "$out" && out="$(cd "$out" && pwd)" || exit 1
# paths given from the caller's folder, before moving to the repository's root
wheels="$(realpath -m "${NEGATIVES_WHEELS:-$(dirname "${BASH_SOURCE[0]}")/../.whl}")"
[ -n "${NEGATIVES_FASHION_MNIST:-}" ] && export NEGATIVES_FASHION_MNIST="$(realpath -m "$NEGATIVES_FASHION_MNIST")"
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
root="$PWD"
export NEGATIVES_GPU_PYTHON="${NEGATIVES_GPU_PYTHON:-python3}" PYTHONUNBUFFERED=1
py="$NEGATIVES_GPU_PYTHON"
# the parts' own output folders: only what is picked below goes to OUT_DIR
work="$(mktemp -d "${TMPDIR:-/tmp}/device_all.XXXXXX")" || exit 1
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/logs"
report="$work/report.txt"  # the summary's lines, in order
failed=0
note() { echo "$*" | tee -a "$report"; }

note "command: bash benchmarks/device_all.sh ${args[*]}"
note "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
note "mode: $([ "$smoke" = 1 ] && echo 'smoke (the parts tiny, on CPU)' || echo 'GPU')"

# ---------------------------------------------------------------- the bundle
site="$(realpath -m "${NEGATIVES_GPU_SITE:-/tmp/negatives-site}")"
if compgen -G "$wheels/*.whl" >/dev/null; then
    n=$(compgen -G "$wheels/*.whl" | wc -l)
    # a fresh folder, so that no package of an earlier bundle stays behind; only one this script made
    [ -f "$site/.device_all" ] && rm -rf "$site"
    start=$SECONDS
    if "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" "$wheels"/*.whl >"$work/logs/install.log" 2>&1; then
        touch "$site/.device_all"
        note "bundle: $n wheels of $wheels installed into $site in $((SECONDS - start)) s"
    else
        failed=$((failed + 1))
        note "bundle: FAILED to install the $n wheels of $wheels into $site; pip's last lines:"
        tail -n 5 "$work/logs/install.log" | sed 's/^/    /' | tee -a "$report"
    fi
elif [ -n "${NEGATIVES_GPU_SITE:-}" ]; then
    note "bundle: none in $wheels: the python's own packages and those in $site"
else
    site="$work/site"  # empty: set, it tells gpu_figure2.sh not to install .whl/ on its own
    mkdir -p "$site"
    note "bundle: none in $wheels: the python's own packages"
fi
export NEGATIVES_GPU_SITE="$site" PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"

# What the runs import, at once: a missing package shows here as one line, not deep in a job's log.
imports=$("$py" - 2>&1 <<'PY'
import importlib, platform
for m in "torch torchvision numpy pandas matplotlib seaborn scipy yaml PIL pyarrow jsonschema snakemake".split():
    try:
        importlib.import_module(m)
    except Exception as e:
        print(f"import failed: {m}: {type(e).__name__}: {e}")
try:
    import torch
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"device: {name}; python {platform.python_version()}, torch {torch.__version__}, cuda {torch.version.cuda}")
except Exception as e:
    print(f"device: unknown ({type(e).__name__}: {e})")
PY
)
device_line=$(grep '^device: ' <<<"$imports")
note "${device_line:-device: unknown ($py: $(tail -n 1 <<<"$imports"))} ($(nproc) CPU cores; $py)"
if grep -q '^import failed: ' <<<"$imports"; then
    failed=$((failed + 1))
    note "imports: FAILED"
    grep '^import failed: ' <<<"$imports" | sed 's/^/    /' | tee -a "$report"
else
    note "imports: ok (torch torchvision numpy pandas matplotlib seaborn scipy yaml PIL pyarrow jsonschema snakemake)"
fi

# ------------------------------------------------------------------ the data
if [ -z "${NEGATIVES_FASHION_MNIST:-}" ] && [ -d .data/fashion-mnist ]; then
    export NEGATIVES_FASHION_MNIST="$root/.data/fashion-mnist"
fi
note "data: ${NEGATIVES_FASHION_MNIST:-none given (gpu_figure2.sh looks in /usr/share/datasets/fashion-mnist)}"

# ----------------------------------------------------------------- the parts
# part NAME LIMIT COMMAND...: run it under `timeout` (which makes it a process group of its own and
# signals that whole group: TERM at LIMIT, KILL 5 s later), its output in logs/NAME.log and shown live
part() {
    local name="$1" limit="$2" start=$SECONDS pid status wall
    shift 2
    echo "==> $name: $* (limit $limit s)"
    : >"$work/logs/$name.log"
    timeout -k 5 "$limit" "$@" </dev/null >"$work/logs/$name.log" 2>&1 &
    pid=$!
    tail --pid="$pid" -n +1 -f "$work/logs/$name.log"
    wait "$pid"
    status=$?
    wall=$((SECONDS - start))
    kill -KILL -- "-$pid" 2>/dev/null  # whatever of the group outlived it
    if { [ "$status" = 124 ] || [ "$status" = 137 ]; } && [ "$wall" -ge "$limit" ]; then
        failed=$((failed + 1))
        note "$name: cut after $wall s (limit $limit s)"
    elif [ "$status" = 0 ]; then
        note "$name: ok (exit 0) in $wall s (limit $limit s)"
    else
        failed=$((failed + 1))
        note "$name: FAILED (exit $status) in $wall s (limit $limit s); its last lines:"
        tail -n 15 "$work/logs/$name.log" | sed 's/^/    /' | tee -a "$report"
    fi
}
mode=()
[ "$smoke" = 1 ] && mode=(--smoke)
part checks "$checks_limit" bash "${NEGATIVES_CHECKS_SCRIPT:-benchmarks/gpu_checks.sh}" "${mode[@]}" "$work/checks"
part figure2 "$figure_limit" bash "${NEGATIVES_FIGURE_SCRIPT:-benchmarks/gpu_figure2.sh}" "${mode[@]}" "$work/figure2"

# Figure 2's goal: finished within 10 minutes, the GPU busy over 80% of the time on average
fig_wall=$(sed -n 's/^wall time: \([0-9]*\) s$/\1/p' "$work/figure2/summary.txt" 2>/dev/null)
fig_util=$(awk -F', ' 'NR > 1 { u += $2 + 0; n++ } END { if (n) printf "%.0f", u / n }' \
    "$work/figure2/nvidia-smi.csv" 2>/dev/null)
missed=0
{ [ -z "$fig_wall" ] || [ "$fig_wall" -gt 600 ] || [ "${fig_util:-0}" -lt 80 ]; } && missed=1
if [ "$smoke" = 1 ] || { [ "$missed" = 1 ] && command -v nvidia-smi >/dev/null; }; then
    # one step of its runs, profiled (in --smoke always, to check the path)
    fig_step=(--config configs/fashion-mnist-gpu.yaml --channels 1 --size 28 --images 5120 --warmup 2)
    [ "$smoke" = 1 ] && fig_step=(--config configs/fashion-mnist-gpu.yaml --channels 1 --size 28 --tiny --device cpu)
    mkdir -p "$work/checks"
    part fig2_profile "$([ "$smoke" = 1 ] && echo 120 || echo 30)" env PYTHONPATH="$root/src:$PYTHONPATH" \
        "$py" benchmarks/gpu_epoch.py "${fig_step[@]}" --profile "$work/checks/fig2_profile.txt"
fi

# ------------------------------------------------------------ the key results
{
    echo
    echo "key results of checks (gpu_checks.sh; every line in logs.tar.gz: checks/*.txt):"
    for f in env epoch throughput bands compile; do
        if [ ! -f "$work/checks/$f.txt" ]; then
            [ "$f" = compile ] || echo "    $f.txt: not written"  # compile: not in --smoke
            continue
        fi
        grep -hE '^device |images/s, epoch|ours / reference, each|^worst overhead|^==> [a-z_]+: (exit|cut)' \
            "$work/checks/$f.txt" | sed 's/^/    /'
    done
    others=$(cd "$work/checks" 2>/dev/null && ls -- *.txt 2>/dev/null \
        | grep -vxE '(env|epoch|throughput|bands|compile)\.txt')
    [ -n "$others" ] && echo "    also written: $(echo $others)"
    echo
    echo "key results of figure2 (gpu_figure2.sh; its logs in logs.tar.gz: figure2/):"
    if [ -f "$work/figure2/summary.txt" ]; then
        grep -E '^(wall time|snakemake exit status):' "$work/figure2/summary.txt" | sed 's/^/    /'
    else
        echo "    summary.txt: not written (the part did not end on its own)"
    fi
    echo "    runs evaluated: $(find "$work/figure2/work/results" -name probe.json 2>/dev/null | wc -l)"
    if [ -s "$work/figure2/nvidia-smi.csv" ]; then
        # timestamp, utilization.gpu [%], memory.used [MiB], memory.total [MiB]
        awk -F', ' 'NR > 1 { u += $2 + 0; n++; if ($3 + 0 > m) m = $3 + 0 }
            END { if (n) printf "    GPU utilisation: mean %.0f%% over %d samples (every 5 s); " \
                                "memory used at most %d MiB\n", u / n, n, m }' \
            "$work/figure2/nvidia-smi.csv"
    fi
    for f in fig2.png fig2.pdf fig2.csv; do
        [ -s "$work/figure2/$f" ] && echo "    $f: $(stat -c %s "$work/figure2/$f") bytes"
    done
    echo
    echo "exit status: $failed (failed or cut: the bundle's install, the imports, the parts)"
} >>"$report"

# ------------------------------------------------------------------- OUT_DIR
for f in fig2.png fig2.pdf fig2.csv; do
    rm -f "$out/$f"
    [ -s "$work/figure2/$f" ] && cp "$work/figure2/$f" "$out/"
done
stage="$work/stage"
mkdir -p "$stage/figure2"
cp -r "$work/logs" "$stage/"
[ -d "$work/checks" ] && cp -r "$work/checks" "$stage/"
for f in summary.txt snakemake.log nvidia-smi.csv logs; do
    [ -e "$work/figure2/$f" ] && cp -r "$work/figure2/$f" "$stage/figure2/"
done
# the 16 MiB a returned file may hold: a runaway log keeps its last 4 MiB
find "$stage" -type f -size +4M -exec sh -c 'tail -c 4M "$1" >"$1.tail" && mv "$1.tail" "$1"' _ {} \;
tar -czf "$out/logs.tar.gz" -C "$stage" . || failed=$((failed + 1))
cp "$report" "$out/summary.txt"
echo "==> summary ($out/summary.txt):"
cat "$out/summary.txt"
exit "$failed"
