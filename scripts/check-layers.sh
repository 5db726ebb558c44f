#!/usr/bin/env bash
# The crate layers of ARCHITECTURE.md §1, checked on the dependency graph cargo resolves:
#   1. vla-model      (checkpoint, model math, backends, the Policy trait)
#   2. vla-control    (the real-time core)          vla-bench (the model's benchmarks)
#   3. vla-rt         (capture, transport, recording, service, command line, the binary)
#   4. vla-calib      (the install-time calibration tool)
# A crate may depend only on crates of a lower layer, and the two lower layers must not pull
# in Zenoh, clap, V4L2 or systemd, directly or through any dependency.
#
#   scripts/check-layers.sh                  # the graph (cargo metadata, no build)
#   scripts/check-layers.sh --binary FILE    # FILE, a release vla-rt built without the
#                                            # test-hooks feature, has no test hook in it
#   scripts/check-layers.sh --hooks FILE     # FILE, built with test-hooks, has the fault
#                                            # hook (so that the --binary check is seen to bite)
set -euo pipefail
cd "$(dirname "$0")/.."

# Strings and symbols only a test-hooks build has: the fault hook's variable and the fuzz
# harnesses' module.
hook_markers() {
    local binary=$1
    { strings -a "$binary" | grep -c 'VLA_RT_TEST_FAULT' || true; } | head -n 1
}
fuzz_symbols() {
    local binary=$1
    { nm -C "$binary" 2>/dev/null | grep -c 'vla_rt::fuzzing::' || true; } | head -n 1
}

case "${1:-}" in
    --binary|--hooks)
        binary=${2:?"usage: $0 $1 FILE"}
        [ -f "$binary" ] || { echo "check-layers: $binary: no such file" >&2; exit 2; }
        markers=$(hook_markers "$binary")
        fuzz=$(fuzz_symbols "$binary")
        if [ "$1" = --binary ]; then
            if [ "$markers" != 0 ] || [ "$fuzz" != 0 ]; then
                echo "check-layers: $binary holds test hooks (VLA_RT_TEST_FAULT: $markers, vla_rt::fuzzing symbols: $fuzz)" >&2
                exit 1
            fi
            echo "check-layers: $binary: no fault-injection hook, no fuzz harness"
        else
            # The binary never calls the fuzz harnesses, so even a test-hooks build links none
            # of them; the fault hook, which `run` reads, is the marker that must show.
            if [ "$markers" = 0 ]; then
                echo "check-layers: $binary was meant to hold the test hooks but does not (VLA_RT_TEST_FAULT: $markers): the --binary check would prove nothing" >&2
                exit 1
            fi
            echo "check-layers: $binary (test-hooks build): the fault-injection hook is present, as expected (vla_rt::fuzzing symbols: $fuzz)"
        fi
        exit 0
        ;;
    "") ;;
    *) echo "usage: $0 [--binary FILE | --hooks FILE]" >&2; exit 2 ;;
esac

# A clean clone has no target/ yet: this check runs before anything is built.
metadata=$(mktemp)
trap 'rm -f "$metadata"' EXIT
cargo metadata --format-version 1 --all-features > "$metadata"
python3 - "$metadata" <<'PY'
import json, sys

LAYER = {"vla-model": 1, "vla-control": 2, "vla-bench": 2, "vla-rt": 3, "vla-calib": 4}
# Crates the two lower layers must not reach, however indirectly.
FORBIDDEN_BELOW_SERVICE = {"zenoh", "clap", "v4l", "v4l2-sys-mit", "sd-notify"}
# The benchmarks may parse their own arguments.
ALLOWED = {"vla-bench": {"clap"}}

meta = json.load(open(sys.argv[1]))
packages = {p["id"]: p for p in meta["packages"]}
members = {packages[i]["name"]: i for i in meta["workspace_members"]}
unknown = sorted(set(members) - set(LAYER))
if unknown:
    sys.exit(f"check-layers: workspace crates without a layer: {', '.join(unknown)} (add them to LAYER and to ARCHITECTURE.md §1)")
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}

def normal_deps(pkg_id):
    """Dependencies that the crate's library and binaries are built with (no dev or build)."""
    for dep in nodes[pkg_id]["deps"]:
        if any(kind["kind"] is None for kind in dep["dep_kinds"]):
            yield dep["pkg"]

failures = []
for name, pkg_id in sorted(members.items()):
    for dep in normal_deps(pkg_id):
        dep_name = packages[dep]["name"]
        if dep_name in LAYER and LAYER[dep_name] >= LAYER[name]:
            failures.append(f"{name} (layer {LAYER[name]}) depends on {dep_name} (layer {LAYER[dep_name]}): an edge that does not point down")
    if LAYER[name] <= 2:
        seen, stack, parent = {pkg_id}, [pkg_id], {}
        while stack:
            current = stack.pop()
            for dep in normal_deps(current):
                if dep not in seen:
                    seen.add(dep)
                    parent[dep] = current
                    stack.append(dep)
        for dep in sorted(seen, key=lambda i: packages[i]["name"]):
            dep_name = packages[dep]["name"]
            if dep_name in FORBIDDEN_BELOW_SERVICE - ALLOWED.get(name, set()):
                chain, at = [dep_name], dep
                while at in parent:
                    at = parent[at]
                    chain.append(packages[at]["name"])
                failures.append(f"{name} reaches {dep_name}: {' -> '.join(reversed(chain))}")
if failures:
    print("\n".join(f"check-layers: {f}" for f in failures), file=sys.stderr)
    sys.exit(1)
for name in sorted(members, key=lambda n: (LAYER[n], n)):
    inner = sorted({packages[d]["name"] for d in normal_deps(members[name])} & set(LAYER))
    print(f"check-layers: layer {LAYER[name]} {name} -> {', '.join(inner) or '(no workspace crate)'}")
print("check-layers: every edge points down; vla-model and vla-control reach no Zenoh, clap, V4L2 or systemd crate")
PY
