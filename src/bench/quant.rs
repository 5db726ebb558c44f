//! `vla-rt bench` (quant).

use crate::cli::CliError;

#[derive(Debug, clap::Args)]
pub struct QuantBenchArgs {}

pub fn run(_args: QuantBenchArgs) -> Result<(), CliError> {
    Err(CliError::failure(
        "this benchmark is not available in this build",
    ))
}
