//! Session recording and replay with the real binary: a 10 s recording of the bundled default
//! service (synthetic camera, tiny checkpoint, CPU) replays with identical tokens; an INT8
//! replay reports the quantization benchmark's measure; a recording cut in the middle of a
//! chunk replays up to there; a full disk changes nothing the robot sees and is counted;
//! `--plot` writes the plot; bad files end with exit code 2 and one line.

// Test helpers fail the test by panicking, like the test functions themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod service_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use vla_rt::recording::reader::Recording;
use zenoh::Wait;

const BINARY: &str = env!("CARGO_BIN_EXE_vla-rt");
const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/engines/openvla-tiny");

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vla-rt-recording-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the binary, killing it after `limit`.
fn run_with(command: &mut Command, limit: Duration) -> Output {
    let start = Instant::now();
    let mut child = command
        .env("RUST_LOG", "info,zenoh=error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Drain the pipes on threads, so that a chatty child never blocks on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut buf).unwrap();
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut stderr, &mut buf).unwrap();
        buf
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("{command:?} ran longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn vla_rt(args: &[&str]) -> Output {
    run_with(Command::new(BINARY).args(args), Duration::from_secs(240))
}

fn run_args(robot_id: &str, port: u16, seconds: &str, record: &Path) -> Vec<String> {
    vec![
        "run".into(),
        "--robot-id".into(),
        robot_id.into(),
        "--zenoh-listen".into(),
        format!("tcp/127.0.0.1:{port}"),
        "--duration".into(),
        seconds.into(),
        "--record".into(),
        record.display().to_string(),
    ]
}

/// One 10 s recording of the bundled default service, shared by the tests of this file.
fn recording() -> &'static Path {
    static RECORDING: OnceLock<PathBuf> = OnceLock::new();
    RECORDING.get_or_init(|| {
        let path = scratch_dir("session").join("session.mcap");
        let port = service_support::free_port();
        let args = run_args("rec-session", port, "10", &path);
        let output = run_with(Command::new(BINARY).args(&args), Duration::from_secs(120));
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        path
    })
}

fn json(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Exit code 2 and exactly one error line, which contains every needle.
fn assert_bad_input(output: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("vla-rt: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    for needle in needles {
        assert!(
            errors[0].contains(needle),
            "`{needle}` not in `{}`",
            errors[0]
        );
    }
}

#[test]
fn a_recording_holds_the_session_and_replays_with_identical_tokens() {
    let path = recording();
    let recording = Recording::read(path).unwrap();
    assert_eq!(recording.damage, None);
    // 10 s at the default 10 Hz: every command, numbered without a gap, the last a STOP.
    let seqs: Vec<u64> = recording.commands.iter().map(|c| c.seq).collect();
    assert!(seqs.len() >= 95, "{} commands", seqs.len());
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
    assert_eq!(recording.commands.last().unwrap().state, "STOP");
    // A disarmed session: no ACT, so no command carries a chunk step
    // (tests/service_chunks.rs checks the steps of ACTs).
    assert!(recording.commands.iter().all(|c| c.chunk_step.is_none()));
    // Predictions happen whatever the state, each with its frame (JPEG and lossless).
    assert!(
        recording.steps.len() >= 50,
        "{} steps",
        recording.steps.len()
    );
    assert!(recording.steps.iter().all(|s| s.input_png.is_some()));
    assert_eq!(
        recording.channel_counts["/camera/image"],
        recording.steps.len() as u64
    );
    assert!(recording.channel_counts["/status"] >= 8);
    assert!(recording.channel_counts["/control/state"] >= 2);
    assert_eq!(
        recording.session.model_fingerprint,
        vla_rt::model::fingerprint::checkpoint_fingerprint(Path::new(MODEL)).unwrap()
    );
    assert!(recording
        .session
        .config
        .contains("robot_id = \"rec-session\""));

    let report = json(&vla_rt(&["replay", path.to_str().unwrap(), "--json"]));
    let summary = &report["summary"];
    assert_eq!(summary["steps"], recording.steps.len());
    assert_eq!(summary["tokens"], 7 * recording.steps.len());
    assert_eq!(summary["tokens_equal"], summary["tokens"], "{summary}");
    assert_eq!(summary["steps_differing"], 0);
    assert_eq!(summary["accuracy"].as_f64(), Some(1.0));
    let replayed_steps = report["steps"].as_array().unwrap();
    assert_eq!(replayed_steps.len(), recording.steps.len());
    for (step, recorded) in replayed_steps.iter().zip(&recording.steps) {
        let replayed: Vec<u32> = serde_json::from_value(step["replayed_tokens"].clone()).unwrap();
        assert_eq!(replayed, recorded.tokens);
    }

    let info = vla_rt(&["record-info", path.to_str().unwrap()]);
    assert!(info.status.success());
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains("complete:  yes"), "{text}");
    assert!(text.contains("gaps:      none"), "{text}");
    assert!(
        text.contains(&format!(
            "{:<22} {:>8}",
            "/policy/prediction",
            recording.steps.len()
        )),
        "{text}"
    );
    assert!(
        text.contains(&recording.session.model_fingerprint),
        "{text}"
    );
}

#[test]
fn an_int8_replay_reports_the_quantization_benchmarks_measure() {
    use vla_bench::quant::{evaluate_accuracy, AccuracyCase, AccuracyMode};
    use vla_rt::policy::{ProjectorFormat, Quantization};

    let path = recording();
    let report = json(&vla_rt(&[
        "replay",
        path.to_str().unwrap(),
        "--quantization",
        "int8",
        "--json",
    ]));
    assert_eq!(report["quantization"], "int8");
    let summary = &report["summary"];
    let accuracy = summary["accuracy"].as_f64().unwrap();
    let agreement = summary["token_agreement"].as_f64().unwrap();
    assert!(accuracy > 0.5 && accuracy <= 1.0, "{summary}");
    assert!((0.0..=1.0).contains(&agreement), "{summary}");

    // The benchmark's measure on the same frames: the f32 reference it computes is what was
    // recorded, so its 1 − NRMSE and token agreement are the replay's.
    let recording = Recording::read(path).unwrap();
    let steps = report["steps"].as_array().unwrap();
    let cases: Vec<AccuracyCase> = recording
        .steps
        .iter()
        .take(4)
        .map(|s| AccuracyCase {
            name: format!("frame {}", s.frame_sequence),
            image: s.input_image().unwrap().unwrap(),
            instruction: s.instruction.clone(),
            unnorm_key: recording.session.unnorm_key.clone().unwrap(),
        })
        .collect();
    let mode = AccuracyMode {
        name: "LLM int8",
        quantization: Quantization::Int8,
        projector: ProjectorFormat::F32,
        calibrated: false,
    };
    let benchmark = evaluate_accuracy(Path::new(MODEL), &cases, &[mode]).unwrap();
    let replay_accuracy = steps[..4]
        .iter()
        .map(|s| s["accuracy"].as_f64().unwrap())
        .sum::<f64>()
        / 4.0;
    assert!(
        (benchmark[0].accuracy - replay_accuracy).abs() < 1e-12,
        "benchmark {} replay {replay_accuracy}",
        benchmark[0].accuracy
    );
    let equal: u64 = steps[..4]
        .iter()
        .map(|s| s["tokens_equal"].as_u64().unwrap())
        .sum();
    assert!(
        (benchmark[0].token_agreement - equal as f64 / 28.0).abs() < 1e-12,
        "benchmark {} replay {equal}/28",
        benchmark[0].token_agreement
    );
}

/// Offsets and lengths of the top-level chunk records of an MCAP file.
fn chunks(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut chunks = Vec::new();
    let mut at = 8; // magic
    while at + 9 <= bytes.len() {
        let op = bytes[at];
        let len = u64::from_le_bytes(bytes[at + 1..at + 9].try_into().unwrap()) as usize;
        if op == 0x06 {
            chunks.push((at, 9 + len));
        }
        if op == 0x0F {
            break; // data end
        }
        at += 9 + len;
    }
    chunks
}

#[test]
fn a_recording_cut_in_the_middle_of_a_chunk_replays_up_to_there() {
    let bytes = std::fs::read(recording()).unwrap();
    let chunks = chunks(&bytes);
    assert!(chunks.len() >= 4, "{} chunks", chunks.len());
    let (start, len) = chunks[chunks.len() / 2];
    let cut = scratch_dir("cut").join("cut.mcap");
    std::fs::write(&cut, &bytes[..start + len / 2]).unwrap();

    let full = Recording::read(recording()).unwrap();
    let partial = Recording::read(&cut).unwrap();
    assert!(partial.damage.is_some());
    assert!(!partial.steps.is_empty());
    assert!(partial.steps.len() < full.steps.len());
    assert_eq!(partial.steps[..], full.steps[..partial.steps.len()]);

    let report = json(&vla_rt(&["replay", cut.to_str().unwrap(), "--json"]));
    assert_eq!(report["summary"]["steps"], partial.steps.len());
    assert_eq!(
        report["summary"]["tokens_equal"],
        report["summary"]["tokens"]
    );
    assert!(report["summary"]["damage"].is_string());
    let text = vla_rt(&["replay", cut.to_str().unwrap()]);
    assert!(text.status.success());
    assert!(String::from_utf8_lossy(&text.stdout).contains("the recording ends early"));

    let info = vla_rt(&["record-info", cut.to_str().unwrap()]);
    assert!(info.status.success());
    assert!(String::from_utf8_lossy(&info.stdout).contains("complete:  no"));
}

#[test]
fn plot_writes_a_png_with_one_panel_per_action_dimension() {
    let out = scratch_dir("plot").join("replay.png");
    let output = vla_rt(&[
        "replay",
        recording().to_str().unwrap(),
        "--quantization",
        "int4",
        "--plot",
        out.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // 1200 wide; 56 px of title and legend, 140 per panel, 44 for the time axis.
    assert_eq!(
        image::image_dimensions(&out).unwrap(),
        (1200, 56 + 7 * 140 + 44)
    );
    let plot = image::open(&out).unwrap().into_rgb8();
    let colored = |rgb: [u8; 3]| plot.pixels().filter(|p| p.0 == rgb).count();
    assert!(colored([31, 119, 180]) > 1000, "no recorded line");
    assert!(colored([255, 127, 14]) > 1000, "no replayed line");
}

#[test]
fn bad_recordings_end_with_one_line_and_exit_code_2() {
    let dir = scratch_dir("bad");
    let foreign_bytes = b"\x89PNG\r\n\x1a\n not a recording at all".to_vec();
    let not_mcap = dir.join("image.mcap");
    std::fs::write(&not_mcap, &foreign_bytes).unwrap();
    assert_bad_input(
        &vla_rt(&["replay", not_mcap.to_str().unwrap()]),
        &["image.mcap", "not an MCAP file"],
    );
    assert_bad_input(
        &vla_rt(&["record-info", not_mcap.to_str().unwrap()]),
        &["not an MCAP file"],
    );

    // Someone else's MCAP.
    let foreign = dir.join("ros.mcap");
    {
        let file = std::io::BufWriter::new(std::fs::File::create(&foreign).unwrap());
        let mut writer = mcap::WriteOptions::new()
            .profile("ros1")
            .create(file)
            .unwrap();
        let channel = writer
            .add_channel(0, "/chatter", "json", &Default::default())
            .unwrap();
        writer
            .write_to_known_channel(
                &mcap::records::MessageHeader {
                    channel_id: channel,
                    sequence: 1,
                    log_time: 1,
                    publish_time: 1,
                },
                b"{}",
            )
            .unwrap();
        writer.finish().unwrap();
    }
    assert_bad_input(
        &vla_rt(&["replay", foreign.to_str().unwrap()]),
        &["ros.mcap", "not a vla-rt recording", "ros1"],
    );

    // Cut before its first message.
    let bytes = std::fs::read(recording()).unwrap();
    let stub = dir.join("stub.mcap");
    std::fs::write(&stub, &bytes[..40]).unwrap();
    assert_bad_input(&vla_rt(&["replay", stub.to_str().unwrap()]), &["stub.mcap"]);

    // A missing file.
    assert_bad_input(
        &vla_rt(&["replay", dir.join("missing.mcap").to_str().unwrap()]),
        &["missing.mcap"],
    );

    // Made with another checkpoint: refused unless --model says which one to use.
    let copy = dir.join("model");
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(MODEL).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
    }
    let other = dir.join("other.mcap");
    let port = service_support::free_port();
    let mut args = run_args("rec-other", port, "2", &other);
    args.extend([
        "--config".into(),
        dir.join("other.toml").display().to_string(),
    ]);
    std::fs::write(
        dir.join("other.toml"),
        "robot_id = \"rec-other\"\n[model]\npath = \"model\"\nunnorm_key = \"tiny_bridge\"\n[control]\nrealtime = \"off\"\n",
    )
    .unwrap();
    let output = run_with(Command::new(BINARY).args(&args), Duration::from_secs(120));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Change one byte of the copied config: another checkpoint as far as the fingerprint knows.
    let config_path = copy.join("config.json");
    let config = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(&config_path, format!("{config}\n")).unwrap();
    assert_bad_input(
        &vla_rt(&["replay", other.to_str().unwrap()]),
        &["other.mcap", "another checkpoint", "--model"],
    );
    let with_model = vla_rt(&[
        "replay",
        other.to_str().unwrap(),
        "--model",
        MODEL,
        "--json",
    ]);
    let report = json(&with_model);
    assert!(report["summary"]["steps"].as_u64().unwrap() > 0);
}

#[test]
fn a_full_disk_is_counted_and_changes_nothing_the_robot_sees() {
    use std::os::unix::process::CommandExt;

    let dir = scratch_dir("full");
    let path = dir.join("full.mcap");
    let port = service_support::free_port();
    let robot = "rec-full";
    let seconds = 6.0;
    let args = run_args(robot, port, "6", &path);
    let mut command = Command::new(BINARY);
    command.args(&args);
    // A file system with 256 KiB left: RLIMIT_FSIZE makes every write past it fail with
    // EFBIG, as ENOSPC would, without mounting anything.
    // SAFETY: between fork and exec the closure only calls async-signal-safe functions
    // (setrlimit, signal) and touches no memory of the parent's.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 256 << 10,
                rlim_max: 256 << 10,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Without this, the first write past the limit would kill the process.
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }

    let commands = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let statuses = std::sync::Arc::new(std::sync::Mutex::new(Vec::<serde_json::Value>::new()));
    let handle = std::thread::spawn(move || run_with(&mut command, Duration::from_secs(120)));
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the service did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let session = service_support::client_session(port);
    let c = std::sync::Arc::clone(&commands);
    let _cmd = session
        .declare_subscriber(format!("vla/{robot}/cmd"))
        .callback(move |sample| {
            let record = vla_rt::control::command_record::CommandRecord::decode(
                &sample.payload().to_bytes(),
            )
            .unwrap();
            c.lock().unwrap().push(record);
        })
        .wait()
        .unwrap();
    let s = std::sync::Arc::clone(&statuses);
    let _status = session
        .declare_subscriber(format!("vla/{robot}/status"))
        .callback(move |sample| {
            let text = sample.payload().try_to_string().unwrap().into_owned();
            s.lock().unwrap().push(serde_json::from_str(&text).unwrap());
        })
        .wait()
        .unwrap();
    let output = handle.join().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    session.close().wait().unwrap();

    // Every command the subscriber saw is in order without a gap, up to the final STOP, at
    // the configured rate: the recorder's failure did not touch the control loop.
    let commands = commands.lock().unwrap();
    assert!(
        commands.len() as f64 >= seconds * 10.0 * 0.5,
        "{} commands",
        commands.len()
    );
    for pair in commands.windows(2) {
        assert_eq!(pair[1].seq, pair[0].seq + 1);
        assert!(pair[1].tick_time_ns > pair[0].tick_time_ns);
    }
    assert_eq!(
        commands.last().unwrap().state,
        vla_rt::control::ControlState::Stop
    );
    // The status counts the loss and names the error.
    let statuses = statuses.lock().unwrap();
    let last = &statuses.last().expect("no status received")["record"];
    assert!(last["dropped"].as_u64().unwrap() > 0, "{last}");
    assert!(
        last["error"].as_str().unwrap().contains("full.mcap"),
        "{last}"
    );
    // What was written before the limit still reads.
    let recording = Recording::read(&path).unwrap();
    assert!(recording.damage.is_some());
}
