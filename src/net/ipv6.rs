//! IPv6 for the VM, the pod side: the link-local address the bridge speaks from (router
//! advertisements and DHCPv6 come from it, and the RA makes it the VM's default
//! router). Derived from the bridge's MAC (EUI-64), so it is the same on every run.
//! Only a pod with an IPv6 address gets one; an IPv4-only pod's bridge stays without
//! IPv6 (see the module docs of [`super`]).

use super::antispoof::eui64_link_local;
use super::facts::{InterfaceFacts, IpCidr, v6};
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

/// The IPv6 address the VM takes over with the bridge binding: the pod's first global
/// one, which DHCPv6 leases it ([`crate::dhcp::v6::DhcpV6Config::from_facts`]) and the
/// anti-spoofing rules let through from the tap. Empty in an IPv4-only pod.
pub fn vm_addresses(facts: &InterfaceFacts) -> Vec<Ipv6Addr> {
    facts.ipv6().find_map(|a| v6(a.addr)).into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::plan::tests::{anti_spoof_op, dual_stack, ops_of};

    /// A dual-stack pod: the bridge gets its link-local address before it goes up, and
    /// the tap's rules let the VM's leased address (the first) through, not the others.
    #[test]
    fn the_bridge_speaks_ipv6_and_the_vm_may_use_its_lease() {
        // A second global address, which the VM does not lease.
        let mut f = dual_stack();
        f.addresses
            .push("fd00:10:244::6/64".parse::<IpCidr>().unwrap());
        let ops = ops_of(&f);
        let ll = bridge_link_local(&f);
        assert!(ll.is_unicast_link_local());
        let add_ll = ops
            .iter()
            .position(|o| matches!(o, NetOp::AddAddress { link, address } if link == "k6t-eth0" && address.addr == IpAddr::V6(ll)))
            .expect("link-local address on the bridge");
        let up = ops
            .iter()
            .position(|o| matches!(o, NetOp::SetUp { link } if link == "k6t-eth0"))
            .unwrap();
        assert!(add_ll < up);
        let anti = anti_spoof_op(&ops);
        assert_eq!(anti.ipv6, ["fd00:10:244::5".parse::<Ipv6Addr>().unwrap()]);
    }

    #[test]
    fn an_ipv4_only_pod_gets_no_bridge_link_local() {
        let mut f = dual_stack();
        f.addresses.retain(|a| a.addr.is_ipv4());
        assert!(bridge_link_local_op(&f, "k6t-eth0").is_none());
        assert!(vm_addresses(&f).is_empty());
    }
}
