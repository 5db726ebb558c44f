//! `vla-rt bench record`: what recording costs the service. The bundled default service runs
//! twice at the same rate, without and with a recording; for each run: the control tick's
//! own time (wake-up to command handed off, the recorder's copy included), the publish delay
//! (scheduled tick to Zenoh `put` done), the writer thread's CPU time, and what was written
//! and dropped.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::control::{publish_delays_ns, Spread};
use crate::config::{RealtimeMode, ServiceConfig};
use crate::recording::{RecordSettings, Recorder};
use crate::service::{Service, ServiceOptions};
use vla_bench::BenchError;

#[derive(Debug, clap::Args)]
pub struct RecordBenchArgs {
    /// Seconds per run.
    #[arg(long, default_value_t = 20.0)]
    pub seconds: f64,
    /// Control rate.
    #[arg(long, default_value_t = 50.0)]
    pub rate_hz: f64,
    /// Where the recording goes (removed afterwards).
    #[arg(long, default_value = "/tmp/vla-rt-bench-record.mcap")]
    pub out: PathBuf,
    /// SCHED_FIFO and mlockall for the service's loop.
    #[arg(long, value_parser = crate::cli::named::<RealtimeMode>(), default_value = "try")]
    pub realtime: RealtimeMode,
}

struct Run {
    tick: Option<Spread>,
    publish: Option<Spread>,
    commands: u64,
    predictions: u64,
    record: Option<(u64, u64, u64, u64)>,
}

fn run_once(args: &RecordBenchArgs, record: bool) -> Result<Run, BenchError> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| BenchError::failure(format!("no free loopback port: {e}")))?;
    let mut config = ServiceConfig::builtin();
    config.robot_id = "bench-record".into();
    config.control.rate_hz = args.rate_hz;
    config.control.realtime = args.realtime;
    config.zenoh.listen = Some(vec![format!("tcp/127.0.0.1:{port}")]);
    config
        .validate("bench config")
        .map_err(|e| BenchError::bad_input(e.to_string()))?;
    let options = config.model.policy_options();
    let recorder = if record {
        let session =
            crate::recording::session_info(&config, &options).map_err(BenchError::bad_input)?;
        Some(
            Recorder::start(RecordSettings::from_config(&config, &args.out), session)
                .map_err(|e| BenchError::bad_input(e.to_string()))?,
        )
    } else {
        None
    };
    let ticks = (args.seconds * args.rate_hz).ceil() as usize + 2;
    let source = crate::capture::open_source(&config.camera)
        .map_err(|e| BenchError::failure(e.to_string()))?;
    let model = config.model.path.clone();
    let service = Service::start(
        &config,
        source,
        move || crate::backend::load_policy(&model, &options),
        ServiceOptions {
            duration: Some(Duration::from_secs_f64(args.seconds)),
            trace_ticks: ticks,
            recorder: recorder.clone(),
            ..ServiceOptions::default()
        },
    )
    .map_err(|e| BenchError::failure(e.to_string()))?;
    let publish = service.publish_stats();
    let inference = service.inference_stats();
    let summary = service.wait();
    let record = recorder.map(|r| {
        r.finish();
        let s = r.stats();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        (
            load(&s.written),
            load(&s.dropped),
            load(&s.bytes),
            load(&s.writer_cpu_ns),
        )
    });
    if record.is_some() {
        let _ = std::fs::remove_file(&args.out);
    }
    let mut tick: Vec<i64> = summary
        .trace
        .iter()
        .map(|t| t.handed_off_ns as i64 - t.wake_ns as i64)
        .collect();
    let mut published = publish_delays_ns(&summary.trace, &publish);
    Ok(Run {
        tick: Spread::of_ns(&mut tick),
        publish: Spread::of_ns(&mut published),
        commands: summary.commands,
        predictions: inference.predictions.load(Ordering::Relaxed),
        record,
    })
}

fn cells(spread: Option<Spread>) -> String {
    match spread {
        Some(s) => format!("{:.1} / {:.1} / {:.1}", s.p50_us, s.p99_us, s.max_us),
        None => "-".into(),
    }
}

pub fn run(args: RecordBenchArgs) -> Result<(), BenchError> {
    if !(args.seconds.is_finite() && args.seconds > 0.0) {
        return Err(BenchError::bad_input("--seconds: must be > 0"));
    }
    if !(args.rate_hz.is_finite() && args.rate_hz > 0.0) {
        return Err(BenchError::bad_input("--rate-hz: must be > 0"));
    }
    println!(
        "recording cost: bundled default service, {} Hz, {} s per run, realtime {:?}, {} CPUs",
        args.rate_hz,
        args.seconds,
        args.realtime,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!("| recording | tick µs p50 / p99 / max | publish delay µs p50 / p99 / max | commands | predictions | writer CPU | written | dropped |");
    println!("| --- | --- | --- | ---: | ---: | --- | --- | ---: |");
    for record in [false, true] {
        let run = run_once(&args, record)?;
        let (writer, written, dropped) = match run.record {
            Some((messages, dropped, bytes, cpu_ns)) => (
                format!(
                    "{:.0} ms ({:.1} % of a core)",
                    cpu_ns as f64 / 1e6,
                    100.0 * cpu_ns as f64 / 1e9 / args.seconds
                ),
                format!(
                    "{messages} msgs, {:.1} MiB ({:.2} MiB/s)",
                    bytes as f64 / (1 << 20) as f64,
                    bytes as f64 / (1 << 20) as f64 / args.seconds
                ),
                dropped.to_string(),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        println!(
            "| {} | {} | {} | {} | {} | {writer} | {written} | {dropped} |",
            if record { "on" } else { "off" },
            cells(run.tick),
            cells(run.publish),
            run.commands,
            run.predictions,
        );
    }
    Ok(())
}
