//! Shared support for integration tests. Include with `mod support;`.
//!
//! Privileged tests (namespaces, libvirt, QEMU) call [`privileged`] first: without root
//! they skip loudly, but under `CI=true` a skip is a failure.
#![allow(dead_code)]

pub mod cargo_build;
pub mod guest;
pub mod http;
pub mod launcher;

/// True when the test may go on. Not root: prints why and returns false, or panics in CI.
pub fn privileged(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !ci,
        "{test}: needs root, and under CI=true a privileged test must not skip"
    );
    eprintln!("SKIPPED {test}: needs root (run as root, or under CI=true to make this fail)");
    false
}
