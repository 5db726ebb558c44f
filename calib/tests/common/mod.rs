//! Shared pieces of the calibration tool's tests: the two real binaries, bounded runs, and
//! scratch folders.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

pub const VLA_CALIB: &str = env!("CARGO_BIN_EXE_vla-calib");

/// The workspace root (the `vla-rt` crate).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The bundled tiny checkpoint.
pub fn bundled_model() -> PathBuf {
    workspace().join("engines/openvla-tiny")
}

/// The `vla-rt` service binary beside `vla-calib` in this test's target folder. A test of one
/// package cannot name another package's binary, so it is taken from there when it is newer
/// than every file under `src/` (as after `cargo test --workspace`), and otherwise built
/// first: a binary left over from older code must not stand in for the current one.
pub fn vla_rt() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        // target/<profile>/vla-calib
        let exe = Path::new(VLA_CALIB);
        let profile_dir = exe.parent().unwrap();
        let target_dir = profile_dir.parent().unwrap();
        let binary = profile_dir.join("vla-rt");
        if is_newer_than_sources(&binary) {
            return binary;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        command
            .current_dir(workspace())
            .args(["build", "--release", "-p", "vla-rt", "--bin", "vla-rt"])
            .arg("--target-dir")
            .arg(target_dir);
        let output = run_bounded(command, Duration::from_secs(1800));
        assert!(
            output.status.success(),
            "building vla-rt failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            binary.is_file(),
            "{} missing after the build",
            binary.display()
        );
        binary
    })
}

fn newest_mtime(path: &Path) -> Option<std::time::SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| newest_mtime(&entry.path()))
        .max()
}

fn is_newer_than_sources(binary: &Path) -> bool {
    let Some(built) = std::fs::metadata(binary).and_then(|m| m.modified()).ok() else {
        return false;
    };
    // The sources only: cargo leaves a binary untouched (older than Cargo.lock, say) when a
    // manifest change does not affect it.
    newest_mtime(&workspace().join("src")).is_some_and(|modified| modified <= built)
}

#[path = "../../../tests/common/bounded.rs"]
mod bounded;
pub use bounded::run_bounded;

/// A fresh folder under the target's test directory.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[path = "../../../tests/common/ports.rs"]
mod ports;
#[allow(unused_imports)] // Not every test of the package starts a service.
pub use ports::free_port;

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Exit code 2 and exactly one `<program>: error:` line that contains every needle; no panic.
pub fn assert_bad_input(program: &str, output: &Output, needles: &[&str]) {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let prefix = format!("{program}: error:");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with(&prefix)).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    for needle in needles {
        assert!(
            errors[0].contains(needle),
            "`{needle}` not in `{}`",
            errors[0]
        );
    }
}
