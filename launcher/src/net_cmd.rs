//! `vmpod-launcher net setup | teardown`

use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum NetCommand {
    /// Discover the pod interface, cache its facts and rewire it for the VM.
    Setup,
    /// Restore the pod interfaces from the cache and remove bridges and taps.
    Teardown,
}

pub fn run(_cmd: NetCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
