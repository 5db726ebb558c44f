//! `vla-rt bench remote`: robots per server. On loopback, through an in-process Zenoh router:
//! N simulated robots, each asking for its next action as soon as the last one came back,
//! against one server, unbatched and batched; the local policy on the same machine for the
//! cost of the hop; and, with `--failover`, two `vla-rt serve` processes of which the one
//! serving a robot is killed mid-run.

use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use zenoh::Wait;

use super::control::{free_port, peer_config, zenoh_error};
use crate::policy::{BackendKind, Policy, PolicyOptions};
use crate::preprocess::RgbImage;
use crate::remote::wire::FrameEncoding;
use crate::remote::{RemotePolicy, ResolvedRemote, ServeConfig, ServedCheckpoint, Server};
use vla_bench::policy::BenchShape;
use vla_bench::BenchError;

#[derive(Debug, clap::Args)]
pub struct RemoteBenchArgs {
    /// Time this checkpoint [default: engines/openvla-tiny unless --random-weights].
    #[arg(long, value_name = "DIR", conflicts_with = "random_weights")]
    pub model: Option<PathBuf>,
    /// Serve a model of --shape with random weights, built in memory from --template.
    #[arg(long)]
    pub random_weights: bool,
    #[arg(long, value_enum, default_value = "mid")]
    pub shape: BenchShape,
    #[arg(long, value_name = "DIR", default_value = "engines/openvla-tiny")]
    pub template: PathBuf,
    /// The server's backend for a checkpoint (random weights run on the CPU).
    #[arg(long, value_parser = crate::cli::named::<BackendKind>(), default_value = "cpu")]
    pub backend: BackendKind,
    /// Robot counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    pub robots: Vec<usize>,
    /// Timed actions per robot.
    #[arg(long, default_value_t = 20)]
    pub actions: usize,
    /// The batched server's window (ms) and largest batch.
    #[arg(long, default_value_t = 5.0)]
    pub window_ms: f64,
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,
    /// Also kill one of two `vla-rt serve` processes (tiny checkpoint) mid-run and time
    /// the robots' failover or STOP.
    #[arg(long)]
    pub failover: bool,
}

fn failure(e: impl std::fmt::Display) -> BenchError {
    BenchError::failure(e.to_string())
}

fn zenoh_session(
    mode: &str,
    listen: Option<u16>,
    connect: Option<u16>,
) -> Result<zenoh::Session, BenchError> {
    let mut config = peer_config(listen, connect)?;
    config
        .insert_json5("mode", &format!("\"{mode}\""))
        .map_err(zenoh_error("zenoh config mode"))?;
    // A raw 1920×1080 request, as a server takes.
    crate::transport::security::limit_inbound_messages(
        &mut config,
        crate::transport::security::inbound_message_limit(crate::cli::serve::LARGEST_REQUEST),
    )
    .map_err(failure)?;
    zenoh::open(config)
        .wait()
        .map_err(zenoh_error("zenoh session"))
}

/// What is served and how it is labelled.
struct Served {
    label: String,
    build: Box<dyn Fn() -> Result<Box<dyn Policy>, BenchError>>,
    checkpoint: Box<dyn Fn() -> Result<ServedCheckpoint, BenchError>>,
    fingerprint: String,
}

/// The statistics key a benchmark un-normalises with: any will do, the first is taken.
fn first_unnorm_key(dir: &std::path::Path) -> Result<String, BenchError> {
    let config = crate::model::config::OpenVlaConfig::from_file(&dir.join("config.json"))
        .map_err(failure)?;
    config
        .norm_stats
        .keys()
        .next()
        .cloned()
        .ok_or_else(|| failure(format!("{}: no dataset statistics", dir.display())))
}

fn served(args: &RemoteBenchArgs) -> Result<Served, BenchError> {
    if args.random_weights {
        if args.backend != BackendKind::Cpu {
            return Err(BenchError::bad_input(
                "--random-weights runs on the CPU backend; --backend needs --model",
            ));
        }
        let (shape, template) = (args.shape, args.template.clone());
        let key = first_unnorm_key(&template)?;
        let checkpoint_key = key.clone();
        let fingerprint = format!("sha256:random-{shape:?}").to_lowercase();
        let template_for_checkpoint = template.clone();
        let fingerprint_for_checkpoint = fingerprint.clone();
        let (_, params) = vla_bench::policy::random_policy(shape, &template, Some(&key))?;
        Ok(Served {
            label: format!(
                "random weights, shape {shape:?}, {:.1} M parameters",
                params as f64 / 1e6
            ),
            build: Box::new(move || {
                let (policy, _) = vla_bench::policy::random_policy(shape, &template, Some(&key))?;
                Ok(Box::new(policy) as Box<dyn Policy>)
            }),
            checkpoint: Box::new(move || {
                ServedCheckpoint::with_fingerprint(
                    &template_for_checkpoint,
                    Some(&checkpoint_key),
                    fingerprint_for_checkpoint.clone(),
                )
                .map_err(failure)
            }),
            fingerprint,
        })
    } else {
        let dir = args
            .model
            .clone()
            .unwrap_or_else(|| PathBuf::from(crate::config::BUNDLED_MODEL_DIR));
        let key = first_unnorm_key(&dir)?;
        let checkpoint = ServedCheckpoint::load(&dir, Some(&key)).map_err(failure)?;
        let fingerprint = checkpoint.fingerprint.clone();
        let (load_dir, checkpoint_dir) = (dir.clone(), dir.clone());
        let checkpoint_key = key.clone();
        let options = PolicyOptions {
            backend: args.backend,
            unnorm_key: Some(key),
            ..PolicyOptions::default()
        };
        Ok(Served {
            label: format!(
                "checkpoint {}, {} backend",
                dir.display(),
                crate::policy::NamedVariant::name(args.backend)
            ),
            build: Box::new(move || {
                crate::backend::load_policy(&load_dir, &options).map_err(failure)
            }),
            checkpoint: Box::new(move || {
                ServedCheckpoint::load(&checkpoint_dir, Some(&checkpoint_key)).map_err(failure)
            }),
            fingerprint,
        })
    }
}

/// A 640×480 frame, different for each robot.
fn robot_image(robot: usize) -> RgbImage {
    let (width, height) = (640u32, 480u32);
    let data = (0..width * height)
        .flat_map(|i| {
            let (x, y) = (i % width, i / width);
            [
                (x * 255 / width) as u8,
                (y * 255 / height) as u8,
                ((robot * 37) % 256) as u8,
            ]
        })
        .collect();
    RgbImage {
        width,
        height,
        data,
    }
}

const INSTRUCTIONS: [&str; 4] = [
    "pick up the red block",
    "put the blue block in the bowl",
    "push the green block to the left",
    "open the drawer",
];

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

struct Round {
    actions_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    mean_batch: f64,
    failed: usize,
}

/// `robots` closed-loop robots against one server of `settings`.
fn run_round(
    router_port: u16,
    served: &Served,
    settings: &ServeConfig,
    robots: usize,
    actions: usize,
    name: &str,
) -> Result<Round, BenchError> {
    let server_session = zenoh_session("client", None, Some(router_port))?;
    let mut server = Server::start(
        &server_session,
        (served.build)()?,
        (served.checkpoint)()?,
        settings,
        name,
    )
    .map_err(failure)?;
    let remote = ResolvedRemote {
        name: name.to_string(),
        timeout_ms: 60_000,
        fingerprint: served.fingerprint.clone(),
        encoding: FrameEncoding::Jpeg,
        jpeg_quality: 90,
    };
    let barrier = Arc::new(Barrier::new(robots + 1));
    let mut threads = Vec::new();
    for robot in 0..robots {
        let barrier = Arc::clone(&barrier);
        let remote = remote.clone();
        threads.push(std::thread::spawn(
            move || -> Result<(Vec<f64>, usize), String> {
                let image = robot_image(robot);
                let instruction = INSTRUCTIONS[robot % INSTRUCTIONS.len()];
                // Untimed: the router learns the queryable, the server the instruction.
                let warmed = (|| {
                    let session = zenoh_session("client", None, Some(router_port))
                        .map_err(|e| e.to_string())?;
                    let mut policy =
                        RemotePolicy::connect(&session, &remote, &format!("robot{robot}"), None)
                            .map_err(|e| e.to_string())?;
                    policy
                        .predict(&image, instruction)
                        .map_err(|e| format!("robot{robot}: no first answer: {e}"))?;
                    Ok::<_, String>((session, policy))
                })();
                // Every robot meets the others, answered or not, so that none waits forever.
                barrier.wait();
                let (session, mut policy) = warmed?;
                let mut latencies = Vec::with_capacity(actions);
                let mut failed = 0;
                for _ in 0..actions {
                    let t = Instant::now();
                    match policy.predict(&image, instruction) {
                        Ok(_) => latencies.push(t.elapsed().as_secs_f64() * 1e3),
                        Err(_) => failed += 1,
                    }
                }
                let _ = session.close().wait();
                Ok((latencies, failed))
            },
        ));
    }
    barrier.wait();
    let batches_before = server
        .stats()
        .batches
        .load(std::sync::atomic::Ordering::Relaxed);
    let batched_before = server
        .stats()
        .batched
        .load(std::sync::atomic::Ordering::Relaxed);
    let start = Instant::now();
    let mut latencies = Vec::new();
    let mut failed = 0;
    for thread in threads {
        let (mut robot_latencies, robot_failed) = thread
            .join()
            .map_err(|_| failure("a simulated robot panicked"))?
            .map_err(failure)?;
        latencies.append(&mut robot_latencies);
        failed += robot_failed;
    }
    let wall = start.elapsed().as_secs_f64();
    let stats = server.stats();
    let batches = stats.batches.load(std::sync::atomic::Ordering::Relaxed) - batches_before;
    let batched = stats.batched.load(std::sync::atomic::Ordering::Relaxed) - batched_before;
    server.stop();
    let _ = server_session.close().wait();
    latencies.sort_by(f64::total_cmp);
    Ok(Round {
        actions_per_s: latencies.len() as f64 / wall,
        p50_ms: percentile(&latencies, 50.0),
        p99_ms: percentile(&latencies, 99.0),
        mean_batch: batched as f64 / batches.max(1) as f64,
        failed,
    })
}

pub fn run(args: RemoteBenchArgs) -> Result<(), BenchError> {
    if args.robots.is_empty() || args.robots.iter().any(|&n| n == 0 || n > 64) {
        return Err(BenchError::bad_input("--robots: counts from 1 to 64"));
    }
    if args.actions == 0 {
        return Err(BenchError::bad_input("--actions: at least 1"));
    }
    let served = served(&args)?;
    let router_port = free_port()?;
    let router = zenoh_session("router", Some(router_port), None)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("remote inference benchmark: {}", served.label);
    println!(
        "loopback through a Zenoh router; 640×480 frames as JPEG (quality 90); {} timed actions per robot, \
         each robot asking again as soon as its answer came; {threads} cores",
        args.actions
    );

    // The local policy on the same machine: the cost of the hop.
    let mut local = (served.build)()?;
    let image = robot_image(0);
    local.predict(&image, INSTRUCTIONS[0]).map_err(failure)?;
    let mut local_ms: Vec<f64> = (0..args.actions.min(10))
        .map(|_| {
            let t = Instant::now();
            local
                .predict(&image, INSTRUCTIONS[0])
                .map(|_| t.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<Result<_, _>>()
        .map_err(failure)?;
    drop(local);
    local_ms.sort_by(f64::total_cmp);
    let remote_one = run_round(
        router_port,
        &served,
        &ServeConfig {
            batch_window_ms: 0.0,
            max_batch: 1,
            queue: 64,
        },
        1,
        args.actions.min(10),
        "bench-hop",
    )?;
    println!();
    println!("| one robot | p50 ms | p99 ms |");
    println!("| --- | ---: | ---: |");
    println!(
        "| local policy, same process | {:.1} | {:.1} |",
        percentile(&local_ms, 50.0),
        percentile(&local_ms, 99.0)
    );
    println!(
        "| remote, through the router | {:.1} | {:.1} |",
        remote_one.p50_ms, remote_one.p99_ms
    );

    println!();
    println!("| robots | server | actions/s | p50 ms | p99 ms | mean batch | failed |");
    println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: |");
    for &robots in &args.robots {
        for (label, settings) in [
            (
                "unbatched".to_string(),
                ServeConfig {
                    batch_window_ms: 0.0,
                    max_batch: 1,
                    queue: 64,
                },
            ),
            (
                format!("batched ({} ms, ≤ {})", args.window_ms, args.max_batch),
                ServeConfig {
                    batch_window_ms: args.window_ms,
                    max_batch: args.max_batch,
                    queue: 64,
                },
            ),
        ] {
            let round = run_round(
                router_port,
                &served,
                &settings,
                robots,
                args.actions,
                &format!("bench-{robots}-{}", settings.max_batch),
            )?;
            println!(
                "| {robots} | {label} | {:.2} | {:.1} | {:.1} | {:.2} | {} |",
                round.actions_per_s, round.p50_ms, round.p99_ms, round.mean_batch, round.failed
            );
        }
    }
    if args.failover {
        failover(router_port)?;
    }
    drop(router);
    Ok(())
}

/// A `vla-rt serve` child process.
struct ServeChild {
    child: std::process::Child,
    id: Arc<std::sync::Mutex<Option<String>>>,
}

impl ServeChild {
    fn start(router_port: u16, name: &str) -> Result<Self, BenchError> {
        let binary = std::env::current_exe().map_err(failure)?;
        let mut child = std::process::Command::new(binary)
            .args([
                "serve",
                "--name",
                name,
                "--model",
                crate::config::BUNDLED_MODEL_DIR,
            ])
            .args([
                "--zenoh-connect".to_string(),
                format!("tcp/127.0.0.1:{router_port}"),
                "--zenoh-listen".to_string(),
                format!("tcp/127.0.0.1:{}", free_port()?),
            ])
            .env("RUST_LOG", "info,zenoh=error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| failure(format!("vla-rt serve: {e}")))?;
        let id = Arc::new(std::sync::Mutex::new(None));
        let stderr = child.stderr.take();
        let found = Arc::clone(&id);
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            let Some(stderr) = stderr else { return };
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(at) = line.find(" as server ") {
                    let id = line[at + " as server ".len()..]
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    if let Ok(mut slot) = found.lock() {
                        *slot = Some(id);
                    }
                }
            }
        });
        Ok(Self { child, id })
    }

    fn wait_for_id(&self) -> Result<String, BenchError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(id) = self.id.lock().ok().and_then(|slot| slot.clone()) {
                return Ok(id);
            }
            if Instant::now() > deadline {
                return Err(failure("vla-rt serve did not start within 60 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ServeChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Robots asking at the bundled checkpoint's 5 Hz, with a one-step timeout and the default
/// three missed steps before STOP; the server answering most of them is killed (SIGKILL).
fn failover(router_port: u16) -> Result<(), BenchError> {
    const ROBOTS: usize = 4;
    const STEP: Duration = Duration::from_millis(200);
    const STOP_AFTER_MISSES: usize = 3;
    let mut servers = [
        ServeChild::start(router_port, "bench-failover")?,
        ServeChild::start(router_port, "bench-failover")?,
    ];
    let ids = [servers[0].wait_for_id()?, servers[1].wait_for_id()?];
    let fingerprint = crate::model::fingerprint::checkpoint_fingerprint(std::path::Path::new(
        crate::config::BUNDLED_MODEL_DIR,
    ))
    .map_err(failure)?;
    let remote = ResolvedRemote {
        name: "bench-failover".into(),
        timeout_ms: STEP.as_millis() as u64,
        fingerprint,
        encoding: FrameEncoding::Jpeg,
        jpeg_quality: 90,
    };
    let start = Instant::now();
    let kill_at = start + Duration::from_secs(4);
    let end = start + Duration::from_secs(8);
    let mut threads = Vec::new();
    for robot in 0..ROBOTS {
        let remote = remote.clone();
        threads.push(std::thread::spawn(
            move || -> Result<Vec<(Instant, Option<String>)>, String> {
                let session =
                    zenoh_session("client", None, Some(router_port)).map_err(|e| e.to_string())?;
                let mut policy =
                    RemotePolicy::connect(&session, &remote, &format!("robot{robot}"), None)
                        .map_err(|e| e.to_string())?;
                let image = robot_image(robot);
                let mut log = Vec::new();
                let mut next = Instant::now();
                while Instant::now() < end {
                    let answer = policy.predict(&image, INSTRUCTIONS[0]).ok();
                    log.push((
                        Instant::now(),
                        answer.map(|_| policy.last_server().to_string()),
                    ));
                    next += STEP;
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
                let _ = session.close().wait();
                Ok(log)
            },
        ));
    }
    // Which server each robot is on is known only to the robot: kill the first, and read
    // from each robot's log whether it was that one's.
    std::thread::sleep(kill_at.saturating_duration_since(Instant::now()));
    let victim = 0;
    let killed_at = Instant::now();
    let _ = servers[victim].child.kill();
    let _ = servers[victim].child.wait();
    let mut rows = Vec::new();
    for (robot, thread) in threads.into_iter().enumerate() {
        let log = thread
            .join()
            .map_err(|_| failure("a simulated robot panicked"))?
            .map_err(failure)?;
        let before: Option<&String> = log
            .iter()
            .rev()
            .filter(|(at, _)| *at < killed_at)
            .find_map(|(_, server)| server.as_ref());
        let on_victim = before == Some(&ids[victim]);
        let after: Vec<_> = log.iter().filter(|(at, _)| *at >= killed_at).collect();
        let mut misses = 0;
        let mut outcome = format!("no answer after the kill ({} requests)", after.len());
        for (at, server) in &after {
            match server {
                Some(server) if *server == ids[victim] => {
                    outcome = "answered by the killed server after its death".into();
                    break;
                }
                Some(_) => {
                    outcome = format!(
                        "served by the other server {:.0} ms after the kill",
                        at.duration_since(killed_at).as_secs_f64() * 1e3
                    );
                    break;
                }
                None => {
                    misses += 1;
                    if misses >= STOP_AFTER_MISSES {
                        outcome = format!(
                            "STOP {:.0} ms after the kill ({STOP_AFTER_MISSES} missed steps)",
                            at.duration_since(killed_at).as_secs_f64() * 1e3
                        );
                        break;
                    }
                }
            }
        }
        rows.push((robot, on_victim, outcome));
    }
    println!();
    println!(
        "failover: {ROBOTS} robots at 5 Hz (timeout one step, STOP after {STOP_AFTER_MISSES} \
         missed steps), two `vla-rt serve` of the tiny checkpoint, one killed (SIGKILL) at 4 s"
    );
    println!("| robot | on the killed server | after the kill |");
    println!("| --- | --- | --- |");
    for (robot, on_victim, outcome) in rows {
        println!(
            "| robot{robot} | {} | {outcome} |",
            if on_victim { "yes" } else { "no" }
        );
    }
    Ok(())
}
