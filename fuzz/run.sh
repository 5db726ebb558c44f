#!/usr/bin/env bash
# Fuzzes every target of fuzz/ (libFuzzer through cargo-fuzz, nightly Rust) for SECONDS each
# (default 600), at most JOBS targets at a time (default 2), under `nice -n 19`, in the working
# corpus fuzz/work/<target> (kept between runs, not in git). Then it minimizes that corpus into
# fuzz/corpus/<target>, the one kept in git and replayed by tests/fuzz_corpus.rs: the fewest
# inputs that reach every edge the working corpus reaches (a libFuzzer merge without hit
# counters, -use_counters=0). Crashes land in fuzz/artifacts/<target>/; the stats of each run in
# fuzz/work/<target>.log.
#
#   fuzz/run.sh                       # all targets, 10 minutes each
#   fuzz/run.sh 60 instruction raw_frame
#   fuzz/run.sh 0                     # minimize the working corpora only
#
# Installs cargo-fuzz from crates.io when it is missing. Built with debug assertions (overflow
# checks) and, by default, without AddressSanitizer (SANITIZER=address to add it): the parsers
# are safe Rust, where ASan finds little and halves the executions per second.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-600}"
shift || true
jobs="${JOBS:-2}"
flags=(-O -a --sanitizer "${SANITIZER:-none}")
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(command_record service_config calibration_file checkpoint quantized_file torch_pt instruction raw_frame mjpeg_frame ros2_message remote_message proprio_message)
fi
rustup toolchain list | grep '^nightly' >/dev/null || { echo "fuzz: needs a nightly toolchain (rustup toolchain install nightly)" >&2; exit 2; }
command -v cargo-fuzz >/dev/null || nice -n 19 cargo install cargo-fuzz --locked
nice -n 19 cargo +nightly fuzz build "${flags[@]}"
mkdir -p work

run_one() {
    local target="$1"
    mkdir -p "work/$target" "artifacts/$target"
    cp -n corpus/"$target"/* "work/$target/" 2>/dev/null || true
    local start=$SECONDS
    nice -n 19 cargo +nightly fuzz run "${flags[@]}" "$target" "work/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=2048 -max_len=65536 \
        -artifact_prefix="artifacts/$target/" >"work/$target.log" 2>&1 || echo "fuzz: $target stopped with a finding (see fuzz/work/$target.log)"
    local execs
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "work/$target.log" | grep -o '[0-9]*$' || echo "?")
    echo "fuzz: $target: $((SECONDS - start)) s, $execs executions, $(ls "artifacts/$target" | wc -l) artifacts"
}

if [ "$seconds" -gt 0 ]; then
    running=0
    for target in "${targets[@]}"; do
        run_one "$target" &
        running=$((running + 1))
        if [ "$running" -ge "$jobs" ]; then
            wait -n
            running=$((running - 1))
        fi
    done
    wait
fi

for target in "${targets[@]}"; do
    [ -d "work/$target" ] || { echo "fuzz: no working corpus work/$target to minimize" >&2; exit 2; }
    # Findings stay: a crash input reaches edges nothing else does.
    rm -rf "corpus/$target.new"
    mkdir -p "corpus/$target.new"
    nice -n 19 cargo +nightly fuzz run "${flags[@]}" "$target" "corpus/$target.new" "work/$target" -- \
        -merge=1 -use_counters=0 -max_len=65536 >"work/$target.cmin.log" 2>&1
    rm -rf "corpus/$target"
    mv "corpus/$target.new" "corpus/$target"
    echo "fuzz: $target corpus: $(ls "corpus/$target" | wc -l) files, $(cat "corpus/$target"/* | wc -c) bytes"
done
