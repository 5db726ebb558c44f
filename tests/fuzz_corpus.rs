//! Replays every fuzz target's corpus (`fuzz/corpus/<target>/`, minimized by `fuzz/run.sh` to
//! the inputs that reach every edge, findings included) through the same harnesses the fuzzer runs
//! (`vla_rt::fuzzing`), on stable Rust: an input that once crashed a parser stays fixed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(not(feature = "test-hooks"))]
compile_error!(
    "this test needs the test-hooks feature: cargo test --release --workspace --features test-hooks"
);

use std::path::Path;

use vla_rt::fuzzing::TARGETS;

fn corpus_files(target: &str) -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_target_has_a_corpus() {
    for (target, _) in TARGETS {
        assert!(
            !corpus_files(target).is_empty(),
            "fuzz/corpus/{target} is empty"
        );
    }
}

#[test]
fn corpora_replay_without_panics() {
    let mut replayed = 0;
    for (target, harness) in TARGETS {
        for file in corpus_files(target) {
            let data = std::fs::read(&file).unwrap();
            let outcome = std::panic::catch_unwind(|| harness(&data));
            assert!(outcome.is_ok(), "{target}: {} panics", file.display());
            replayed += 1;
        }
    }
    eprintln!("replayed {replayed} corpus files");
}

#[test]
fn zero_sized_frames_are_refused_by_the_converters() {
    // The input layout of `raw_frame`: format, width, height (u16), stride (u32), frame.
    for format in 0u8..3 {
        for (width, height) in [(0u16, 0u16), (0, 8), (8, 0)] {
            let mut data = vec![format];
            data.extend_from_slice(&width.to_le_bytes());
            data.extend_from_slice(&height.to_le_bytes());
            data.extend_from_slice(&16u32.to_le_bytes());
            data.extend_from_slice(&[0u8; 256]);
            vla_rt::fuzzing::raw_frame(&data);
        }
    }
}
