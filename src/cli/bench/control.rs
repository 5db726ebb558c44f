//! `vla-rt bench control`: how punctual the control loop is and how fast its commands reach
//! a subscriber, each next to a baseline measured in the same run, with the policy running:
//!
//! - publish jitter (actual minus scheduled tick time) of the service's loop (absolute
//!   `clock_nanosleep`, SCHED_FIFO when permitted, hand-off to the publisher thread) next to
//!   a naive loop that publishes and then calls `thread::sleep(period)`;
//! - tick-to-subscriber latency on loopback (tick timestamp to the subscriber's callback,
//!   another Zenoh session over TCP) next to bare Zenoh pub/sub of 64-byte messages
//!   published straight from a plain thread.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use zenoh::qos::{CongestionControl, Priority};
use zenoh::Wait;

use crate::config::{RealtimeMode, ServiceConfig};
use crate::control::clock;
use crate::control::command_record::{CommandRecord, RECORD_LEN};
use crate::control::ControlState;
use crate::policy::{Policy, PolicyOptions};
use crate::service::{Service, ServiceOptions};
use vla_bench::BenchError;

#[derive(Debug, clap::Args)]
pub struct ControlBenchArgs {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Control rates to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "50,200")]
    pub rates: Vec<f64>,
    /// Checkpoint the policy runs from during the measurement (default: the bundled tiny one).
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long)]
    pub unnorm_key: Option<String>,
    /// SCHED_FIFO and mlockall for the service's loop.
    #[arg(long, value_parser = crate::cli::named::<RealtimeMode>(), default_value = "try")]
    pub realtime: RealtimeMode,
}

/// p50, p99 and max of a sample, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub count: usize,
}

impl Spread {
    /// Exact order statistics of `ns` (nearest rank); `None` for an empty sample.
    pub fn of_ns(ns: &mut [i64]) -> Option<Self> {
        if ns.is_empty() {
            return None;
        }
        ns.sort_unstable();
        let rank = |q: f64| {
            let r = (q * ns.len() as f64).ceil() as usize;
            ns[r.clamp(1, ns.len()) - 1] as f64 / 1e3
        };
        Some(Self {
            p50_us: rank(0.5),
            p99_us: rank(0.99),
            max_us: ns[ns.len() - 1] as f64 / 1e3,
            count: ns.len(),
        })
    }

    fn cells(spread: Option<Self>) -> String {
        match spread {
            Some(s) => format!("{:.0} / {:.0} / {:.0}", s.p50_us, s.p99_us, s.max_us),
            None => "-".into(),
        }
    }
}

struct ServiceRun {
    wake: Option<Spread>,
    publish: Option<Spread>,
    to_subscriber: Option<Spread>,
    commands: u64,
    act_share: f64,
    overruns: u64,
    policy_p50_ms: Option<f64>,
}

struct NaiveRun {
    publish: Option<Spread>,
    bare_latency: Option<Spread>,
    achieved_hz: f64,
}

pub(super) fn free_port() -> Result<u16, BenchError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| BenchError::failure(format!("no free loopback port: {e}")))
}

pub(super) fn zenoh_error(what: &str) -> impl Fn(zenoh::Error) -> BenchError + '_ {
    move |e| {
        BenchError::failure(format!(
            "{what}: {}",
            crate::transport::zenoh_error_text(&*e)
        ))
    }
}

pub(super) fn peer_config(
    listen: Option<u16>,
    connect: Option<u16>,
) -> Result<zenoh::Config, BenchError> {
    let mut config = zenoh::Config::default();
    let set = |config: &mut zenoh::Config, key: &str, value: String| {
        config
            .insert_json5(key, &value)
            .map_err(zenoh_error("zenoh config"))
    };
    set(&mut config, "scouting/multicast/enabled", "false".into())?;
    let listen = listen.map(|p| format!("[\"tcp/127.0.0.1:{p}\"]"));
    set(
        &mut config,
        "listen/endpoints",
        listen.unwrap_or("[]".into()),
    )?;
    if let Some(port) = connect {
        set(
            &mut config,
            "connect/endpoints",
            format!("[\"tcp/127.0.0.1:{port}\"]"),
        )?;
    }
    Ok(config)
}

/// Subscribes to `key` in a second session connected to `port`; each 64-byte record's
/// tick time is compared with CLOCK_REALTIME at arrival.
fn latency_subscriber(
    port: u16,
    key: &str,
) -> Result<
    (
        zenoh::Session,
        crossbeam::channel::Receiver<i64>,
        zenoh::pubsub::Subscriber<()>,
    ),
    BenchError,
> {
    let session = zenoh::open(peer_config(None, Some(port))?)
        .wait()
        .map_err(zenoh_error("subscriber session"))?;
    let (sender, receiver) = crossbeam::channel::unbounded();
    let subscriber = session
        .declare_subscriber(key.to_string())
        .callback(move |sample| {
            let arrival = clock::realtime_ns();
            if let Ok(record) = CommandRecord::decode(&sample.payload().to_bytes()) {
                let _ = sender.send(arrival as i64 - record.tick_time_ns as i64);
            }
        })
        .wait()
        .map_err(zenoh_error("subscriber"))?;
    Ok((session, receiver, subscriber))
}

fn load(args: &ControlBenchArgs, model: &std::path::Path) -> Result<Box<dyn Policy>, BenchError> {
    let options = PolicyOptions {
        unnorm_key: args.unnorm_key.clone().or_else(|| {
            args.model
                .is_none()
                .then(|| crate::config::BUNDLED_UNNORM_KEY.to_string())
        }),
        ..PolicyOptions::default()
    };
    crate::backend::load_policy(model, &options).map_err(BenchError::from)
}

fn run_service(
    args: &ControlBenchArgs,
    model: &std::path::Path,
    rate_hz: f64,
) -> Result<ServiceRun, BenchError> {
    let port = free_port()?;
    let mut config = ServiceConfig::builtin();
    config.robot_id = "bench".into();
    config.control.rate_hz = rate_hz;
    config.control.realtime = args.realtime;
    config.zenoh.listen = Some(vec![format!("tcp/127.0.0.1:{port}")]);
    config
        .validate("bench config")
        .map_err(|e| BenchError::bad_input(e.to_string()))?;
    let ticks = (args.seconds * rate_hz).ceil() as usize + 2;
    let source = crate::capture::open_source(&config.camera)
        .map_err(|e| BenchError::failure(e.to_string()))?;
    let policy = load(args, model)?;
    let service = Service::start(
        &config,
        source,
        move || Ok(policy),
        ServiceOptions {
            duration: Some(Duration::from_secs_f64(args.seconds)),
            trace_ticks: ticks,
            ..ServiceOptions::default()
        },
    )
    .map_err(|e| BenchError::failure(e.to_string()))?;
    let (session, latencies, subscriber) = latency_subscriber(port, "vla/bench/cmd")?;
    let control = service.control_stats();
    let publish = service.publish_stats();
    let inference = service.inference_stats();
    let summary = service.wait();
    let _ = subscriber.undeclare().wait();
    let _ = session.close().wait();

    let mut wake: Vec<i64> = summary
        .trace
        .iter()
        .map(|t| t.wake_ns as i64 - t.scheduled_ns as i64)
        .collect();
    let mut published = publish_delays_ns(&summary.trace, &publish);
    // The subscriber connects a moment after the first ticks; it measures what it got.
    let mut to_subscriber: Vec<i64> = latencies.try_iter().collect();
    let ticks_total = control.ticks.load(Ordering::Relaxed).max(1);
    Ok(ServiceRun {
        wake: Spread::of_ns(&mut wake),
        publish: Spread::of_ns(&mut published),
        to_subscriber: Spread::of_ns(&mut to_subscriber),
        commands: summary.commands,
        act_share: control.act_ticks.load(Ordering::Relaxed) as f64 / ticks_total as f64,
        overruns: control.overruns.load(Ordering::Relaxed),
        policy_p50_ms: inference.stages[5].quantile_ms(0.5),
    })
}

/// The naive loop: publish, then `thread::sleep(period)`; lateness measured against the
/// ideal schedule `start + k * period`. The policy runs flat out beside it on the same frames
/// the service would see, and its records double as the bare Zenoh pub/sub baseline (the
/// timestamp is taken right before `put`, from a plain thread).
fn run_naive(
    args: &ControlBenchArgs,
    model: &std::path::Path,
    rate_hz: f64,
) -> Result<NaiveRun, BenchError> {
    let port = free_port()?;
    let session = zenoh::open(peer_config(Some(port), None)?)
        .wait()
        .map_err(zenoh_error("naive publisher session"))?;
    let publisher = session
        .declare_publisher("vla/naive/cmd")
        .priority(Priority::RealTime)
        .express(true)
        .congestion_control(CongestionControl::Drop)
        .wait()
        .map_err(zenoh_error("naive publisher"))?;
    let (sub_session, latencies, subscriber) = latency_subscriber(port, "vla/naive/cmd")?;
    std::thread::sleep(Duration::from_millis(300));

    let mut policy = load(args, model)?;
    let running = Arc::new(AtomicBool::new(true));
    let background = {
        let running = Arc::clone(&running);
        let camera = ServiceConfig::builtin().camera;
        std::thread::spawn(move || {
            let Ok(mut source) = crate::capture::open_source(&camera) else {
                return;
            };
            if source.start().is_err() {
                return;
            }
            let mut frame = crate::capture::Frame::default();
            while running.load(Ordering::Relaxed) {
                if source.next_frame(&mut frame).is_ok() {
                    let _ = policy.predict(&frame.image, "pick up the red block");
                }
            }
        })
    };

    let period_ns = (1e9 / rate_hz) as u64;
    let ticks = (args.seconds * rate_hz).ceil() as u64;
    let mut lateness = Vec::with_capacity(ticks as usize);
    let start = clock::monotonic_ns();
    let mut encoded = [0u8; RECORD_LEN];
    for k in 0..ticks {
        CommandRecord {
            state: ControlState::Hold,
            seq: k,
            tick_time_ns: clock::realtime_ns(),
            capture_time_ns: 0,
            action: [0.0; 7],
        }
        .encode(&mut encoded);
        let _ = publisher.put(encoded).wait();
        let done = clock::monotonic_ns();
        lateness.push(done as i64 - (start + k * period_ns) as i64);
        std::thread::sleep(Duration::from_nanos(period_ns));
    }
    let elapsed_s = (clock::monotonic_ns() - start) as f64 / 1e9;
    running.store(false, Ordering::Relaxed);
    let _ = background.join();
    std::thread::sleep(Duration::from_millis(100));
    let _ = subscriber.undeclare().wait();
    let _ = sub_session.close().wait();
    let _ = publisher.undeclare().wait();
    let _ = session.close().wait();
    let mut bare: Vec<i64> = latencies.try_iter().collect();
    Ok(NaiveRun {
        publish: Spread::of_ns(&mut lateness),
        bare_latency: Spread::of_ns(&mut bare),
        achieved_hz: ticks as f64 / elapsed_s,
    })
}

pub fn run(args: ControlBenchArgs) -> Result<(), BenchError> {
    if !(args.seconds.is_finite() && args.seconds > 0.0) {
        return Err(BenchError::bad_input("--seconds: must be > 0"));
    }
    if let Some(bad) = args.rates.iter().find(|r| !(r.is_finite() && **r > 0.0)) {
        return Err(BenchError::bad_input(format!(
            "--rates: {bad} is not a rate"
        )));
    }
    let model = args
        .model
        .clone()
        .unwrap_or_else(|| ServiceConfig::builtin().model.path);
    println!(
        "control loop benchmark: {} s per row, policy from {}, realtime {:?}, {} CPUs",
        args.seconds,
        model.display(),
        args.realtime,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!("| rate | loop | wake jitter µs p50 / p99 / max | publish jitter µs p50 / p99 / max | tick-to-subscriber µs p50 / p99 / max | notes |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for &rate in &args.rates {
        let service = run_service(&args, &model, rate)?;
        println!(
            "| {rate} Hz | vla-rt (abs. clock_nanosleep, publisher thread) | {} | {} | {} | {} cmds, ACT {:.0} %, {} overruns, policy p50 {} ms |",
            Spread::cells(service.wake),
            Spread::cells(service.publish),
            Spread::cells(service.to_subscriber),
            service.commands,
            service.act_share * 100.0,
            service.overruns,
            service
                .policy_p50_ms
                .map_or("-".to_string(), |ms| format!("{ms:.1}")),
        );
        let naive = run_naive(&args, &model, rate)?;
        println!(
            "| {rate} Hz | naive `thread::sleep(period)` + bare Zenoh put | - | {} | {} (bare pub/sub) | achieved {:.2} Hz |",
            Spread::cells(naive.publish),
            Spread::cells(naive.bare_latency),
            naive.achieved_hz,
        );
    }
    Ok(())
}

/// Scheduled tick to the end of its record's put, in ns, for every traced tick whose record
/// was put.
pub fn publish_delays_ns(
    trace: &[crate::control::tick_loop::TickTrace],
    publish: &crate::transport::zenoh_io::PublishStats,
) -> Vec<i64> {
    trace
        .iter()
        .filter_map(|t| {
            let done = publish
                .put_done_ns
                .get(t.seq as usize)?
                .load(Ordering::Relaxed);
            (done > 0).then(|| done as i64 - t.scheduled_ns as i64)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_uses_nearest_rank() {
        let mut ns: Vec<i64> = (1..=100).map(|v| v * 1_000).collect();
        let s = Spread::of_ns(&mut ns).unwrap();
        assert_eq!(
            (s.p50_us, s.p99_us, s.max_us, s.count),
            (50.0, 99.0, 100.0, 100)
        );
        assert_eq!(Spread::of_ns(&mut []), None);
    }
}
