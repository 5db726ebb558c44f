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
    use vla_rt::capture::v4l2_convert::{grey_to_rgb, rgb24_to_rgb, yuyv_to_rgb};
    type Convert = fn(&[u8], u32, u32, usize, &mut Vec<u8>) -> Result<(), String>;
    let converters: [(&str, Convert); 3] = [
        ("YUYV", yuyv_to_rgb),
        ("RGB24", rgb24_to_rgb),
        ("GREY", grey_to_rgb),
    ];
    let frame = [0u8; 256];
    for (format, (name, convert)) in converters.into_iter().enumerate() {
        for (width, height) in [(0u16, 0u16), (0, 8), (8, 0)] {
            // A stride and a frame large enough for an 8x8 frame of any of the formats: only
            // the zero size is wrong.
            let mut rgb = vec![7u8; 3];
            let result = convert(&frame, width.into(), height.into(), 32, &mut rgb);
            assert!(
                result.is_err(),
                "{name} {width}x{height}: converted, not refused"
            );
            assert_eq!(rgb, [7u8; 3], "{name} {width}x{height}: output written");
            // The same input through the fuzz harness (its layout: format, width, height
            // (u16), stride (u32), frame) does not panic.
            let mut data = vec![format as u8];
            data.extend_from_slice(&width.to_le_bytes());
            data.extend_from_slice(&height.to_le_bytes());
            data.extend_from_slice(&32u32.to_le_bytes());
            data.extend_from_slice(&frame);
            vla_rt::fuzzing::raw_frame(&data);
        }
        // The frame is sound: 8x8 converts, so the refusals above are the zero size's.
        let mut rgb = Vec::new();
        convert(&frame, 8, 8, 32, &mut rgb).unwrap();
        assert_eq!(rgb.len(), 8 * 8 * 3, "{name}");
    }
}
