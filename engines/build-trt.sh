#!/usr/bin/env bash
# Builds the FP16 TensorRT engines of the vision encoders from `vla-rt export-onnx`'s output,
# on the machine (GPU model and TensorRT version) that will run them:
#
#   engines/build-trt.sh MODEL_ONNX_DIR OUT_DIR
#
# MODEL_ONNX_DIR holds dinov2.onnx, siglip.onnx and their manifest.json; OUT_DIR receives
# dinov2.plan, siglip.plan, the trtexec logs and manifest.json (TensorRT version, GPU name
# and compute capability, the ONNX files' hashes, the checkpoint fingerprint), which
# `backend = "tensorrt"` checks before loading anything.
#
# trtexec: $TRTEXEC, else `trtexec` on PATH, else /usr/src/tensorrt/bin/trtexec (JetPack).
# Extra trtexec options (e.g. --memPoolSize=workspace:2048M on a small Jetson) go in
# $TRTEXEC_ARGS. Shapes are fixed (batch 1, 224 px); I/O stays f32, the layers run in FP16.
set -euo pipefail

usage() { echo "usage: $0 MODEL_ONNX_DIR OUT_DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
onnx_dir=$1
out_dir=$2
[ -f "$onnx_dir/manifest.json" ] || { echo "$onnx_dir/manifest.json: missing (run vla-rt export-onnx --model DIR --out $onnx_dir)" >&2; exit 2; }

trtexec=${TRTEXEC:-}
if [ -z "$trtexec" ]; then
    if command -v trtexec >/dev/null; then trtexec=$(command -v trtexec)
    elif [ -x /usr/src/tensorrt/bin/trtexec ]; then trtexec=/usr/src/tensorrt/bin/trtexec
    else echo "trtexec not found: install TensorRT 10 (JetPack 6 has /usr/src/tensorrt/bin/trtexec) or set TRTEXEC" >&2; exit 2
    fi
fi
command -v python3 >/dev/null || { echo "python3 not found (it reads and writes the manifests)" >&2; exit 2; }
mkdir -p "$out_dir"

# One line per encoder: name, ONNX file, input name and shape (1x3x224x224), output name.
encoders=$(python3 - "$onnx_dir/manifest.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
if m.get("format") != "vla-rt onnx encoders v1":
    sys.exit(f"{sys.argv[1]}: not a vla-rt ONNX export manifest")
for e in m["encoders"]:
    print(e["name"], e["file"], e["input"]["name"], "x".join(map(str, e["input"]["shape"])))
PY
)

while read -r name file input shape; do
    echo "== $name: $onnx_dir/$file -> $out_dir/$name.plan"
    # shellcheck disable=SC2086
    # The graph's shapes are fixed ($input $shape), so no optimisation profile is needed.
    "$trtexec" --onnx="$onnx_dir/$file" --saveEngine="$out_dir/$name.plan" --fp16 \
        --skipInference ${TRTEXEC_ARGS:-} \
        > "$out_dir/$name.trtexec.log" 2>&1 || {
        echo "trtexec failed for $file; the last lines of $out_dir/$name.trtexec.log:" >&2
        tail -20 "$out_dir/$name.trtexec.log" >&2
        exit 1
    }
done <<< "$encoders"

# trtexec's log names the TensorRT version ("[TensorRT v100300]"), the device ("Selected
# Device: Orin") and its compute capability ("Compute Capability: 8.7").
python3 - "$onnx_dir" "$out_dir" <<'PY'
import hashlib, json, os, re, sys
onnx_dir, out_dir = sys.argv[1], sys.argv[2]
source = json.load(open(os.path.join(onnx_dir, "manifest.json")))
first = source["encoders"][0]["name"]
log = open(os.path.join(out_dir, f"{first}.trtexec.log"), errors="replace").read()

def find(pattern, what):
    m = re.search(pattern, log)
    if not m:
        sys.exit(f"{out_dir}/{first}.trtexec.log: no {what} in trtexec's output")
    return m.group(1).strip()

number = int(find(r"\[TensorRT v(\d+)\]", "TensorRT version"))
version = f"{number // 10000}.{number // 100 % 100}.{number % 100}"
gpu = find(r"Selected Device: (.+)", "device name")
capability = find(r"Compute Capability: (\d+\.\d+)", "compute capability")

def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()

engines = []
for e in source["encoders"]:
    onnx_path = os.path.join(onnx_dir, e["file"])
    digest = sha256(onnx_path)
    if digest != e["sha256"]:
        sys.exit(f"{onnx_path}: hash {digest} differs from the export manifest's {e['sha256']}")
    engines.append({
        "name": e["name"], "file": f"{e['name']}.plan", "onnx": e["file"], "onnx_sha256": digest,
        "input": e["input"], "output": e["output"],
    })
manifest = {
    "format": "vla-rt tensorrt engines v1",
    "tensorrt_version": version,
    "gpu": {"name": gpu, "compute_capability": capability},
    "checkpoint_fingerprint": source["checkpoint_fingerprint"],
    "precision": "fp16",
    "engines": engines,
}
with open(os.path.join(out_dir, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=2)
    f.write("\n")
print(f"{out_dir}/manifest.json: TensorRT {version}, {gpu} ({capability}), checkpoint {source['checkpoint_fingerprint']}")
PY
