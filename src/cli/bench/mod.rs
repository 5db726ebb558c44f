//! `vla-rt bench`: benchmarks. Without a subcommand it times the policy stages (see
//! [`vla_bench::policy`]); `control` times the control loop and transport; `quant` the
//! quantized weight formats.

pub mod control;
pub mod recording;
pub mod remote;

use super::CliError;
use vla_bench as bench;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    #[command(flatten)]
    pub policy: bench::policy::PolicyBenchArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Publish jitter and tick-to-subscriber latency of the control loop.
    Control(control::ControlBenchArgs),
    /// Weight bytes and decode speed of each weight format.
    Quant(bench::quant::QuantBenchArgs),
    /// The service's tick and publish timing without and with a session recording.
    Record(recording::RecordBenchArgs),
    /// Remote inference: robots per server, batched and unbatched, the hop's cost, failover.
    Remote(remote::RemoteBenchArgs),
}

pub fn main(args: BenchArgs) -> Result<(), CliError> {
    let result = match args.command {
        None => bench::policy::run(args.policy),
        Some(BenchCommand::Control(a)) => control::run(a),
        Some(BenchCommand::Quant(a)) => bench::quant::run(a),
        Some(BenchCommand::Record(a)) => recording::run(a),
        Some(BenchCommand::Remote(a)) => remote::run(a),
    };
    result.map_err(CliError::from)
}
