//! vmpodctl: the people's CLI for vmpod. Run a VM locally, inspect a pod's network, probe
//! its DHCP server, read a VM's status and console. Every control-API endpoint has a verb.

mod dhcp;
mod net;
mod remote;
mod run;
mod validate;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "vmpodctl",
    version,
    about = "Run and debug vmpod virtual machines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect a pod's network: links, bridges, taps, routes and cached facts.
    #[command(subcommand)]
    Net(net::NetCommand),
    /// Talk to a pod's DHCP server the way the VM would.
    #[command(subcommand)]
    Dhcp(dhcp::DhcpCommand),
    /// Check a VirtualMachineInstance manifest; errors name the field path.
    Validate(validate::ValidateArgs),
    /// Boot a VMI in a local pod in the foreground; Ctrl-C stops it gracefully.
    Run(run::RunArgs),
    #[command(flatten)]
    Remote(remote::RemoteCommand),
}

fn main() -> ExitCode {
    vmpod::init_logging("warn");
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Net(c) => net::run(c),
        Command::Dhcp(c) => dhcp::run(c),
        Command::Validate(a) => validate::run(a),
        Command::Run(a) => run::run(a),
        Command::Remote(c) => remote::run(c),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vmpodctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
