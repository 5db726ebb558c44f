#!/usr/bin/env bash
# Soak test: `vla-rt run` at 50 Hz for an hour (default) with injected faults — camera stalls
# and unplugs (emulated V4L2 device), instruction floods (oversized, invalid UTF-8, blank),
# e-stop toggles, arm toggles when the service has arming, subscribers joining and leaving,
# a Zenoh router restart — sampling RSS, fds, threads, misses and latency p99 every minute,
# ending with a verdict (exit 0 only on PASS). The driver is bench/soak.py.
#
#   bench/soak.sh                  # one hour, a fault cycle every 5 minutes
#   bench/soak.sh --short          # the 3-minute version CI runs
#   bench/soak.sh --duration 1800 --out target/soak-30min
#
# Needs a release build (target/release/vla-rt, or VLA_RT_BIN), cc, and python3 with
# eclipse-zenoh 1.10.2 (scripts/setup.sh installs it). Results: OUT/samples.csv,
# OUT/verdict.txt, OUT/service.log (default OUT: target/soak).
set -euo pipefail
cd "$(dirname "$0")/.."

binary="${VLA_RT_BIN:-target/release/vla-rt}"
out="target/soak"
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --short)
            # Three fault cycles of 50 s, 20 s quiet at the end; the baseline after the first.
            args+=(--duration 180 --first-cycle 10 --cycle 50 --quiet 20 --sample-every 15)
            out="target/soak-short"
            ;;
        --out)
            out="$2"
            shift
            ;;
        *) args+=("$1") ;;
    esac
    shift
done

if [ ! -x "$binary" ]; then
    echo "soak: $binary is missing: build it first (cargo build --release)" >&2
    exit 2
fi
python3 -c 'import zenoh' 2>/dev/null || {
    echo "soak: the Python zenoh package is missing: run scripts/setup.sh" >&2
    exit 2
}
mkdir -p "$out"
emulator="$out/libv4l2emu.so"
"${CC:-cc}" -shared -fPIC -O2 -Wall -Wextra -Werror -o "$emulator" tests/v4l2emu/v4l2emu.c -ldl -lpthread
exec python3 bench/soak.py --binary "$binary" --emulator "$PWD/$emulator" --out "$out" "${args[@]}"
