//! The configs shipped in `config/`: the written-out default is what `vla-rt run` runs
//! without `--config`, and the robot example is valid.

// Test helpers fail the test by panicking, like the test functions themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use vla_rt::config::{EStopMissing, RealtimeMode, ServiceConfig, ZenohMode};
use vla_rt::policy::BackendKind;

fn shipped(name: &str) -> ServiceConfig {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(name);
    ServiceConfig::from_file(&path).unwrap()
}

#[test]
fn default_toml_is_the_builtin_default() {
    let mut from_file = shipped("default.toml");
    let mut builtin = ServiceConfig::builtin();
    // The same checkpoint, reached from the config folder or the working directory.
    let checkpoint = |p: &Path| std::fs::canonicalize(p).unwrap();
    assert_eq!(
        checkpoint(&from_file.model.path),
        checkpoint(&Path::new(env!("CARGO_MANIFEST_DIR")).join(&builtin.model.path))
    );
    from_file.model.path = builtin.model.path.clone();
    // The same state folder: the source tree's target/vla-rt-state.
    assert_eq!(
        lexically_normal(&from_file.control.state_dir),
        lexically_normal(&Path::new(env!("CARGO_MANIFEST_DIR")).join(&builtin.control.state_dir))
    );
    from_file.control.state_dir = builtin.control.state_dir.clone();
    // A simulation: armed at start, under its own robot id.
    assert!(builtin.control.start_armed);
    assert_eq!(builtin.robot_id, "sim");
    // The builtin leaves listen/connect/mode unset, which means exactly these values.
    assert_eq!(from_file.zenoh.mode, Some(ZenohMode::Peer));
    assert_eq!(
        from_file.zenoh.listen_or_default(),
        builtin.zenoh.listen_or_default()
    );
    assert_eq!(from_file.zenoh.connect.as_deref(), Some(&[][..]));
    builtin.zenoh = from_file.zenoh.clone();
    assert_eq!(from_file, builtin);
}

/// `a/b/../c` as `a/c`, without touching the file system (the folder may not exist yet).
fn lexically_normal(path: &Path) -> std::path::PathBuf {
    let mut out = std::path::PathBuf::new();
    for component in path.components() {
        match component {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[test]
fn robot_example_is_valid() {
    let config = shipped("robot.example.toml");
    // Motion only on an explicit `arm`, a latched e-stop until released, a real step rate.
    assert!(!config.control.start_armed);
    assert_eq!(config.control.estop_missing, EStopMissing::Latched);
    assert_eq!(config.control.state_dir, Path::new("/var/lib/vla-rt"));
    assert!(config.model.action_hz.is_some());
    assert_ne!(config.robot_id, "robot");
    assert_eq!(config.camera.source, "/dev/video0");
    assert_eq!(config.model.backend, BackendKind::Cuda);
    assert_eq!(config.control.realtime, RealtimeMode::Require);
    // Mode, endpoints and certificates come from the mutual-TLS json5 file.
    assert_eq!(config.zenoh.mode, None);
    assert_eq!(
        config.zenoh.config.as_deref(),
        Some(std::path::Path::new("/etc/vla-rt/zenoh-mtls.json5"))
    );
    assert!(config.zenoh.require_tls);
    assert!(config.calibration.path.is_some());
}
