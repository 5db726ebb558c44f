//! The `vla-rt` command line (ARCHITECTURE.md §6). Each subcommand lives in its own module and
//! returns a [`CliError`] carrying its exit code: 2 for bad usage or bad input (the message
//! names the culprit), 3 when `run` stopped because a worker thread died or stalled, 1 for any
//! other failure.

pub mod bench;
pub mod cameras;
pub mod export_onnx;
pub mod predict;
pub mod quantize;
pub mod record_info;
pub mod replay;
pub mod run;
pub mod serve;

use clap::{Parser, Subcommand};

pub use vla_bench::named;

#[derive(Debug, Parser)]
#[command(
    name = "vla-rt",
    version,
    about = "Real-time runtime for OpenVLA-style vision-language-action policies"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: camera → policy → safety filter → Zenoh, at a fixed rate.
    Run(run::RunArgs),
    /// Answer inference requests from robots over Zenoh (remote inference).
    Serve(serve::ServeArgs),
    /// Run the policy once on an image file.
    Predict(predict::PredictArgs),
    /// Benchmarks.
    Bench(bench::BenchArgs),
    /// List V4L2 cameras with their formats, sizes, frame rates and controls.
    Cameras(cameras::CamerasArgs),
    /// Write a pre-quantized weight file for a checkpoint.
    Quantize(quantize::QuantizeArgs),
    /// Write the vision encoders as ONNX graphs (for TensorRT engines).
    ExportOnnx(export_onnx::ExportOnnxArgs),
    /// Run the policy again on a recording's frames and compare with what was recorded.
    Replay(replay::ReplayArgs),
    /// Print what a recording holds: duration, messages per channel, model, config, gaps.
    RecordInfo(record_info::RecordInfoArgs),
}

/// Exit code of `vla-rt run` after a worker fault (a thread died or stalled).
pub const EXIT_WORKER_FAULT: i32 = 3;

/// A failure with the process exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    pub exit_code: i32,
    pub message: String,
}

impl CliError {
    /// Bad usage or bad input: exit code 2.
    pub fn bad_input(message: impl Into<String>) -> Self {
        Self {
            exit_code: 2,
            message: message.into(),
        }
    }

    /// The service stopped because a worker thread died or stalled: exit code 3 (systemd's
    /// `Restart=on-failure` restarts it).
    pub fn worker_fault(message: impl Into<String>) -> Self {
        Self {
            exit_code: EXIT_WORKER_FAULT,
            message: message.into(),
        }
    }

    /// Any other failure: exit code 1.
    pub fn failure(message: impl Into<String>) -> Self {
        Self {
            exit_code: 1,
            message: message.into(),
        }
    }
}

impl From<crate::policy::PolicyError> for CliError {
    fn from(e: crate::policy::PolicyError) -> Self {
        if e.is_bad_input() {
            Self::bad_input(e.to_string())
        } else {
            Self::failure(e.to_string())
        }
    }
}

impl From<vla_bench::BenchError> for CliError {
    fn from(e: vla_bench::BenchError) -> Self {
        if e.is_bad_input() {
            Self::bad_input(e.to_string())
        } else {
            Self::failure(e.to_string())
        }
    }
}

pub fn dispatch(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Run(args) => run::main(args),
        Command::Serve(args) => serve::main(args),
        Command::Predict(args) => predict::main(args),
        Command::Bench(args) => bench::main(args),
        Command::Cameras(args) => cameras::main(args),
        Command::Quantize(args) => quantize::main(args),
        Command::ExportOnnx(args) => export_onnx::main(args),
        Command::Replay(args) => replay::main(args),
        Command::RecordInfo(args) => record_info::main(args),
    }
}
