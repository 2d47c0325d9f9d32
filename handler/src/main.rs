//! vmpod-handler: the node daemon and controller. `controller` turns VMIs into launcher
//! pods, `node` reports launcher status into VMI status and serves kubelet the devices
//! launcher pods use (`deviceplugin`), `local` runs VMIs from a directory on this machine
//! with no cluster, `render-pod` prints the controller's launcher Pod for a VMI file.

mod cluster;
mod deviceplugin;
mod local;

// The integration tests' support and kubelet-shaped runner, for the test that runs the Pod
// the controller creates (cluster::tests).
#[cfg(test)]
#[path = "../../tests/support/mod.rs"]
mod support;
#[cfg(test)]
#[path = "../../tests/cluster/mod.rs"]
mod test_runner;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "vmpod-handler",
    version,
    about = "vmpod node daemon and controller"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Watch VirtualMachineInstances and create a launcher pod for each.
    Controller(cluster::ControllerArgs),
    /// Report the status of launchers on this node into their VMIs; serve kubelet
    /// vmpod.io/kvm, vmpod.io/tun and vmpod.io/vhost-net.
    Node(cluster::NodeArgs),
    /// No cluster: keep the VMIs in a directory running on this machine.
    Local(local::LocalArgs),
    /// Print the launcher Pod (and Secret) the controller would create for a VMI file, as
    /// YAML documents.
    RenderPod(cluster::render::RenderArgs),
}

fn main() -> ExitCode {
    vmpod::init_logging("info");
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Controller(args) => block_on(cluster::run_controller(args)),
        Command::Node(args) => block_on(cluster::run_node(args)),
        Command::Local(args) => local::run(args),
        Command::RenderPod(args) => cluster::render::render(&args).map(|yaml| {
            print!("{yaml}");
            ExitCode::SUCCESS
        }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vmpod-handler: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn block_on(
    fut: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(fut)?;
    Ok(ExitCode::SUCCESS)
}
