//! The C++ decoder for arm drivers (`examples/cpp/vla_command.hpp`), built with the system's
//! C++ compiler and fed records from the crate's encoder and corrupted ones: it must accept
//! and read exactly what `CommandRecord::decode` accepts, and refuse the rest for the same
//! reason. Its `vla::Guard` must judge a stream of records (ages, gaps, restarts, STOP,
//! silence, damaged payloads) exactly as the crate's `CommandGuard`.

// Test helpers fail the test by panicking, like the test functions themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use vla_rt::control::command_record::{CommandRecord, RecordError, RECORD_LEN};
use vla_rt::control::ControlState;
use vla_rt::transport::guard::{CommandGuard, Verdict};

/// `examples/cpp/decode_records.cpp`, compiled with `-Wall -Wextra -Wpedantic -Werror`, once
/// for all the tests (running one while another test writes it fails with ETXTBSY).
fn decoder() -> PathBuf {
    static PROGRAM: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PROGRAM.get_or_init(build_decoder).clone()
}

fn build_decoder() -> PathBuf {
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

fn hex(payload: &[u8]) -> String {
    payload.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// One output line per input line.
fn run_decoder(program: &Path, payloads: &[Vec<u8>]) -> Vec<String> {
    let mut input = String::new();
    for payload in payloads {
        input.push_str(&hex(payload));
        input.push('\n');
    }
    run_program(program, &[], &input)
}

/// Runs `program args` on `input`; its output lines.
fn run_program(program: &Path, args: &[String], input: &str) -> Vec<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
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

/// One event of a driver's life: a payload received at a time, or a look for silence.
enum Event {
    Payload(Vec<u8>, u64),
    Silence(u64),
}

/// What the crate's guard says, in the C++ program's words.
fn rust_guard_lines(max_age_ns: Option<u64>, events: &[Event]) -> Vec<String> {
    let mut guard = CommandGuard::new(max_age_ns);
    events
        .iter()
        .map(|event| match event {
            Event::Silence(now) => {
                let halted_now = guard.check_silence(*now).is_some();
                format!(
                    "silence {} halted={}",
                    u8::from(halted_now),
                    u8::from(guard.halted())
                )
            }
            Event::Payload(bytes, now) => {
                let verdict = match CommandRecord::decode(bytes) {
                    Ok(record) => guard.check(&record, *now),
                    Err(_) => guard.bad_record(),
                };
                let halted = u8::from(guard.halted());
                match verdict {
                    Verdict::Move(_) => format!("move halted={halted}"),
                    Verdict::Hold => format!("hold halted={halted}"),
                    Verdict::Halt(reason) => format!("halt {} halted={halted}", reason.name()),
                }
            }
        })
        .collect()
}

fn guard_input(events: &[Event]) -> String {
    events
        .iter()
        .map(|event| match event {
            Event::Payload(bytes, now) => format!("{} {now}\n", hex(bytes)),
            Event::Silence(now) => format!("silence {now}\n"),
        })
        .collect()
}

const MS: u64 = 1_000_000;
const T0: u64 = 1_800_000_000_000_000_000;

fn record_at(state: ControlState, seq: u64, tick_time_ns: u64) -> Vec<u8> {
    encoded(&CommandRecord {
        state,
        seq,
        tick_time_ns,
        capture_time_ns: 0,
        action: [0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
    })
}

#[test]
fn cpp_guard_judges_like_the_crate_guard() {
    let program = decoder();
    // A hand-made stream at 10 Hz, each case with the decision it must get.
    let period = 100 * MS;
    let tick = |seq: u64| T0 + seq * period;
    let on_time = |state, seq| Event::Payload(record_at(state, seq, tick(seq)), tick(seq) + 5 * MS);
    let mut corrupt = record_at(ControlState::Act, 9, tick(9));
    corrupt[40] ^= 1;
    let script = [
        (on_time(ControlState::Act, 0), "halt unjudged halted=1"),
        (on_time(ControlState::Act, 1), "move halted=0"),
        (
            Event::Payload(record_at(ControlState::Act, 2, tick(2)), tick(2) + 250 * MS),
            "halt stale halted=1",
        ),
        (on_time(ControlState::Act, 3), "move halted=0"),
        (on_time(ControlState::Act, 5), "move halted=0"),
        (on_time(ControlState::Act, 8), "halt gap halted=1"),
        (on_time(ControlState::Stop, 9), "halt stop halted=1"),
        (on_time(ControlState::Hold, 10), "hold halted=1"),
        (
            Event::Payload(corrupt, tick(11)),
            "halt bad-record halted=1",
        ),
        (on_time(ControlState::Act, 11), "move halted=0"),
        (Event::Silence(tick(11) + 150 * MS), "silence 0 halted=0"),
        (Event::Silence(tick(11) + 250 * MS), "silence 1 halted=1"),
        (on_time(ControlState::Hold, 12), "hold halted=1"),
        (on_time(ControlState::Act, 0), "halt restart halted=1"),
        (on_time(ControlState::Act, 1), "move halted=0"),
    ];
    let events: Vec<Event> = script
        .iter()
        .map(|(event, _)| match event {
            Event::Payload(bytes, now) => Event::Payload(bytes.clone(), *now),
            Event::Silence(now) => Event::Silence(*now),
        })
        .collect();
    let wanted: Vec<&str> = script.iter().map(|(_, line)| *line).collect();
    assert_eq!(rust_guard_lines(None, &events), wanted);
    let cpp = run_program(&program, &["--guard".into()], &guard_input(&events));
    assert_eq!(cpp, wanted);

    // A random stream: steps of one or more seq (and restarts), random delays around the
    // limits, every state, damaged payloads and looks for silence; with a learned and with
    // a fixed maximum age.
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut events = Vec::new();
    let mut seq = 0u64;
    let mut tick_ns = T0;
    for _ in 0..600 {
        let roll = next() % 100;
        if roll < 5 {
            seq = next() % 4;
        } else if roll < 20 {
            seq += 2 + next() % 3;
        } else {
            seq += 1;
        }
        tick_ns += period * (1 + next() % 2) + next() % (3 * MS);
        let delay = [2 * MS, 90 * MS, 199 * MS, 201 * MS, 400 * MS][(next() % 5) as usize];
        let state = [
            ControlState::Act,
            ControlState::Act,
            ControlState::Hold,
            ControlState::Stop,
        ][(next() % 4) as usize];
        let mut bytes = record_at(state, seq, tick_ns);
        if next() % 25 == 0 {
            bytes[20] ^= 0x10;
        }
        events.push(Event::Payload(bytes, tick_ns + delay));
        if next() % 6 == 0 {
            events.push(Event::Silence(tick_ns + next() % (500 * MS)));
        }
    }
    for (max_age, args) in [
        (None, vec!["--guard".to_string()]),
        (
            Some(150 * MS),
            vec!["--guard".to_string(), (150 * MS).to_string()],
        ),
    ] {
        let rust = rust_guard_lines(max_age, &events);
        let cpp = run_program(&program, &args, &guard_input(&events));
        assert_eq!(cpp.len(), rust.len());
        for (i, (c, r)) in cpp.iter().zip(&rust).enumerate() {
            assert_eq!(c, r, "event {i} (max age {max_age:?})");
        }
        for kind in [
            "move",
            "hold",
            "halt stop",
            "halt stale",
            "halt gap",
            "halt restart",
            "halt bad-record",
            "silence 1",
        ] {
            assert!(
                rust.iter().any(|l| l.starts_with(kind)),
                "no `{kind}` in the random stream"
            );
        }
    }
}
