#!/usr/bin/env bash
# Per-kernel GPU time of one `vla-rt bench --backend cuda --random-weights --shape openvla-7b`
# run, read with Nsight Compute (one metric: gpu__time_duration), summed per kernel name and
# stage. For finding where the vision path, the prefill and a decode step spend their time;
# the figures of record come from bench/gpu_check.sh, not from this (ncu serialises kernels).
#
#   bench/gpu_profile.sh [path/to/vla-rt]        (LOG_DIR as in gpu_check.sh)
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/vla-rt}
LOG_DIR=${LOG_DIR:-${OUT:-/tmp/vla-rt-gpu-check}}
# Kernels before the timed stages: random weights (one fill per tensor) and the INT8/INT4
# copies (one kernel per linear layer and format).
SKIP=${SKIP:-1100}
COUNT=${COUNT:-12000}
mkdir -p "$LOG_DIR"
for d in /usr/local/cuda/lib64 $(python3 -c 'import nvidia,os;print(" ".join(os.path.join(p,"cu13","lib") for p in nvidia.__path__))' 2>/dev/null); do
    [ -d "$d" ] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
[ -n "$NCU" ] || { echo "ncu not found"; exit 2; }
timeout ${PROFILE_TIMEOUT:-300} "$NCU" --clock-control none --metrics gpu__time_duration.sum --csv \
    --print-units base --launch-skip "$SKIP" --launch-count "$COUNT" --log-file "$LOG_DIR/ncu.csv" \
    "$BIN" bench --backend cuda --random-weights --shape openvla-7b --runs 1 --warmup 1 \
    --template engines/openvla-tiny > "$LOG_DIR/profile_bench.txt" 2>&1
echo "ncu exit $?, $(grep -c gpu__time_duration "$LOG_DIR/ncu.csv" 2>/dev/null) kernels in $LOG_DIR/ncu.csv"
