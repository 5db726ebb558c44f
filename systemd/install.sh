#!/usr/bin/env bash
# Installs vla-rt as a systemd service: binaries, unit, config and calibration.
#
#   sudo systemd/install.sh [--config FILE] [--calib FILE] [--model DIR] [--bin-dir DIR]
#
# DESTDIR=/some/root installs into a staging root instead (no user creation, no systemctl),
# which is how the packaging and the tests use it.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
bin_dir="$repo/target/release"
config=""
calib=""
model=""
while [ $# -gt 0 ]; do
    case "$1" in
        --config) config=$2; shift 2 ;;
        --calib) calib=$2; shift 2 ;;
        --model) model=$2; shift 2 ;;
        --bin-dir) bin_dir=$2; shift 2 ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

root=${DESTDIR:-}
for b in vla-rt vla-calib; do
    [ -x "$bin_dir/$b" ] || { echo "install.sh: $bin_dir/$b not found: run 'cargo build --release' first" >&2; exit 2; }
done
[ -z "$config" ] || [ -f "$config" ] || { echo "install.sh: config $config not found" >&2; exit 2; }
[ -z "$calib" ] || [ -f "$calib" ] || { echo "install.sh: calibration $calib not found" >&2; exit 2; }
[ -z "$model" ] || [ -f "$model/config.json" ] || { echo "install.sh: model $model has no config.json" >&2; exit 2; }

install -d "$root/usr/local/bin" "$root/etc/vla-rt" "$root/etc/systemd/system" "$root/var/lib/vla-rt/models"
install -m 0755 "$bin_dir/vla-rt" "$bin_dir/vla-calib" "$root/usr/local/bin/"
install -m 0644 "$here/vla-rt.service" "$root/etc/systemd/system/vla-rt.service"
install -d "$root/usr/local/share/doc/vla-rt"
install -m 0644 "$repo/README.md" "$root/usr/local/share/doc/vla-rt/README.md"

# An existing config is the integrator's: never overwrite it silently.
if [ -n "$config" ]; then
    install -m 0644 "$config" "$root/etc/vla-rt/config.toml"
elif [ ! -f "$root/etc/vla-rt/config.toml" ]; then
    install -m 0644 "$repo/config/robot.example.toml" "$root/etc/vla-rt/config.toml"
fi
# The mutual-TLS Zenoh configuration robot.example.toml names (README, "Security").
[ -f "$root/etc/vla-rt/zenoh-mtls.json5" ] \
    || install -m 0644 "$repo/config/zenoh-mtls.example.json5" "$root/etc/vla-rt/zenoh-mtls.json5"
[ -z "$calib" ] || install -m 0644 "$calib" "$root/etc/vla-rt/calibration.toml"
if [ -n "$model" ]; then
    dest="$root/var/lib/vla-rt/models/$(basename "$model")"
    install -d "$dest"
    cp -r "$model"/. "$dest"/
fi

if [ -z "$root" ]; then
    if ! id vla-rt >/dev/null 2>&1; then
        useradd --system --no-create-home --home-dir /var/lib/vla-rt --shell /usr/sbin/nologin \
            --groups video vla-rt
    fi
    chown -R vla-rt:vla-rt /var/lib/vla-rt
    systemctl daemon-reload
    if [ -f /etc/vla-rt/calibration.toml ]; then
        echo "installed; start with: systemctl enable --now vla-rt"
    else
        echo "installed; calibrate, then start:"
        echo "  vla-calib --config /etc/vla-rt/config.toml --camera <its [camera] source> --out /etc/vla-rt/calibration.toml"
        echo "  systemctl enable --now vla-rt"
    fi
else
    echo "installed into $root"
fi
