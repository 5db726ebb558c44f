//! OpenVLA-OFT checkpoints for the tests: tests/fixtures/openvla-oft-tiny's heads and
//! statistics beside the bundled tiny checkpoint's files, as users have an OFT folder.

use std::path::{Path, PathBuf};

use super::{repo_root, tiny_model_dir};

pub fn fixture_dir() -> PathBuf {
    repo_root().join("tests/fixtures/openvla-oft-tiny")
}

/// An OFT checkpoint folder as users have it: the bundled tiny checkpoint's files (the
/// weights the fixture was computed from), the fixture's `.pt` heads and statistics, and a
/// `vla_rt_model.json` with the tiny model's head counts plus the case's OFT keys.
pub fn assemble(name: &str, settings: &serde_json::Value, with_proprio: bool) -> PathBuf {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("oft_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(tiny_model_dir()).unwrap() {
        let path = entry.unwrap().path();
        let target = dir.join(path.file_name().unwrap());
        if std::fs::hard_link(&path, &target).is_err() {
            std::fs::copy(&path, &target).unwrap();
        }
    }
    let fixture = fixture_dir();
    let mut files = vec!["action_head--1000_checkpoint.pt", "dataset_statistics.json"];
    if with_proprio {
        files.push("proprio_projector--1000_checkpoint.pt");
    }
    for file in files {
        std::fs::copy(fixture.join(file), dir.join(file)).unwrap();
    }
    let text = std::fs::read_to_string(tiny_model_dir().join("vla_rt_model.json")).unwrap();
    let mut runtime: serde_json::Value = serde_json::from_str(&text).unwrap();
    for key in [
        "num_actions_chunk",
        "num_images_in_input",
        "action_normalization",
    ] {
        runtime[key] = settings[key].clone();
    }
    std::fs::remove_file(dir.join("vla_rt_model.json")).unwrap();
    std::fs::write(dir.join("vla_rt_model.json"), runtime.to_string()).unwrap();
    dir
}
