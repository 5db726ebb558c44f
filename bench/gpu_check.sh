#!/usr/bin/env bash
# The one prepared check of the CUDA backend on a GPU machine, with a release binary built
# elsewhere (target/release/vla-rt, stripped): driver, parity against the CPU backend on the
# tiny fixture, `predict` and the service (`run`) with the CUDA backend, the 7B-shape
# benchmark, the OpenVLA-OFT chunk path (parity on its fixture, a chunk of 8 at 7B shapes), remote inference (robots per server), and the PyTorch comparison on the same card in the same run. Prints a short summary at the end; full logs go to $LOG_DIR (default $OUT or
# /tmp/vla-rt-gpu-check). Budget: well under 8 minutes on an H100/H200.
#
#   bench/gpu_check.sh [path/to/vla-rt]
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/vla-rt}
LOG_DIR=${LOG_DIR:-${OUT:-/tmp/vla-rt-gpu-check}}
RUNS=${RUNS:-10}
mkdir -p "$LOG_DIR"
rm -f "$LOG_DIR/bench_variants_alone.txt" "$LOG_DIR/oft_parity.txt"
status=0

step() { echo; echo "=== $* ($(date +%T))"; }

step "driver"
if ! nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader; then
    echo "no NVIDIA driver: nothing to check here"; exit 2
fi
# NVRTC and cuBLAS: the toolkit's, else the Python wheels' (the binary also searches both).
. bench/cuda_env.sh
[ -x "$BIN" ] || { echo "binary $BIN missing (build with cargo build --release here or carry it)"; exit 2; }

step "parity: cuda vs cpu on tests/fixtures/openvla-tiny (fp16 and int8)"
timeout ${PARITY_TIMEOUT:-150} "$BIN" bench --backend cuda --parity tests/fixtures/openvla-tiny --model engines/openvla-tiny \
    2>&1 | tee "$LOG_DIR/parity.txt"
parity_rc=${PIPESTATUS[0]}
[ "$parity_rc" -eq 0 ] || status=1

step "predict and the service with --backend cuda (tiny checkpoint)"
# predict: the CUDA tokens against the CPU's on the first fixture case.
case_dir=tests/fixtures/openvla-tiny/case0_224_square
instruction=$(python3 -c 'import json; print(json.load(open("tests/fixtures/openvla-tiny/expected.json"))["cases"][0]["instruction"])')
tokens() { python3 -c 'import json, sys; print(json.load(sys.stdin)["tokens"])'; }
cpu_tokens=$(timeout 60 "$BIN" predict --model engines/openvla-tiny --image "$case_dir/image.png" \
    --instruction "$instruction" --unnorm-key tiny_bridge --json 2>"$LOG_DIR/predict_cpu.err" | tokens)
cuda_tokens=$(timeout 60 "$BIN" predict --backend cuda --model engines/openvla-tiny --image "$case_dir/image.png" \
    --instruction "$instruction" --unnorm-key tiny_bridge --json 2>"$LOG_DIR/predict_cuda.err" | tokens)
echo "predict tokens: cpu $cpu_tokens, cuda $cuda_tokens"
if [ -n "$cuda_tokens" ] && [ "$cpu_tokens" = "$cuda_tokens" ]; then predict_rc=0; else predict_rc=1; status=1; tail -3 "$LOG_DIR/predict_cuda.err"; fi
# The service: the bundled default configuration with backend = "cuda", 8 s, exit 0 with
# commands published.
sed -e 's|^path = .*|path = "'"$PWD"'/engines/openvla-tiny"|' -e 's|^backend = .*|backend = "cuda"|' \
    config/default.toml > "$LOG_DIR/cuda.toml"
timeout 90 "$BIN" run --config "$LOG_DIR/cuda.toml" --duration 8 > "$LOG_DIR/run_cuda.txt" 2>&1
run_rc=$?
tail -4 "$LOG_DIR/run_cuda.txt"
if ! grep -q "stopped after [1-9][0-9]* commands" "$LOG_DIR/run_cuda.txt" && [ "$run_rc" -eq 0 ]; then run_rc=1; fi
[ "$run_rc" -eq 0 ] || status=1

step "vla-rt bench --backend cuda --random-weights --shape openvla-7b"
timeout ${BENCH_TIMEOUT:-180} "$BIN" bench --backend cuda --random-weights --shape openvla-7b --runs "$RUNS" --warmup 3 \
    --template engines/openvla-tiny 2>&1 | tee "$LOG_DIR/bench_cuda.txt"
bench_rc=${PIPESTATUS[0]}
[ "$bench_rc" -eq 0 ] || status=1
# A variant group that failed may have taken the context with it (a kernel fault), and the
# groups after it with that: each failed group runs again alone, in a fresh process.
failed_groups=$(sed -n 's/^benchmark variant group \([a-z]*\) failed:.*/\1/p' "$LOG_DIR/bench_cuda.txt")
rerun_rc=none
if [ -n "$failed_groups" ]; then
    step "failed variant groups again, each alone: $(echo $failed_groups)"
    rerun_rc=0
    for group in $failed_groups; do
        VLA_RT_BENCH_ONLY=variants VLA_RT_BENCH_VARIANTS=$group timeout ${RERUN_TIMEOUT:-120} \
            "$BIN" bench --backend cuda --random-weights --shape openvla-7b --runs "$RUNS" --warmup 3 \
            --template engines/openvla-tiny 2>&1 | tee -a "$LOG_DIR/bench_variants_alone.txt"
        [ "${PIPESTATUS[0]}" -eq 0 ] || rerun_rc=1
    done
fi

step "OpenVLA-OFT chunk path: cuda vs cpu on tests/fixtures/openvla-oft-tiny, and a chunk of 8 at 7B shapes"
# The fixture's checkpoints as tests/common/oft.rs assembles them: the tiny checkpoint's
# files, the fixture's heads and statistics, and vla_rt_model.json with the case's OFT keys.
# case0: one camera, no robot state; case1: two cameras and the robot state.
oft_parity_rc=0
for oft_case in case0_one_image case1_two_images_proprio; do
    oft_dir=$LOG_DIR/oft-$oft_case
    rm -rf "$oft_dir" && mkdir -p "$oft_dir"
    cp engines/openvla-tiny/* "$oft_dir"/
    cp tests/fixtures/openvla-oft-tiny/action_head--1000_checkpoint.pt tests/fixtures/openvla-oft-tiny/dataset_statistics.json "$oft_dir"/
    python3 - "$oft_case" engines/openvla-tiny/vla_rt_model.json tests/fixtures/openvla-oft-tiny/expected.json \
        > "$oft_dir/vla_rt_model.json.new" <<'PY'
import json, sys
name, runtime_path, expected_path = sys.argv[1:4]
runtime = json.load(open(runtime_path))
case = next(c for c in json.load(open(expected_path))["cases"] if c["name"] == name)
for key in ("num_actions_chunk", "num_images_in_input", "action_normalization"):
    runtime[key] = case["vla_rt_model"][key]
print(json.dumps(runtime))
PY
    mv "$oft_dir/vla_rt_model.json.new" "$oft_dir/vla_rt_model.json"
    if [ "$oft_case" = case1_two_images_proprio ]; then
        cp tests/fixtures/openvla-oft-tiny/proprio_projector--1000_checkpoint.pt "$oft_dir"/
    fi
    timeout ${OFT_PARITY_TIMEOUT:-90} "$BIN" bench --backend cuda --parity tests/fixtures/openvla-oft-tiny --model "$oft_dir" \
        2>&1 | tee -a "$LOG_DIR/oft_parity.txt"
    [ "${PIPESTATUS[0]}" -eq 0 ] || oft_parity_rc=1
done
[ "$oft_parity_rc" -eq 0 ] || status=1
# One token-path action against one chunk of 8 on the same random 7B-shape model.
timeout ${OFT_BENCH_TIMEOUT:-150} "$BIN" bench --backend cuda --random-weights --shape openvla-7b --oft-chunk 8 \
    --runs "$RUNS" --warmup 3 --template engines/openvla-tiny 2>&1 | tee "$LOG_DIR/oft_bench.txt"
oft_bench_rc=${PIPESTATUS[0]}
[ "$oft_bench_rc" -eq 0 ] || status=1

step "remote inference on the GPU: vla-rt bench remote --backend cuda (tiny checkpoint), robots per server"
# The robots-per-server table of BENCHMARKS.md ("Remote inference") with the server on the
# CUDA backend: loopback through an in-process router, 1 to 8 simulated robots, unbatched and
# batched (CUDA runs a batch's requests one after another), plus the local-against-remote hop.
timeout ${REMOTE_TIMEOUT:-120} "$BIN" bench remote --backend cuda --model engines/openvla-tiny \
    --robots 1,2,4,8 --actions 20 2>&1 | tee "$LOG_DIR/bench_remote.txt"
remote_rc=${PIPESTATUS[0]}
[ "$remote_rc" -eq 0 ] || status=1

# TensorRT encoders, wherever trtexec and libnvinfer.so.10 are installed: export the tiny
# checkpoint, build its engines, parity against the CPU backend, the vision path and each
# engine's time (trtexec's own GPU compute time beside it).
trt_rc=skipped
TRTEXEC=${TRTEXEC:-$(command -v trtexec || { [ -x /usr/src/tensorrt/bin/trtexec ] && echo /usr/src/tensorrt/bin/trtexec; })}
TRT_LIB=${TRT_LIB:-$(ldconfig -p 2>/dev/null | awk '/libnvinfer\.so\.10 /{print $NF; exit}')}
if [ -n "$TRTEXEC" ] && [ -n "$TRT_LIB" ]; then
    step "TensorRT encoders on the tiny checkpoint ($TRT_LIB)"
    trt_dir=$LOG_DIR/tensorrt
    rm -rf "$trt_dir"
    {
        "$BIN" export-onnx --model engines/openvla-tiny --out "$trt_dir/onnx" \
        && TRTEXEC=$TRTEXEC engines/build-trt.sh "$trt_dir/onnx" "$trt_dir/engines" \
        && timeout ${TRT_TIMEOUT:-120} "$BIN" bench --backend tensorrt --model engines/openvla-tiny \
            --engines "$trt_dir/engines" --tensorrt-library "$TRT_LIB" --parity tests/fixtures/openvla-tiny \
        && timeout ${TRT_TIMEOUT:-120} "$BIN" bench --backend tensorrt --model engines/openvla-tiny \
            --engines "$trt_dir/engines" --tensorrt-library "$TRT_LIB" --runs "$RUNS" --warmup 3 \
        && echo "the CUDA backend's own kernels on the same checkpoint, for comparison:" \
        && timeout ${TRT_TIMEOUT:-120} "$BIN" bench --backend cuda --model engines/openvla-tiny --runs "$RUNS" --warmup 3
    } 2>&1 | tee "$LOG_DIR/tensorrt.txt"
    trt_rc=${PIPESTATUS[0]}
    for engine in dinov2 siglip; do
        [ -f "$trt_dir/engines/$engine.plan" ] || continue
        "$TRTEXEC" --loadEngine="$trt_dir/engines/$engine.plan" --iterations=200 --useCudaGraph 2>&1 \
            | grep -E "GPU Compute Time" | sed "s/^/trtexec $engine: /" | tee -a "$LOG_DIR/tensorrt.txt"
    done
    [ "$trt_rc" -eq 0 ] || status=1
else
    echo "TensorRT: trtexec or libnvinfer.so.10 not found, TensorRT encoders not checked"
fi

torch_rc=skipped
if python3 -c 'import torch, timm, transformers; assert torch.cuda.is_available()' 2>/dev/null; then
    step "PyTorch on the same card (bench/torch_compare.py)"
    PYTHONUNBUFFERED=1 timeout ${TORCH_TIMEOUT:-200} python3 bench/torch_compare.py --runs "$RUNS" 2>&1 | tee "$LOG_DIR/torch.txt"
    torch_rc=${PIPESTATUS[0]}
else
    echo "torch/timm/transformers with CUDA not importable: PyTorch comparison skipped"
fi

step "summary ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -1))"
echo "parity exit $parity_rc, predict (cuda tokens = cpu tokens) $predict_rc, service run $run_rc, bench exit $bench_rc, failed variant groups alone $rerun_rc, oft parity $oft_parity_rc, oft chunk bench $oft_bench_rc, remote $remote_rc, tensorrt $trt_rc, torch exit $torch_rc"
grep -E "^oft parity:|^case[0-9].* (ok|FAIL)$" "$LOG_DIR/oft_parity.txt" 2>/dev/null || true
grep -E "^token path: whole action|^OFT chunk of [0-9]+: whole chunk|^one chunk of" "$LOG_DIR/oft_bench.txt" 2>/dev/null || true
grep -E "^tensorrt parity:|vision path \(both engines|^trtexec " "$LOG_DIR/tensorrt.txt" 2>/dev/null || true
grep -hE "^benchmark variant group" "$LOG_DIR/bench_cuda.txt" "$LOG_DIR/bench_variants_alone.txt" 2>/dev/null || true
grep -E "^parity:|FAIL" "$LOG_DIR/parity.txt" || true
grep -E "^\| [0-9]+ \|" "$LOG_DIR/bench_remote.txt" 2>/dev/null || true
printf '%-108s %10s %10s\n' "stage" "vla-rt ms" "torch ms"
for key in "encoder 0 (DINOv2) alone:dino" "encoder 1 (SigLIP) alone:siglip" \
           "both encoders, one stream:both_1stream" "both encoders, two streams:both_2streams" \
           "vision path, no graph:vision_eager" "vision path, one-stream CUDA graph:-" \
           "vision path, CUDA graph:vision_graph" \
           "llm prefill:prefill" "decode / token, fp16, graph:decode_token" \
           "decode / token, int8, graph:-" "decode / token, int4, graph:-" \
           "whole action, fp16:generate" "whole action, int8:-" "whole action, int4:-" \
           "decode / token, fp16, graph, tensor-core GEMVs:-" \
           "decode / token, int8, graph, tensor-core GEMVs:-" \
           "decode / token, int4, graph, tensor-core GEMVs:-" \
           "decode / token, fp16, graph, tensor-core GEMVs + fused RMSNorm + split attention:-" \
           "decode / token, int8, graph, tensor-core GEMVs + fused RMSNorm + split attention:-" \
           "decode / token, int4, graph, tensor-core GEMVs + fused RMSNorm + split attention:-" \
           "vision path, CUDA graph, f16 hi/lo scores:-" \
           "vision path, CUDA graph, tuned GEMMs:-" \
           "vision path, CUDA graph, tuned GEMMs + f16 hi/lo scores:-" \
           "llm prefill, tuned GEMMs:-" \
           "whole action, fp16, tensor-core GEMVs + fused RMSNorm + split attention, tuned GEMMs + f16 hi/lo scores:-" \
           "whole action, int8, tensor-core GEMVs + fused RMSNorm + split attention, tuned GEMMs + f16 hi/lo scores:-" \
           "whole action, int4, tensor-core GEMVs + fused RMSNorm + split attention, tuned GEMMs + f16 hi/lo scores:-" \
           "device copy (read + write):copy"; do
    ours=${key%%:*}; theirs=${key##*:}
    a=$(cat "$LOG_DIR/bench_cuda.txt" "$LOG_DIR/bench_variants_alone.txt" 2>/dev/null | grep -F "$ours" | head -1 | awk -v n="$ours" '{s=substr($0,length(n)+1); split(s,f," "); print f[1]}')
    b=$( [ "$theirs" != "-" ] && grep -E "^$theirs " "$LOG_DIR/torch.txt" 2>/dev/null | awk '{print $2}' )
    printf '%-108s %10s %10s\n' "$ours" "${a:--}" "${b:--}"
done
cat "$LOG_DIR/bench_cuda.txt" "$LOG_DIR/bench_variants_alone.txt" 2>/dev/null | grep -E "GB/s" | sed 's/^/  /' || true
grep -E "^# torch" "$LOG_DIR/torch.txt" 2>/dev/null || true
exit $status
