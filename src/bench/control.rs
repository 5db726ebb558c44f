//! `vla-rt bench` (control).

use crate::cli::CliError;

#[derive(Debug, clap::Args)]
pub struct ControlBenchArgs {}

pub fn run(_args: ControlBenchArgs) -> Result<(), CliError> {
    Err(CliError::failure(
        "this benchmark is not available in this build",
    ))
}
