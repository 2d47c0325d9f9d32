//! [`DhcpV6Config`]: what the DHCPv6 server and the router advertisements tell the VM,
//! built once from the cached [`InterfaceFacts`] by a pure constructor.

use crate::dhcp::config::{DEFAULT_LEASE_SECS, DroppedSearchDomain, valid_search_domains};
use crate::net::{CachedInterface, InterfaceFacts, MacAddr};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv6Addr};

/// What the VM learns over IPv6, for one VM interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DhcpV6Config {
    /// The pod interface these facts came from (e.g. `eth0`), for logs and stats.
    pub interface: String,
    /// The bridge the server binds to (e.g. `k6t-eth0`).
    pub bridge: String,
    /// The bridge's MAC: the server's DUID-LL, so the DUID is the same on every run of
    /// the same pod (the bridge MAC derives from the pod's MAC).
    pub server_mac: MacAddr,
    /// The only client answered.
    pub client_mac: MacAddr,
    /// The address in IA_NA: the pod's IPv6 address (bridge binding) or the VM's
    /// private one (masquerade).
    pub address: Ipv6Addr,
    /// The on-link prefix length of `address` (router advertisements carry it;
    /// Confirm checks against it).
    pub prefix: u8,
    /// Option 23.
    pub dns: Vec<Ipv6Addr>,
    /// Option 24: valid search domains, lower case, in resolv.conf order.
    pub search: Vec<String>,
    pub mtu: u32,
    /// Preferred and valid lifetime of the address (T1 is half, T2 four fifths).
    pub lease_secs: u32,
    /// Search domains left out, reported once at startup.
    pub dropped_search: Vec<DroppedSearchDomain>,
}

/// Facts that cannot become a DHCPv6 configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DhcpV6ConfigError {
    #[error("interface {interface}: no global IPv6 address to serve by DHCPv6")]
    NoIpv6 { interface: String },
}

impl DhcpV6Config {
    /// The configuration for the VM behind `bridge` (whose MAC is `server_mac`), from
    /// the pod's facts: the first global IPv6 address, its prefix, the IPv6 nameservers.
    pub fn from_facts(
        facts: &InterfaceFacts,
        bridge: &str,
        server_mac: MacAddr,
        client_mac: MacAddr,
    ) -> Result<Self, DhcpV6ConfigError> {
        let Some(cidr) = facts.ipv6().next() else {
            return Err(DhcpV6ConfigError::NoIpv6 {
                interface: facts.interface.clone(),
            });
        };
        let IpAddr::V6(address) = cidr.addr else {
            unreachable!("InterfaceFacts::ipv6 yields IPv6 addresses only")
        };
        let (search, dropped_search) = valid_search_domains(&facts.search);
        Ok(DhcpV6Config {
            interface: facts.interface.clone(),
            bridge: bridge.to_owned(),
            server_mac,
            client_mac,
            address,
            prefix: cidr.prefix,
            dns: facts.dns6(),
            search,
            mtu: facts.mtu,
            lease_secs: DEFAULT_LEASE_SECS,
            dropped_search,
        })
    }

    /// The configuration for an interface the net phase rewired, or `None` when the pod
    /// has no IPv6 address (an IPv4-only pod runs no DHCPv6 server).
    pub fn for_cached(entry: &CachedInterface) -> Option<Self> {
        let bridge = crate::net::bridge_name(&entry.facts.interface);
        let server_mac = crate::net::plan::derived_mac(entry.facts.mac, "bridge");
        let facts = entry.planned_facts();
        let facts = match entry.binding {
            crate::net::Binding::Bridge => facts.into_owned(),
            crate::net::Binding::Masquerade => entry.options.masquerade.vm_facts(&facts),
        };
        Self::from_facts(&facts, &bridge, server_mac, entry.vm_mac()).ok()
    }

    /// The server's DUID: DUID-LL (type 3), hardware type Ethernet (1), the bridge MAC.
    pub fn server_duid(&self) -> Vec<u8> {
        duid_ll(self.server_mac)
    }

    /// T1: when the client renews (half the lifetime).
    pub fn t1(&self) -> u32 {
        self.lease_secs / 2
    }

    /// T2: when the client rebinds (four fifths of the lifetime).
    pub fn t2(&self) -> u32 {
        self.lease_secs / 5 * 4
    }
}

/// A DUID-LL (RFC 8415 11.4) for an Ethernet MAC.
pub fn duid_ll(mac: MacAddr) -> Vec<u8> {
    let mut d = vec![0, 3, 0, 1];
    d.extend_from_slice(&mac.0);
    d
}

/// The link-layer address a DUID carries: DUID-LLT (type 1) and DUID-LL (type 3) with
/// hardware type Ethernet. `None` for the other types (enterprise, UUID).
pub fn duid_mac(duid: &[u8]) -> Option<MacAddr> {
    let mac_at = match duid.get(..4)? {
        [0, 1, 0, 1] => 8,
        [0, 3, 0, 1] => 4,
        _ => return None,
    };
    let bytes: [u8; 6] = duid.get(mac_at..)?.try_into().ok()?;
    Some(MacAddr(bytes))
}
