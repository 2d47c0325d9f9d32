//! IPv6 for the VM, the pod side: the link-local address the bridge speaks from (router
//! advertisements and DHCPv6 come from it, and the RA makes it the VM's default
//! router). Derived from the bridge's MAC (EUI-64), so it is the same on every run.
//! Only a pod with an IPv6 address gets one; an IPv4-only pod's bridge stays without
//! IPv6 (see the module docs of [`super`]).

use super::antispoof::eui64_link_local;
use super::facts::{InterfaceFacts, IpCidr};
use super::plan::{NetOp, derived_mac};
use std::net::{IpAddr, Ipv6Addr};

/// The bridge's link-local address for the pod interface these facts describe.
pub fn bridge_link_local(facts: &InterfaceFacts) -> Ipv6Addr {
    eui64_link_local(derived_mac(facts.mac, "bridge"))
}

/// The op that puts [`bridge_link_local`] on `bridge`, when the pod has IPv6.
pub fn bridge_link_local_op(facts: &InterfaceFacts, bridge: &str) -> Option<NetOp> {
    facts.ipv6().next()?;
    Some(NetOp::AddAddress {
        link: bridge.to_owned(),
        address: IpCidr::new(IpAddr::V6(bridge_link_local(facts)), 64),
    })
}
