//! vmpod-launcher: the pod entrypoint. Discovers the pod interface, rewires it into a
//! bridge and a tap, serves DHCP to the VM, boots the VM as a libvirt domain and owns its
//! lifecycle. `net` and `dhcp` run one phase alone (e.g. as a privileged init container).

mod accel_fallback;
mod backend;
mod boot_slots;
mod decide;
mod dhcp_cmd;
mod lifecycle;
mod net_cmd;
mod reaper;
mod run;
mod status_file;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "vmpod-launcher",
    version,
    about = "Pod entrypoint: turn the pod network into the VM's and boot the VM",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: run::RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole pod: network, DHCP, libvirt, the VM and the control API (default).
    Run(run::RunArgs),
    /// Run the network phase alone.
    #[command(subcommand)]
    Net(net_cmd::NetCommand),
    /// Serve DHCP for the cached interfaces in the foreground.
    #[command(subcommand)]
    Dhcp(dhcp_cmd::DhcpCommand),
}

fn main() -> ExitCode {
    // PID 1 of a container: a reaper stays in front, the launcher runs as its child.
    if let Some(code) = reaper::init_if_pid1() {
        return code;
    }
    vmpod::domain::daemons::lean_malloc();
    vmpod::init_logging("info");
    let cli = Cli::parse();
    let result = match cli.command {
        None => run::run(cli.run),
        Some(Command::Run(a)) => run::run(a),
        Some(Command::Net(c)) => net_cmd::run(c),
        Some(Command::Dhcp(c)) => dhcp_cmd::run(c),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vmpod-launcher: {e:#}");
            ExitCode::FAILURE
        }
    }
}
