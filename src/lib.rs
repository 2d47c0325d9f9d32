//! vmpod: run virtual machines as Kubernetes pods.
//!
//! The library behind the three binaries: `vmpod-launcher` (the pod entrypoint),
//! `vmpod-handler` (node daemon and controller) and `vmpodctl` (the CLI). Data flows one
//! way: VMI spec -> validate ([`api`]) -> discover, plan, apply the pod network ([`net`])
//! -> serve DHCP to the VM ([`dhcp`]) -> domain XML and libvirt ([`domain`]) -> status
//! over the control socket ([`control`]). [`sandbox`] plays kubelet + CNI for local mode;
//! [`statedir`] names every path under a launcher's state dir.

#[cfg(feature = "runtime")]
pub mod api;
#[cfg(feature = "runtime")]
pub mod control;
pub mod dhcp;
#[cfg(feature = "runtime")]
pub mod domain;
pub mod file;
pub mod net;
#[cfg(feature = "runtime")]
pub mod sandbox;
pub mod statedir;

/// Set up tracing for a vmpod binary: logs go to standard error, filtered by `VMPOD_LOG`
/// (default `default_level`), coloured only when standard error is a terminal so that log
/// files and test captures stay plain text.
pub fn init_logging(default_level: &str) {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VMPOD_LOG")
                .unwrap_or_else(|_| default_level.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
