//! `vmpod-launcher [run]`: the whole pod.

use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct RunArgs {
    /// The VirtualMachineInstance (YAML or JSON file, `-` for standard input).
    #[arg(long, env = "VMPOD_VMI")]
    pub vmi: Option<String>,
    /// Per-pod state directory: control socket, cached facts, libvirt sockets, console log.
    #[arg(long, default_value = "/var/run/vmpod")]
    pub state_dir: PathBuf,
}

pub fn run(_args: RunArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
