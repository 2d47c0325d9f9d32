//! `vmpod-launcher dhcp serve`

use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum DhcpCommand {
    /// Serve DHCP for the cached interfaces in the foreground.
    Serve,
}

pub fn run(_cmd: DhcpCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
