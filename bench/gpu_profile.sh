#!/usr/bin/env bash
# Per-kernel GPU time of `vla-rt bench --backend cuda --random-weights --shape openvla-7b`
# (one timed run), read with Nsight Compute (one metric, gpu__time_duration; caches left as
# the previous kernel left them). Three passes: the vision stages, the language stages
# (prefill and the first FP16 decode steps), and every decode GEMV kernel and variant. For finding
# where time goes; the figures of record come from bench/gpu_check.sh (ncu serialises
# kernels, so short kernels read longer here than inside a CUDA graph).
#
#   bench/gpu_profile.sh [path/to/vla-rt]        (LOG_DIR as in gpu_check.sh)
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/vla-rt}
LOG_DIR=${LOG_DIR:-${OUT:-/tmp/vla-rt-gpu-check}}
# Kernels before the timed stages: random weights (one fill per tensor) and the INT8/INT4
# copies (one kernel per linear layer and format).
SKIP=${SKIP:-1100}
mkdir -p "$LOG_DIR"
. bench/cuda_env.sh
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
[ -n "$NCU" ] || { echo "ncu not found"; exit 2; }
profile() { # name, then extra ncu arguments
    local name=$1; shift
    timeout ${PROFILE_TIMEOUT:-120} "$NCU" --clock-control none --cache-control none \
        --metrics gpu__time_duration.sum --csv --print-units base --log-file "$LOG_DIR/ncu_$name.csv" "$@" \
        "$BIN" bench --backend cuda --random-weights --shape openvla-7b --runs 1 --warmup 1 \
        --template engines/openvla-tiny > "$LOG_DIR/profile_$name.txt" 2>&1
    echo "$name: ncu exit $?, $(grep -c gpu__time_duration "$LOG_DIR/ncu_$name.csv" 2>/dev/null) kernels"
}
VLA_RT_BENCH_ONLY=vision profile vision --launch-skip "$SKIP" --launch-count ${VISION_COUNT:-1400}
VLA_RT_BENCH_ONLY=language profile language --launch-skip "$SKIP" --launch-count ${LANGUAGE_COUNT:-2200}
# Every decode GEMV kernel, each variant in turn (VLA_RT_BENCH_ONLY=gemv: the GEMV rows only).
VLA_RT_BENCH_ONLY=gemv profile gemv --kernel-name regex:^gemv_ --launch-count ${GEMV_COUNT:-5000}
# With GEMV_DETAIL=1: Nsight Compute's throughput, memory and warp-stall sections for a few
# launches of the quantized GEMVs and of the tensor-core variants (why they stay below the
# copy bandwidth).
if [ "${GEMV_DETAIL:-0}" = 1 ]; then
    for kernel in gemv_i8 gemv_i4 gemv_f16_tc gemv_i8_tc gemv_i4_tc; do
        timeout ${PROFILE_TIMEOUT:-120} "$NCU" --clock-control none --cache-control none \
            --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \
            --section Occupancy --section LaunchStats --kernel-name "regex:^${kernel}\$" \
            --launch-skip 40 --launch-count 4 --log-file "$LOG_DIR/ncu_${kernel}_detail.txt" \
            env VLA_RT_BENCH_ONLY=gemv "$BIN" bench --backend cuda --random-weights \
            --shape openvla-7b --runs 1 --warmup 1 --template engines/openvla-tiny >/dev/null 2>&1
        echo "$kernel detail: ncu exit $?"
    done
fi
