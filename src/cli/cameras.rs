//! `vla-rt cameras`.

use super::CliError;

#[derive(Debug, clap::Args)]
pub struct CamerasArgs {}

pub fn main(_args: CamerasArgs) -> Result<(), CliError> {
    Err(CliError::failure(
        "vla-rt cameras: not available in this build",
    ))
}
