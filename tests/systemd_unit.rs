#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The shipped systemd unit: it must pass `systemd-analyze verify` and keep its hardening
//! (exposure level at most 2.5, "OK"), and the install script must stage every file.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Fails the test when systemd-analyze is missing: `scripts/setup.sh` installs it.
fn require_systemd_analyze() {
    assert!(
        Command::new("systemd-analyze")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "systemd-analyze is missing; scripts/setup.sh installs it (apt package systemd)"
    );
}

/// The unit with its `ExecStart` binary pointed at the freshly built one, so that `verify`
/// can check it exists and is executable.
fn unit_with_built_binary(dir: &Path) -> PathBuf {
    let unit = std::fs::read_to_string(repo().join("systemd/vla-rt.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/vla-rt run --config /etc/vla-rt/config.toml"));
    let unit = unit.replace("/usr/local/bin/vla-rt", env!("CARGO_BIN_EXE_vla-rt"));
    let path = dir.join("vla-rt.service");
    std::fs::write(&path, unit).unwrap();
    path
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vla-rt-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    require_systemd_analyze();
    let dir = temp_dir("unit-verify");
    let unit = unit_with_built_binary(&dir);
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unit_exposure_level_is_ok() {
    require_systemd_analyze();
    let dir = temp_dir("unit-security");
    let unit = unit_with_built_binary(&dir);
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level in: {text}"));
    let level: f64 = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("unparsable exposure line: {line}"));
    assert!(level <= 2.5, "exposure level {level} > 2.5: {line}");
    assert!(line.contains("OK"), "{line}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn install_script_stages_binaries_unit_and_config() {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_vla-rt"))
        .parent()
        .unwrap()
        .to_path_buf();
    assert!(
        bin_dir.join("vla-calib").exists(),
        "vla-calib is not built next to vla-rt: run the tests with --workspace"
    );
    let root = temp_dir("install-root");
    let out = Command::new(repo().join("systemd/install.sh"))
        .arg("--bin-dir")
        .arg(&bin_dir)
        .env("DESTDIR", &root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "install.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "usr/local/bin/vla-rt",
        "usr/local/bin/vla-calib",
        "etc/systemd/system/vla-rt.service",
        "etc/vla-rt/config.toml",
        "etc/vla-rt/zenoh-mtls.json5",
    ] {
        assert!(root.join(f).is_file(), "{f} not installed");
    }
    // A second run keeps the integrator's edited config.
    std::fs::write(
        root.join("etc/vla-rt/config.toml"),
        "robot_id = \"edited\"\n",
    )
    .unwrap();
    let out = Command::new(repo().join("systemd/install.sh"))
        .arg("--bin-dir")
        .arg(&bin_dir)
        .env("DESTDIR", &root)
        .output()
        .unwrap();
    assert!(out.status.success());
    let kept = std::fs::read_to_string(root.join("etc/vla-rt/config.toml")).unwrap();
    assert_eq!(kept, "robot_id = \"edited\"\n");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn install_script_rejects_missing_binaries() {
    let root = temp_dir("install-missing");
    let out = Command::new(repo().join("systemd/install.sh"))
        .args(["--bin-dir", "/nonexistent/bin"])
        .env("DESTDIR", &root)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/bin/vla-rt not found"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}
