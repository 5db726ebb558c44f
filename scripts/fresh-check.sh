#!/usr/bin/env bash
# Runs the README's two commands as a newcomer would: in a fresh clone of this repository's
# committed HEAD, inside a clean Debian bookworm root (mmdebstrap --variant=minbase: no compiler,
# no Python, no libclang), with only the Rust toolchain brought in (the ~/.cargo/bin proxies and
# ~/.rustup, bind-mounted read-only; cargo gets a writable CARGO_HOME inside the root and fetches
# crates from crates.io). Needs root, network access to a Debian mirror and crates.io, and a few
# GB of disk. Prints one line per command with its result and duration; the full output of each
# goes to the log folder (default target/fresh-check). Exit 0 when both commands succeed.
# `CI`, when set, is passed in: tests that would skip for a missing tool then fail instead.
#
#   scripts/fresh-check.sh [--logs DIR] [--keep]     (--keep leaves the root in place)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
logs="$repo/target/fresh-check"
keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --logs) logs=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        *) echo "usage: $0 [--logs DIR] [--keep]" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" -eq 0 ] || { echo "fresh-check: needs root (mmdebstrap, chroot, mounts)" >&2; exit 2; }

# The README's set-up commands, run in the clone's root folder.
COMMANDS=(
    "scripts/setup.sh && cargo run --release -- run --duration 30"
    "scripts/setup.sh && cargo test --release --workspace --features test-hooks"
)

cargo_bin=${CARGO_HOME:-$HOME/.cargo}/bin
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
[ -x "$cargo_bin/cargo" ] || { echo "fresh-check: no cargo in $cargo_bin" >&2; exit 2; }
[ -d "$rustup_home/toolchains" ] || { echo "fresh-check: no toolchains in $rustup_home" >&2; exit 2; }

mkdir -p "$logs"
work=$(mktemp -d /var/tmp/vla-rt-fresh.XXXXXX)
root="$work/root"
mounted=()

cleanup() {
    local status=$?
    # Innermost first; lazily, so a process still holding a mount cannot keep the others.
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
        umount -l "${mounted[$i]}" 2>/dev/null || echo "fresh-check: could not unmount ${mounted[$i]}" >&2
    done
    if [ "$keep" -eq 1 ]; then
        echo "fresh-check: root kept in $root"
    elif ! grep -q " $work/" /proc/mounts; then
        rm -rf "$work"
    else
        echo "fresh-check: $work still has mounts; not removed" >&2
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mount_into() { # SOURCE TARGET [ro] : bind-mount, optionally read-only
    mkdir -p "$2"
    mount --bind "$1" "$2"
    mounted+=("$2")
    if [ "${3:-}" = ro ]; then
        mount -o remount,bind,ro "$2"
    fi
}

seconds() { echo $(($(date +%s) - $1)); }

if ! command -v mmdebstrap >/dev/null; then
    echo "fresh-check: installing mmdebstrap (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null
fi

start=$(date +%s)
if mmdebstrap --variant=minbase --quiet bookworm "$root" >"$logs/mmdebstrap.log" 2>&1; then
    echo "fresh-check: mmdebstrap --variant=minbase bookworm: ok ($(seconds "$start") s)"
else
    echo "fresh-check: mmdebstrap --variant=minbase bookworm: FAILED ($(seconds "$start") s; $logs/mmdebstrap.log)"
    exit 1
fi

mkdir -p "$root/proc" "$root/sys" "$root/dev"
mount -t proc proc "$root/proc"
mounted+=("$root/proc")
mount_into /sys "$root/sys" ro
mount_into /dev "$root/dev"
# apt keeps its terminal log through a pseudo-terminal.
if mountpoint -q /dev/pts; then mount_into /dev/pts "$root/dev/pts"; fi
mount_into "$cargo_bin" "$root/opt/cargo/bin" ro
mount_into "$rustup_home" "$root/opt/rustup" ro
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
# The network's own trust: certificate authorities this machine adds (a proxy's, a company's)
# are handed to the root the same way, so that when setup.sh installs ca-certificates they
# join the root's bundle and pip and cargo reach their registries.
if [ -d /usr/local/share/ca-certificates ]; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
fi

git clone --quiet --no-local "$repo" "$root/src/vla-rt"
git -C "$root/src/vla-rt" checkout --quiet "$(git -C "$repo" rev-parse HEAD)"
echo "fresh-check: clone of $(git -C "$repo" rev-parse --short HEAD) in a clean bookworm root"

status=0
for i in "${!COMMANDS[@]}"; do
    command=${COMMANDS[$i]}
    log="$logs/command-$((i + 1)).log"
    start=$(date +%s)
    if chroot "$root" /usr/bin/env -i \
        HOME=/root \
        PATH=/opt/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        CARGO_HOME=/root/.cargo RUSTUP_HOME=/opt/rustup CARGO_TERM_COLOR=never LANG=C.UTF-8 \
        ${CI:+CI=$CI} \
        /bin/bash -c "cd /src/vla-rt && $command" >"$log" 2>&1; then
        echo "fresh-check: $command: ok ($(seconds "$start") s)"
        # The first command builds the service as a user does: no test hook may be in it.
        # The second builds it for the tests, with them (so the first check is seen to bite).
        case $i in
            0) check=--binary ;;
            *) check=--hooks ;;
        esac
        if ! "$repo/scripts/check-layers.sh" "$check" "$root/src/vla-rt/target/release/vla-rt"; then
            status=1
            break
        fi
    else
        rc=$?
        echo "fresh-check: $command: FAILED with exit code $rc ($(seconds "$start") s; $log)"
        tail -n 20 "$log" | sed 's/^/    /'
        status=1
        break
    fi
done
exit "$status"
