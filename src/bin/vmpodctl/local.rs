//! `vmpodctl run | get | status | console | stop`: local VMIs, no cluster.

use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum LocalCommand {
    /// Boot a VMI in a local pod in the foreground; Ctrl-C stops it gracefully.
    Run(crate::run::RunArgs),
}

pub fn run(cmd: LocalCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        LocalCommand::Run(args) => crate::run::run(args),
    }
}
