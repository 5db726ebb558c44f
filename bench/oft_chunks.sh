#!/bin/bash
# Chunk against token on the tiny checkpoint, CPU: N predictions (default 30) through one policy
# load each, token path (engines/openvla-tiny) and OFT chunk of 8 (the OFT fixture heads beside
# it), f32 and INT8 LLM weights; medians over all but the first three. Needs target/release/vla-rt.
set -eu
cd "$(dirname "$0")/.."
mkdir -p target/oft-bench-out
N=${N:-30}
B=target/release/vla-rt
OFT=target/oft-bench
rm -rf $OFT; mkdir -p $OFT
cp engines/openvla-tiny/* $OFT/
cp tests/fixtures/openvla-oft-tiny/{action_head--1000_checkpoint.pt,dataset_statistics.json} $OFT/
python3 - <<'PY'
import json
p='target/oft-bench/vla_rt_model.json'
d=json.load(open(p)); d.update({"num_actions_chunk":8,"num_images_in_input":1,"action_normalization":"bounds_q99"})
json.dump(d,open(p,'w'))
PY
IMG=$PWD/tests/fixtures/openvla-tiny/case0_224_square/image.png
REQ=$PWD/target/oft-bench-out/requests.jsonl; : > $REQ
for i in $(seq $N); do echo "{\"image\": \"$IMG\", \"instruction\": \"put both the alphabet soup and the tomato sauce in the basket\"}" >> $REQ; done
for q in none int8; do
  $B predict --model engines/openvla-tiny --requests $REQ --quantization $q --unnorm-key tiny_bridge > target/oft-bench-out/token-$q.jsonl
  $B predict --model $OFT --requests $REQ --quantization $q > target/oft-bench-out/chunk-$q.jsonl
done
python3 - <<'PY'
import json, statistics
for q in ["none","int8"]:
    for kind in ["token","chunk"]:
        rows=[json.loads(l) for l in open(f"target/oft-bench-out/{kind}-{q}.jsonl")]
        rows=rows[3:]  # warm-up
        tot=[r["timings_ms"]["total"] for r in rows]
        n=len(rows[0]["actions"])
        med=statistics.median(tot)
        print(f"{q:5} {kind:5} n={len(rows)} actions/pred={n} median total {med:.2f} ms p90 {sorted(tot)[int(0.9*len(tot))]:.2f} ms  actions/s {n*1000/med:.1f}  prefill {statistics.median(r['timings_ms']['prefill'] for r in rows):.2f} decode {statistics.median(r['timings_ms']['decode'] for r in rows):.2f}")
PY
