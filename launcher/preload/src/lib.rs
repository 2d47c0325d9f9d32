//! `libvmpod_preload.so`: the launcher preloads it (`LD_PRELOAD`) into the pod's libvirtd
//! and `vmpod-virt`, the two processes that load libvirt.
//!
//! libvirt's global initialisation (`virInitialize`, run by its first call) calls
//! `curl_global_init` for its ESX and Hyper-V drivers, which talk HTTPS to remote
//! hypervisors; libcurl initialises libssh2 and through it OpenSSL: ~1.4 MiB of resident
//! library text and heap in each of the two processes. In a pod neither ever opens an
//! `esx://`, `vpx://` or `hyperv://` connection, libcurl's only users in libvirt; a
//! preloaded definition comes first in the dynamic linker's symbol lookup, so libvirt's
//! call lands here and does nothing. Nothing else is defined here.

use std::ffi::{c_int, c_long};

/// libcurl's `curl_global_init`: does nothing and reports `CURLE_OK` (0).
#[unsafe(no_mangle)]
pub extern "C" fn curl_global_init(_flags: c_long) -> c_int {
    0
}
