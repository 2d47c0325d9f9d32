//! vmpod-virt: the launcher's libvirt client, a child of `vmpod-launcher run`. It holds
//! the pod's one libvirt connection so the launcher itself never loads libvirt; see
//! `vmpod::domain::agent` for the JSON-lines protocol on its stdin and stdout, and
//! `vmpod_virt::serve` for its side of it.

use clap::Parser;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "vmpod-virt",
    version,
    about = "The launcher's libvirt client: requests as JSON lines on stdin, replies and \
             domain events as JSON lines on stdout (started by vmpod-launcher)"
)]
struct Cli {
    /// The pod libvirtd's socket.
    #[arg(long)]
    socket: PathBuf,
}

fn main() {
    vmpod::init_logging("info");
    let cli = Cli::parse();
    let stdin = std::io::stdin().lock();
    vmpod_virt::serve::serve(&cli.socket, stdin, std::io::stdout());
}
