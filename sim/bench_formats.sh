#!/usr/bin/env bash
# Success rate of the trained checkpoint per weight format, closed-loop through the real
# service (sim/eval.py), and its open-loop agreement with the f32 path on the held-out
# fixture (vla-rt bench quant). The figures in BENCHMARKS.md, "Closed loop in simulation".
#
#   sim/bench_formats.sh            # 100 episodes of at most 40 steps per format, seeds from 200000
#   EPISODES=20 sim/bench_formats.sh
#
# Needs target/release/vla-rt and sim/requirements.txt. Writes one JSON report per format
# and quant.txt to $OUT (default target/sim-bench), then prints a table.
set -euo pipefail
cd "$(dirname "$0")/.."
EPISODES=${EPISODES:-100}
SEED=${SEED:-200000}
# The expert needs about 10 action periods; 40 (4 s) leaves room for detours.
MAX_STEPS=${MAX_STEPS:-40}
MODEL=${MODEL:-engines/openvla-sim}
FIXTURES=${FIXTURES:-tests/fixtures/openvla-sim}
OUT=${OUT:-target/sim-bench}
mkdir -p "$OUT"

formats=(
    "f32|--quantization none --projector f32"
    "int8|--quantization int8 --projector int8"
    "int4|--quantization int4 --projector int8"
)
for entry in "${formats[@]}"; do
    name=${entry%%|*}
    # shellcheck disable=SC2086 # the options are words
    python3 sim/eval.py --model "$MODEL" --episodes "$EPISODES" --seed "$SEED" \
        --max-steps "$MAX_STEPS" ${entry#*|} --json \
        > "$OUT/$name.json"
done
target/release/vla-rt bench quant --model "$MODEL" --fixtures "$FIXTURES" > "$OUT/quant.txt"

python3 - "$OUT" "${formats[@]%%|*}" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
print("| weight format | success | 95 % CI | mean time to success | misses | overruns |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for name in sys.argv[2:]:
    r = json.loads((out / f"{name}.json").read_text())
    low, high = r["success_rate_ci95"]
    mean = r["mean_time_to_success_s"]
    print(f"| {name} (LLM {r['quantization']}, projector {r['projector']}) | "
          f"{r['successes']}/{r['episodes']} = {r['success_rate']:.0%} | {low:.0%}-{high:.0%} | "
          + (f"{mean:.2f} s" if mean is not None else "n/a")
          + f" | {r['service']['misses']} | {r['service']['overruns']} |")
EOF
grep -E '^\| (mode|---|LLM|projector)' "$OUT/quant.txt" | cut -d'|' -f1-4 | sed 's/$/|/'
