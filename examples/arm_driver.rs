//! A minimal arm driver: subscribes to `vla/<robot_id>/cmd`, decodes each command record v1,
//! integrates the ACT deltas into a simulated end-effector pose and stops on STOP, on a
//! damaged record, or when commands stop coming.
//!
//! ```sh
//! cargo run --release --example arm_driver -- --connect tcp/127.0.0.1:7447 --robot-id robot
//! ```
//! `--json` prints one JSON object per command instead of the human-readable line.
//! `--zenoh-config FILE` opens the session from a Zenoh json5 file instead (mutual TLS with
//! the driver's own certificate: README, "Security").

use std::time::Duration;

use clap::Parser;
use vla_rt::control::ControlState;
use vla_rt::transport::record::CommandRecord;
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
    /// Stop the arm when no command came for this long.
    #[arg(long, default_value_t = 500)]
    timeout_ms: u64,
}

/// The simulated arm: a pose that ACT deltas move and anything else freezes.
#[derive(Debug, Default)]
struct Arm {
    position: [f64; 3],
    rotation: [f64; 3],
    gripper: f64,
    stopped: bool,
}

impl Arm {
    fn apply(&mut self, record: &CommandRecord) {
        match record.state {
            ControlState::Act => {
                for i in 0..3 {
                    self.position[i] += f64::from(record.action[i]);
                    self.rotation[i] += f64::from(record.action[3 + i]);
                }
                self.gripper = f64::from(record.action[6]);
                self.stopped = false;
            }
            ControlState::Hold => {}
            ControlState::Stop => self.stopped = true,
        }
    }
}

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
    let mut seen = 0u64;
    let mut last_seq: Option<u64> = None;
    while args.count.is_none_or(|n| seen < n) {
        let bytes = match receiver.recv_timeout(Duration::from_millis(args.timeout_ms)) {
            Ok(bytes) => bytes,
            Err(_) => {
                if !arm.stopped {
                    eprintln!(
                        "arm_driver: no command for {} ms: stopping the arm",
                        args.timeout_ms
                    );
                    arm.stopped = true;
                }
                continue;
            }
        };
        let record = match CommandRecord::decode(&bytes) {
            Ok(record) => record,
            Err(e) => {
                eprintln!("arm_driver: {e}: stopping the arm");
                arm.stopped = true;
                continue;
            }
        };
        if let Some(last) = last_seq {
            if record.seq != last + 1 {
                eprintln!(
                    "arm_driver: {} command(s) lost",
                    record.seq.saturating_sub(last + 1)
                );
            }
        }
        last_seq = Some(record.seq);
        let was_stopped = arm.stopped;
        arm.apply(&record);
        seen += 1;
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "seq": record.seq,
                    "state": record.state.name(),
                    "tick_time_ns": record.tick_time_ns,
                    "capture_time_ns": record.capture_time_ns,
                    "action": record.action,
                })
            );
        } else {
            let a = record.action;
            println!(
                "{:>6} {:<4} d=({:+.4} {:+.4} {:+.4}) r=({:+.3} {:+.3} {:+.3}) g={:.2}  pos=({:+.3} {:+.3} {:+.3})",
                record.seq,
                record.state.name(),
                a[0], a[1], a[2], a[3], a[4], a[5], a[6],
                arm.position[0], arm.position[1], arm.position[2],
            );
        }
        if arm.stopped && !was_stopped {
            eprintln!("arm_driver: STOP received: arm halted");
        }
    }
    let _ = subscriber.undeclare().wait();
    let _ = session.close().wait();
    Ok(())
}
