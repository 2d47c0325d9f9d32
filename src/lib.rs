//! vmpod: run virtual machines as Kubernetes pods.
//!
//! The library behind the three binaries: `vmpod-launcher` (the pod entrypoint),
//! `vmpod-handler` (node daemon and controller) and `vmpodctl` (the CLI). Data flows one
//! way: VMI spec -> validate ([`api`]) -> discover, plan, apply the pod network ([`net`])
//! -> serve DHCP to the VM ([`dhcp`]) -> domain XML and libvirt ([`domain`]) -> status
//! over the control socket ([`control`]). [`sandbox`] plays kubelet + CNI for local mode.

pub mod api;
pub mod control;
pub mod dhcp;
pub mod domain;
pub mod net;
pub mod sandbox;
