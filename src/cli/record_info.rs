//! `vla-rt record-info FILE.mcap`: what a recording holds: its duration, the messages per
//! channel, the model and settings it was made with, the config, and any gaps (commands the
//! recorder dropped, ticks that came late, predictions without their frame).

use std::path::PathBuf;

use super::CliError;
use crate::recording::reader::Recording;

#[derive(Debug, clap::Args)]
pub struct RecordInfoArgs {
    /// A recording made with `vla-rt run --record`.
    #[arg(value_name = "FILE.mcap")]
    pub recording: PathBuf,
}

/// Gaps worth knowing about, one line each.
pub fn gaps(recording: &Recording) -> Vec<String> {
    let mut gaps = Vec::new();
    let period_ns = if recording.session.rate_hz > 0.0 {
        1e9 / recording.session.rate_hz
    } else {
        0.0
    };
    let start = recording.time_range_ns.map_or(0, |r| r.0);
    let at = |t: u64| t.saturating_sub(start) as f64 / 1e9;
    for pair in recording.commands.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if b.seq > a.seq + 1 {
            gaps.push(format!(
                "commands {}..{} missing ({} not recorded) at {:.2} s",
                a.seq + 1,
                b.seq - 1,
                b.seq - a.seq - 1,
                at(a.tick_time_ns)
            ));
        } else if period_ns > 0.0
            && (b.tick_time_ns.saturating_sub(a.tick_time_ns) as f64) > 2.5 * period_ns
        {
            gaps.push(format!(
                "{:.1} ms between commands {} and {} at {:.2} s ({:.1} ms period)",
                b.tick_time_ns.saturating_sub(a.tick_time_ns) as f64 / 1e6,
                a.seq,
                b.seq,
                at(a.tick_time_ns),
                period_ns / 1e6
            ));
        }
    }
    let without_frame = recording
        .steps
        .iter()
        .filter(|s| s.input_png.is_none())
        .count();
    if without_frame > 0 {
        gaps.push(format!(
            "{without_frame} predictions without their frame (dropped by the recorder)"
        ));
    }
    gaps
}

pub fn main(args: RecordInfoArgs) -> Result<(), CliError> {
    let recording =
        Recording::read(&args.recording).map_err(|e| CliError::bad_input(e.to_string()))?;
    let s = &recording.session;
    println!("recording: {}", recording.path.display());
    match &recording.damage {
        None => println!("complete:  yes"),
        Some(d) => println!("complete:  no, read up to the last complete chunk ({d})"),
    }
    if let Some((a, b)) = recording.time_range_ns {
        println!(
            "duration:  {:.2} s (unix ns {a} .. {b})",
            b.saturating_sub(a) as f64 / 1e9
        );
    }
    println!(
        "model:     {} ({}) at {}",
        s.model_name, s.model_fingerprint, s.model_path
    );
    println!(
        "policy:    backend {}, LLM {}, projector {}{}, unnorm_key {}",
        s.backend,
        s.quantization,
        s.projector,
        if s.projector_scales.is_some() {
            " (W8A8, calibrated)"
        } else {
            ""
        },
        s.unnorm_key.as_deref().unwrap_or("-")
    );
    println!(
        "service:   robot `{}`, {} Hz, vla-rt {}",
        s.robot_id, s.rate_hz, s.vla_rt_version
    );
    println!("messages:");
    for (topic, count) in &recording.channel_counts {
        println!("  {topic:<22} {count:>8}");
    }
    if let (Some(first), Some(last)) = (recording.commands.first(), recording.commands.last()) {
        println!(
            "commands:  seq {} .. {} ({} recorded)",
            first.seq,
            last.seq,
            recording.commands.len()
        );
    }
    let start = recording.time_range_ns.map_or(0, |r| r.0);
    if !recording.state_changes.is_empty() {
        let changes: Vec<String> = recording
            .state_changes
            .iter()
            .map(|(t, state, cause)| {
                let at = t.saturating_sub(start) as f64 / 1e9;
                if state == "STOP" {
                    format!("{state} ({cause}) at {at:.2} s")
                } else {
                    format!("{state} at {at:.2} s")
                }
            })
            .collect();
        println!("states:    {}", changes.join(", "));
    }
    let gaps = gaps(&recording);
    if gaps.is_empty() {
        println!("gaps:      none");
    } else {
        println!("gaps:");
        for gap in &gaps {
            println!("  {gap}");
        }
    }
    if s.calibration.is_some() {
        println!("calibration: recorded (vla-rt.config metadata, calibration.toml)");
    }
    println!("config:");
    for line in s.config.lines() {
        println!("  {line}");
    }
    Ok(())
}
