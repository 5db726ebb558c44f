//! `vla-rt quantize`.

use super::CliError;

#[derive(Debug, clap::Args)]
pub struct QuantizeArgs {}

pub fn main(_args: QuantizeArgs) -> Result<(), CliError> {
    Err(CliError::failure(
        "vla-rt quantize: not available in this build",
    ))
}
