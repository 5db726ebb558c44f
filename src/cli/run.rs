//! `vla-rt run`.

use super::CliError;

#[derive(Debug, clap::Args)]
pub struct RunArgs {}

pub fn main(_args: RunArgs) -> Result<(), CliError> {
    Err(CliError::failure("vla-rt run: not available in this build"))
}
