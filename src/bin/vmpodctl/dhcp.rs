//! `vmpodctl dhcp ...`

use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum DhcpCommand {
    /// Run DISCOVER/OFFER/REQUEST/ACK against a DHCP server and print what it offers.
    Probe,
}

pub fn run(_cmd: DhcpCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
