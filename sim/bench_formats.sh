#!/usr/bin/env bash
# Outcomes of the trained checkpoint per weight format, closed-loop through the real service
# (sim/eval.py: reached the named block, another block or none, the success rate, the time
# to success, and sim/instruction.py's open-loop instruction measure for the format), and
# its open-loop agreement with the f32 path on the held-out fixture (vla-rt bench quant).
# The figures in BENCHMARKS.md, "Closed loop in simulation".
#
#   sim/bench_formats.sh            # 200 episodes of at most 40 steps per format, seeds from 200000
#   EPISODES=20 INSTRUCTION_SCENES=0 sim/bench_formats.sh
#
# Needs target/release/vla-rt and sim/requirements.txt. Writes one JSON report per format
# and quant.txt to $OUT (default target/sim-bench), then prints a table.
set -euo pipefail
cd "$(dirname "$0")/.."
# 200: the Wilson interval of a 30 % rate is then about +-6 points.
EPISODES=${EPISODES:-200}
SEED=${SEED:-200000}
# The expert needs about 10 action periods; 40 (4 s) leaves room for detours.
MAX_STEPS=${MAX_STEPS:-40}
MODEL=${MODEL:-engines/openvla-sim}
FIXTURES=${FIXTURES:-tests/fixtures/openvla-sim}
INSTRUCTION_SCENES=${INSTRUCTION_SCENES:-40}
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
        --max-steps "$MAX_STEPS" --instruction-scenes "$INSTRUCTION_SCENES" ${entry#*|} --json \
        > "$OUT/$name.json"
done
target/release/vla-rt bench quant --model "$MODEL" --fixtures "$FIXTURES" > "$OUT/quant.txt"

python3 - "$OUT" "${formats[@]%%|*}" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
print("| weight format | success | 95 % CI | other block | no block | time to success (mean, median) "
      "| instruction measure | ACT rate | misses | overruns |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for name in sys.argv[2:]:
    r = json.loads((out / f"{name}.json").read_text())
    low, high = r["success_rate_ci95"]
    mean, median = r["mean_time_to_success_s"], r["median_time_to_success_s"]
    other, none = r["outcomes"]["reached_other"], r["outcomes"]["reached_none"]
    measure = r["instruction_measure"]
    if measure is None or "skipped" in measure:
        measure_text = "not run"
    elif "error" in measure:
        measure_text = "failed"
    else:
        measure_text = f"{measure['overall']:.2f} ({measure['scenes']} scenes)"
    print(f"| {name} (LLM {r['quantization']}, projector {r['projector']}) | "
          f"{r['successes']}/{r['episodes']} = {r['success_rate']:.0%} | {low:.0%}-{high:.0%} | "
          f"{other['count']} ({other['share']:.0%}) | {none['count']} ({none['share']:.0%}) | "
          + (f"{mean:.2f} s, {median:.2f} s" if mean is not None else "n/a")
          + f" | {measure_text} | {r['robot']['act_rate_hz']:.1f} Hz"
          + f" | {r['service']['misses']} | {r['service']['overruns']} |")
EOF
grep -E '^\| (mode|---|LLM|projector)' "$OUT/quant.txt" | cut -d'|' -f1-4 | sed 's/$/|/'
