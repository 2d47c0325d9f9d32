//! `libvmpod_preload.so`: the launcher preloads it (`LD_PRELOAD`) into the pod's libvirtd
//! and `vmpod-virt`, the two processes that load libvirt. It does two things:
//!
//! - libvirt's global initialisation (`virInitialize`, run by its first call) calls
//!   `curl_global_init` for its ESX and Hyper-V drivers, which talk HTTPS to remote
//!   hypervisors; libcurl initialises libssh2 and through it OpenSSL: ~1.4 MiB of
//!   resident library text and heap in each of the two processes. In a pod neither ever
//!   opens an `esx://`, `vpx://` or `hyperv://` connection, libcurl's only users in
//!   libvirt; a preloaded definition comes first in the dynamic linker's symbol lookup,
//!   so libvirt's call lands here and does nothing.
//! - With [`TRIM_ENV`] set (the launcher sets it for libvirtd), a thread gives the heap's
//!   free pages back to the kernel every so many seconds (`malloc_trim`). libvirtd parses
//!   QEMU's capabilities (~80 KB of XML) when the domain is defined and keeps the
//!   result; the parse's garbage, ~1.4 MiB, lies under that in the heap, where glibc's
//!   `free` never returns it.

use std::ffi::{c_int, c_long};
use std::time::Duration;

/// libcurl's `curl_global_init`: does nothing and reports `CURLE_OK` (0).
#[unsafe(no_mangle)]
pub extern "C" fn curl_global_init(_flags: c_long) -> c_int {
    0
}

/// Environment: seconds between two `malloc_trim(0)` of the process (unset or 0: none).
pub const TRIM_ENV: &str = "VMPOD_MALLOC_TRIM_S";

/// Start the trimming thread when [`TRIM_ENV`] asks for it; run when the library is
/// loaded, before the program's `main`.
extern "C" fn start_trimmer() {
    let Some(every) = std::env::var(TRIM_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&s| s > 0)
    else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("vmpod-trim".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(every));
                // SAFETY: malloc_trim only gives free heap pages back; glibc locks the
                // arenas itself.
                unsafe {
                    libc::malloc_trim(0);
                }
            }
        });
}

#[used]
#[unsafe(link_section = ".init_array")]
static START_TRIMMER: extern "C" fn() = start_trimmer;
