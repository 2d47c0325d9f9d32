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

/// libvirt's global initialisation (`virInitialize`, run by the first call) calls
/// `curl_global_init` for its ESX and Hyper-V drivers, which talk HTTPS to remote
/// hypervisors; curl initialises libssh2 and through it OpenSSL: ~1.5 MiB of resident
/// library text and heap in every pod, for a process that only talks to the pod's
/// libvirtd over a Unix socket. A definition in the executable comes first in the dynamic
/// linker's symbol lookup (`build.rs` exports it), so libvirt's call lands here and does
/// nothing (`CURLE_OK`): `vmpod-virt` never opens an `esx://`, `vpx://` or `hyperv://`
/// connection, curl's only users in libvirt. Under `VMPOD_DAEMONS_UNTUNED=1` (the
/// density benchmark's before) it calls libcurl's own.
#[unsafe(no_mangle)]
pub extern "C" fn curl_global_init(flags: std::ffi::c_long) -> std::ffi::c_int {
    if vmpod::domain::daemons::untuned() {
        // SAFETY: looks up the next definition of this very symbol (libcurl's) by name.
        let real = unsafe { libc::dlsym(libc::RTLD_NEXT, c"curl_global_init".as_ptr()) };
        if !real.is_null() {
            // SAFETY: libcurl's curl_global_init has this signature.
            let real: extern "C" fn(std::ffi::c_long) -> std::ffi::c_int =
                unsafe { std::mem::transmute(real) };
            return real(flags);
        }
    }
    0
}

fn main() {
    vmpod::init_logging("info");
    let cli = Cli::parse();
    let stdin = std::io::stdin().lock();
    vmpod_virt::serve::serve(&cli.socket, stdin, std::io::stdout());
}
