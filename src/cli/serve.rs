//! `vla-rt serve`: one checkpoint on one backend, answering the inference requests of many
//! robots on `vla/policy/<name>/infer` (ARCHITECTURE.md §16).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use zenoh::Wait;

use super::CliError;
use crate::config::ServiceConfig;
use crate::remote::{ServedCheckpoint, Server};
use crate::service::signals;
use crate::transport::{security, zenoh_io};

/// Where `serve` listens when neither the command line nor a config says: loopback, one port
/// above the robot service's default, so both run on one machine as they are.
pub const DEFAULT_SERVE_LISTEN: &str = "tcp/127.0.0.1:7448";

/// The largest request a server takes: a raw 1920×1080 frame and the longest instruction.
pub const LARGEST_REQUEST: usize = 1920 * 1080 * 3
    + crate::remote::wire::MAX_INSTRUCTION_BYTES
    + crate::remote::wire::REQUEST_HEADER_LEN
    + 512;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Checkpoint folder (sets `[model] path`).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// The name robots ask for: requests arrive on `vla/policy/<NAME>/infer`.
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// Configuration (TOML): `[model]` (backend, quantization, unnorm_key), `[zenoh]`,
    /// `[serve]`; other tables are ignored.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Zenoh endpoint to listen on, repeatable (replaces `[zenoh] listen`).
    #[arg(long, value_name = "EP")]
    pub zenoh_listen: Vec<String>,
    /// Zenoh endpoint (a router) to connect to, repeatable (replaces `[zenoh] connect`).
    #[arg(long, value_name = "EP")]
    pub zenoh_connect: Vec<String>,
    /// Stop after this many seconds (default: until SIGTERM or SIGINT).
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,
}

fn serve_config(args: &ServeArgs) -> Result<ServiceConfig, CliError> {
    let (mut config, file) = super::run::load_config(args.config.as_deref())?;
    crate::remote::validate_name(&args.name)
        .map_err(|m| CliError::bad_input(format!("--name: {m}")))?;
    if let Some(model) = &args.model {
        config.model.path = model.clone();
    }
    if !args.zenoh_listen.is_empty() {
        config.zenoh.listen = Some(args.zenoh_listen.clone());
    } else if args.config.is_none() {
        config.zenoh.listen = Some(vec![DEFAULT_SERVE_LISTEN.to_string()]);
    }
    if !args.zenoh_connect.is_empty() {
        config.zenoh.connect = Some(args.zenoh_connect.clone());
    }
    if config.model.remote.is_some() {
        return Err(CliError::bad_input(format!(
            "{file}: model.remote: a server runs its policy itself"
        )));
    }
    config
        .validate(&file)
        .map_err(|e| CliError::bad_input(e.to_string()))?;
    if !config.model.path.is_dir() {
        return Err(CliError::bad_input(format!(
            "model.path: {}: no such checkpoint folder",
            config.model.path.display()
        )));
    }
    Ok(config)
}

pub fn main(args: ServeArgs) -> Result<(), CliError> {
    let config = serve_config(&args)?;
    let duration = super::run::duration(args.duration)?;
    signals::install_termination_handlers()
        .map_err(|e| CliError::failure(format!("cannot install signal handlers: {e}")))?;
    let checkpoint = ServedCheckpoint::load(&config.model.path, config.model.unnorm_key.as_deref())
        .map_err(|e| {
            CliError::bad_input(format!("model.path {}: {e}", config.model.path.display()))
        })?;
    let policy = crate::backend::load_policy_with(
        &config.model.path,
        &config.model.policy_options(),
        &config.model.tensorrt_options(),
    )?;
    let (session, _) = zenoh_io::open_session(
        &config.zenoh,
        security::inbound_message_limit(LARGEST_REQUEST),
    )
    .map_err(|e| {
        if e.is_bad_input() {
            CliError::bad_input(e.to_string())
        } else {
            CliError::failure(e.to_string())
        }
    })?;
    log::info!(
        "serve: {} on {} ({}), checkpoint {}, statistics key {} by default",
        policy.model_name(),
        policy.backend_name(),
        if policy.batches_natively() {
            "batched"
        } else {
            "one request at a time"
        },
        checkpoint.fingerprint,
        checkpoint.default_unnorm_key
    );
    let mut server = Server::start(&session, policy, checkpoint, &config.serve, &args.name)
        .map_err(|e| CliError::failure(e.to_string()))?;
    let start = Instant::now();
    let mut last_report = Instant::now();
    while !signals::termination_requested() && duration.is_none_or(|limit| start.elapsed() < limit)
    {
        std::thread::sleep(Duration::from_millis(20));
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            log_stats(server.stats());
        }
    }
    server.stop();
    log_stats(server.stats());
    if let Err(e) = session.close().wait() {
        log::warn!(
            "zenoh: closing the session: {}",
            crate::transport::zenoh_error_text(&*e)
        );
    }
    Ok(())
}

fn log_stats(stats: &crate::remote::ServerStats) {
    use std::sync::atomic::Ordering::Relaxed;
    let batches = stats.batches.load(Relaxed);
    let batched = stats.batched.load(Relaxed);
    log::info!(
        "serve: {} received, {} answered, {} busy, {} expired, {} bad, {} failed, {} for \
         other servers; {} batches, {:.2} requests per batch",
        stats.received.load(Relaxed),
        stats.answered.load(Relaxed),
        stats.busy.load(Relaxed),
        stats.expired.load(Relaxed),
        stats.bad_requests.load(Relaxed),
        stats.failed.load(Relaxed),
        stats.routed_elsewhere.load(Relaxed),
        batches,
        if batches == 0 {
            0.0
        } else {
            batched as f64 / batches as f64
        }
    );
}
