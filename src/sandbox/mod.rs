//! Local pod sandbox: what kubelet + a bridge CNI do for a pod, for local mode and the
//! privileged tests.
//!
//! Owns: the node side (a bridge holding the gateway addresses, either in a named network
//! namespace of its own or in the host), one network namespace per pod with a veth whose
//! pod end is `eth0` (address, MAC, MTU, routes, lo up), and the pod's resolv.conf and
//! hostname files. Everything is done through rtnetlink, never by running `ip`. Must not
//! touch a pod's network after creating it: from then on the launcher owns it.
//!
//! ```no_run
//! use vmpod::net::IpCidr;
//! use vmpod::sandbox::{NodeSpec, PodSandbox, PodSpec};
//! # fn main() -> Result<(), vmpod::sandbox::SandboxError> {
//! let gw = IpCidr::new("10.77.0.1".parse().unwrap(), 24);
//! let node = NodeSpec::isolated(vec![gw]); // a fresh node netns with bridge vpbr…
//! let mut pod = PodSpec::new("web", IpCidr::new("10.77.0.5".parse().unwrap(), 24),
//!                            "10.77.0.1".parse().unwrap());
//! pod.mtu = 1450;
//! pod.dns = vec!["10.96.0.10".parse().unwrap()];
//! let sandbox = PodSandbox::create(&node, &pod)?; // owns its node
//! let netns = sandbox.netns_path();            // /run/netns/vmpod-pod-web-…
//! let resolv = sandbox.resolv_conf_path();     // what discovery should read
//! # Ok(()) }
//! ```
//!
//! Several pods on one node: `let node = Node::create(&spec)?;` then
//! `PodSandbox::create_on(&node, &pod)` for each. Shapes covered:
//! - bridge CNI: pod address inside a bridge subnet, default route via the bridge address;
//! - Calico: a /32 pod address with gateway [`CALICO_GATEWAY`] (169.254.1.1): the pod gets
//!   an on-link route to it, the node bridge holds 169.254.1.1/32 (so it answers ARP) and
//!   a /32 route back to the pod;
//! - dual stack: an IPv6 address (no DAD) and an IPv6 default route.
//!
//! [`PodSandbox::command`] runs a program in the pod's network namespace;
//! [`PodSandbox::pod_command`] runs it as a container would see the pod: also with the
//! pod's resolv.conf on /etc/resolv.conf and its hostname, in private mount and UTS
//! namespaces (how the local runtime starts `vmpod-launcher`).
//!
//! [`ipam`] hands out pod addresses from the node subnet for local mode.
//!
//! Cleanup is on drop (also during a panic): the pod's node-side veth and /32 routes, the
//! pod namespace, its private state directory; a [`Node`] deletes its namespace, or in
//! host mode the bridge if it created it. Gateway addresses added to a host bridge for
//! Calico-shaped pods stay, since other pods share them.

pub mod ipam;
mod nl;
mod pod;
pub mod runtime;
mod spec;

pub use pod::{Node, POD_INTERFACE, PodSandbox, command_in, remove_host_pod};
pub use runtime::{
    LauncherExit, LocalConfig, LocalPod, LocalRuntime, PodRecord, RuntimeError, StopLevel,
    load_manifest, supervise,
};
pub use spec::{
    CALICO_GATEWAY, NodeAdditions, NodeSide, NodeSpec, PodSpec, node_additions, unique_id,
    unique_link_name,
};

/// Why building or tearing down a sandbox failed, naming the object involved.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The spec is inconsistent; nothing was created.
    #[error("pod {pod}: invalid spec: {why}")]
    Invalid { pod: String, why: String },
    /// A netlink request failed.
    #[error("{what} {object}: {source}")]
    Netlink {
        what: &'static str,
        object: String,
        #[source]
        source: rtnetlink::Error,
    },
    /// A file, namespace or thread operation failed.
    #[error(transparent)]
    Io(#[from] crate::file::PathIoError),
}
