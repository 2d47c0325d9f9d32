//! Shared support for integration tests. Include with `mod support;`.
//!
//! Privileged tests (namespaces, libvirt, QEMU) call [`privileged`] first: without root
//! they skip loudly, but under CI (see [`ci`]) a skip is a failure.
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
    assert!(
        !ci(),
        "{test}: needs root, and under CI=true a privileged test must not skip"
    );
    eprintln!("SKIPPED {test}: needs root (run as root, or under CI=true to make this fail)");
    false
}

/// True under CI: `CI` set to anything but empty, `false` or `0` (CI systems set `true`,
/// `1`, `yes` or their own name).
pub fn ci() -> bool {
    is_ci_value(std::env::var("CI").ok().as_deref())
}

/// [`ci`] for a given value of `CI`.
pub fn is_ci_value(v: Option<&str>) -> bool {
    v.map(str::trim)
        .is_some_and(|v| !(v.is_empty() || v == "0" || v.eq_ignore_ascii_case("false")))
}
