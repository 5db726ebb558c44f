//! The C++ decoder for arm drivers (`examples/cpp/vla_command.hpp`), built with the system's
//! C++ compiler and fed records from the crate's encoder and corrupted ones: it must accept
//! and read exactly what `CommandRecord::decode` accepts, and refuse the rest for the same
//! reason.

// Test helpers fail the test by panicking, like the test functions themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use vla_rt::control::ControlState;
use vla_rt::transport::record::{CommandRecord, RecordError, RECORD_LEN};

/// `examples/cpp/decode_records.cpp`, compiled with `-Wall -Wextra -Wpedantic -Werror`.
fn decoder() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cpp_decoder");
    std::fs::create_dir_all(&dir).unwrap();
    let program = dir.join(format!("decode_records.{}", std::process::id()));
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cpp/decode_records.cpp");
    let compiler = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let result = Command::new(&compiler)
        .args([
            "-std=c++17",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Wpedantic",
            "-Werror",
            "-o",
        ])
        .arg(&program)
        .arg(&source)
        .output()
        .unwrap_or_else(|e| {
            panic!("running the C++ compiler `{compiler}` (scripts/setup.sh installs g++): {e}")
        });
    assert!(
        result.status.success(),
        "building {} failed:\n{}",
        source.display(),
        String::from_utf8_lossy(&result.stderr)
    );
    program
}

/// One output line per input line.
fn run_decoder(program: &Path, payloads: &[Vec<u8>]) -> Vec<String> {
    let mut child = Command::new(program)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = String::new();
    for payload in payloads {
        for byte in payload {
            input.push_str(&format!("{byte:02x}"));
        }
        input.push('\n');
    }
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The C++ `vla::DecodeError` value for each refusal.
fn error_code(error: &RecordError) -> u32 {
    match error {
        RecordError::WrongLength { .. } => 0,
        RecordError::BadCrc { .. } => 1,
        RecordError::BadMagic { .. } => 2,
        RecordError::UnsupportedVersion { .. } => 3,
        RecordError::UnknownState { .. } => 4,
    }
}

fn state_name(state: ControlState) -> &'static str {
    match state {
        ControlState::Act => "ACT",
        ControlState::Hold => "HOLD",
        ControlState::Stop => "STOP",
    }
}

fn encoded(record: &CommandRecord) -> Vec<u8> {
    let mut bytes = [0u8; RECORD_LEN];
    record.encode(&mut bytes);
    bytes.to_vec()
}

/// `bytes` with a field changed and the CRC made to match again, so that only the field's
/// own check can refuse it.
fn resealed(mut bytes: Vec<u8>, at: usize, field: &[u8]) -> Vec<u8> {
    bytes[at..at + field.len()].copy_from_slice(field);
    let crc = crc32fast::hash(&bytes[..60]);
    bytes[60..].copy_from_slice(&crc.to_le_bytes());
    bytes
}

#[test]
fn cpp_decoder_reads_and_refuses_what_the_crate_decoder_does() {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut payloads = Vec::new();
    // Every state; seq and times over the whole u64 range; actions from random bits (NaN
    // and infinities included: the format carries any f32) and edge values.
    let edges = [
        -0.0,
        f32::MIN_POSITIVE,
        1e-45,
        f32::MAX,
        -f32::MAX,
        f32::NAN,
        f32::NEG_INFINITY,
    ];
    for i in 0..30u64 {
        let state = [ControlState::Act, ControlState::Hold, ControlState::Stop][i as usize % 3];
        let mut action = [0.0f32; 7];
        for (j, value) in action.iter_mut().enumerate() {
            *value = if i == 0 {
                edges[j]
            } else {
                f32::from_bits(next() as u32)
            };
        }
        payloads.push(encoded(&CommandRecord {
            state,
            seq: if i == 1 { u64::MAX } else { next() },
            tick_time_ns: next(),
            capture_time_ns: if i == 2 { 0 } else { next() },
            action,
        }));
    }
    let good = payloads[3].clone();
    let mut flipped = good.clone();
    flipped[40] ^= 0x04;
    let mut bad_crc = good.clone();
    bad_crc[63] ^= 0x80;
    payloads.extend([
        flipped,
        bad_crc,
        resealed(good.clone(), 0, b"VLA2"),
        resealed(good.clone(), 4, &2u16.to_le_bytes()),
        resealed(good.clone(), 6, &3u16.to_le_bytes()),
        resealed(good.clone(), 6, &0xFFFFu16.to_le_bytes()),
        good[..63].to_vec(),
        [good.as_slice(), &[0]].concat(),
        Vec::new(),
    ]);

    let lines = run_decoder(&decoder(), &payloads);
    assert_eq!(
        lines.len(),
        payloads.len(),
        "one line per record:\n{lines:#?}"
    );
    let mut refused = 0;
    for (payload, line) in payloads.iter().zip(&lines) {
        let fields: Vec<&str> = line.split(' ').collect();
        match CommandRecord::decode(payload) {
            Ok(record) => {
                assert_eq!(fields[0], "ok", "{line}");
                assert_eq!(fields[1], state_name(record.state), "{line}");
                assert_eq!(fields[2], record.seq.to_string(), "{line}");
                assert_eq!(fields[3], record.tick_time_ns.to_string(), "{line}");
                assert_eq!(fields[4], record.capture_time_ns.to_string(), "{line}");
                assert_eq!(fields.len(), 5 + 7, "{line}");
                for (text, want) in fields[5..].iter().zip(record.action) {
                    let got: f32 = text.parse().unwrap_or_else(|_| panic!("{text} in {line}"));
                    assert!(
                        got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                        "{got} against {want} in {line}"
                    );
                }
            }
            Err(error) => {
                refused += 1;
                assert_eq!(fields[0], "error", "{error}: {line}");
                assert_eq!(fields[1], error_code(&error).to_string(), "{error}: {line}");
            }
        }
    }
    assert_eq!(refused, 9, "every corrupted record is refused");
}
