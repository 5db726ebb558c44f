//! `vla-rt bench` (policy).

use crate::cli::CliError;

#[derive(Debug, clap::Args)]
pub struct PolicyBenchArgs {}

pub fn run(_args: PolicyBenchArgs) -> Result<(), CliError> {
    Err(CliError::failure(
        "this benchmark is not available in this build",
    ))
}
