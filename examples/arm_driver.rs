//! A minimal arm driver: subscribes to `vla/<robot_id>/cmd`, decodes each command record v1,
//! integrates the ACT deltas into a simulated end-effector pose, and halts on STOP, on a
//! damaged record, on a record older than the maximum age, on records missing for longer
//! than that, or when commands stop coming; after a halt only an ACT that passes these
//! checks moves the arm again (`vla_rt::transport::guard`).
//!
//! ```sh
//! cargo run --release --example arm_driver -- --connect tcp/127.0.0.1:7447 --robot-id robot
//! ```
//! `--json` prints one JSON object per command instead of the human-readable line;
//! `--max-age-ms N` sets the maximum age (default: two tick periods, learned from the
//! records' tick times; the service's and the driver's clocks must agree).
//! `--zenoh-config FILE` opens the session from a Zenoh json5 file instead (mutual TLS with
//! the driver's own certificate: README, "Security").

use std::time::Duration;

use clap::Parser;
use vla_rt::control::clock;
use vla_rt::control::command_record::CommandRecord;
use vla_rt::transport::guard::{CommandGuard, Verdict};
use zenoh::Wait;

#[derive(Debug, Parser)]
struct Args {
    /// Zenoh endpoint of the runtime (or of a router); default `tcp/127.0.0.1:7447` without
    /// `--zenoh-config`.
    #[arg(long)]
    connect: Option<String>,
    /// A Zenoh json5 file (e.g. TLS certificates); `--connect` overrides its endpoints.
    #[arg(long)]
    zenoh_config: Option<std::path::PathBuf>,
    #[arg(long, default_value = "robot")]
    robot_id: String,
    /// Exit after this many commands.
    #[arg(long)]
    count: Option<u64>,
    /// Print each command as one JSON object.
    #[arg(long)]
    json: bool,
    /// Oldest record to act on, in ms (tick time to arrival); default: two tick periods,
    /// learned from consecutive records.
    #[arg(long)]
    max_age_ms: Option<u64>,
}

/// The simulated arm: a pose that passing ACT deltas move.
#[derive(Debug, Default)]
struct Arm {
    position: [f64; 3],
    rotation: [f64; 3],
    gripper: f64,
}

impl Arm {
    fn apply(&mut self, action: &[f32; 7]) {
        for i in 0..3 {
            self.position[i] += f64::from(action[i]);
            self.rotation[i] += f64::from(action[3 + i]);
        }
        self.gripper = f64::from(action[6]);
    }
}

/// How often the driver looks for silence when no command comes.
const SILENCE_POLL: Duration = Duration::from_millis(20);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let insert = |config: &mut zenoh::Config, key: &str, value: String| {
        config
            .insert_json5(key, &value)
            .map_err(|e| anyhow::anyhow!("zenoh config {key}: {e}"))
    };
    let mut config = match &args.zenoh_config {
        Some(path) => zenoh::Config::from_file(path)
            .map_err(|e| anyhow::anyhow!("zenoh config {}: {e}", path.display()))?,
        None => {
            let mut config = zenoh::Config::default();
            insert(&mut config, "mode", "\"peer\"".into())?;
            insert(&mut config, "listen/endpoints", "[]".into())?;
            insert(&mut config, "scouting/multicast/enabled", "false".into())?;
            config
        }
    };
    let connect = match (&args.connect, &args.zenoh_config) {
        (Some(endpoint), _) => Some(endpoint.clone()),
        (None, None) => Some("tcp/127.0.0.1:7447".to_string()),
        (None, Some(_)) => None,
    };
    if let Some(endpoint) = &connect {
        insert(
            &mut config,
            "connect/endpoints",
            format!("[\"{endpoint}\"]"),
        )?;
    }
    let target = connect.unwrap_or_else(|| "the configured endpoints".into());
    let session = zenoh::open(config)
        .wait()
        .map_err(|e| anyhow::anyhow!("zenoh: cannot connect to {target}: {e}"))?;
    let key = format!("vla/{}/cmd", args.robot_id);
    let (sender, receiver) = std::sync::mpsc::sync_channel(64);
    let subscriber = session
        .declare_subscriber(key.clone())
        .callback(move |sample| {
            let _ = sender.try_send(sample.payload().to_bytes().into_owned());
        })
        .wait()
        .map_err(|e| anyhow::anyhow!("zenoh: cannot subscribe to {key}: {e}"))?;
    eprintln!("arm_driver: listening on {key}");

    let mut arm = Arm::default();
    let mut guard = CommandGuard::new(args.max_age_ms.map(|ms| ms.saturating_mul(1_000_000)));
    let mut seen = 0u64;
    while args.count.is_none_or(|n| seen < n) {
        let bytes = match receiver.recv_timeout(SILENCE_POLL) {
            Ok(bytes) => bytes,
            Err(_) => {
                if let Some(reason) = guard.check_silence(clock::realtime_ns()) {
                    eprintln!("arm_driver: halted: {}", reason.name());
                }
                continue;
            }
        };
        let now = clock::realtime_ns();
        seen += 1;
        let record = match CommandRecord::decode(&bytes) {
            Ok(record) => record,
            Err(e) => {
                guard.bad_record();
                eprintln!("arm_driver: {e}: halted");
                if args.json {
                    println!(
                        "{}",
                        serde_json::json!({"verdict": "halt", "reason": "bad-record", "halted": true})
                    );
                }
                continue;
            }
        };
        let was_halted = guard.halted();
        let verdict = guard.check(&record, now);
        let (verdict_name, reason) = match verdict {
            Verdict::Move(action) => {
                arm.apply(&action);
                ("move", None)
            }
            Verdict::Hold => ("hold", None),
            Verdict::Halt(reason) => ("halt", Some(reason.name())),
        };
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "seq": record.seq,
                    "state": record.state.name(),
                    "tick_time_ns": record.tick_time_ns,
                    "capture_time_ns": record.capture_time_ns,
                    "action": record.action,
                    "age_ms": now.saturating_sub(record.tick_time_ns) as f64 / 1e6,
                    "verdict": verdict_name,
                    "reason": reason,
                    "halted": guard.halted(),
                    "position": arm.position,
                    "rotation": arm.rotation,
                    "gripper": arm.gripper,
                })
            );
        } else {
            let a = record.action;
            println!(
                "{:>6} {:<4} {:<4} d=({:+.4} {:+.4} {:+.4}) r=({:+.3} {:+.3} {:+.3}) g={:.2}  pos=({:+.3} {:+.3} {:+.3})",
                record.seq,
                record.state.name(),
                verdict_name,
                a[0], a[1], a[2], a[3], a[4], a[5], a[6],
                arm.position[0], arm.position[1], arm.position[2],
            );
        }
        if let (Some(reason), false) = (reason, was_halted) {
            eprintln!("arm_driver: halted: {reason}");
        }
        if was_halted && !guard.halted() {
            eprintln!("arm_driver: ACT passed the checks: moving");
        }
    }
    let _ = subscriber.undeclare().wait();
    let _ = session.close().wait();
    Ok(())
}
