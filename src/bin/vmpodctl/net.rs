//! `vmpodctl net ...`

use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum NetCommand {
    /// Show the pod's links, addresses, routes, bridges, taps and cached facts.
    Inspect,
    /// Show what `vmpod-launcher net setup` would do, changing nothing.
    Plan,
}

pub fn run(_cmd: NetCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
