//! `vla-rt predict`.

use super::CliError;

#[derive(Debug, clap::Args)]
pub struct PredictArgs {}

pub fn main(_args: PredictArgs) -> Result<(), CliError> {
    Err(CliError::failure(
        "vla-rt predict: not available in this build",
    ))
}
