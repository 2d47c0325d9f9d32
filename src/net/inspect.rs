//! A read-only view of a pod's network for people and the control API: links,
//! addresses, routes, bridges with their ports, taps, the cached facts, and for the
//! masquerade binding the VM's address and the NAT rules read back from the kernel, and
//! for a dual-stack pod the VM's IPv6 side.
//! Changes nothing.

use super::antispoof::AntiSpoofReport;
use super::cache::{self, CachedInterface};
use super::discover::with_handle;
use super::error::NetError;
use super::facts::{Binding, IpCidr};
use super::masquerade;
use super::snapshot::{LinkState, NetSnapshot, RouteState, TunState, snapshot};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::Path;

/// One link with its addresses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkView {
    #[serde(flatten)]
    pub link: LinkState,
    /// The bridge it is a port of, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_name: Option<String>,
    pub addresses: Vec<IpCidr>,
}

/// A bridge and its ports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeView {
    pub name: String,
    pub ports: Vec<String>,
}

/// A tap (or tun) and how it was made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapView {
    pub name: String,
    #[serde(flatten)]
    pub tun: TunState,
}

/// A route with its outgoing link by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteView {
    #[serde(flatten)]
    pub route: RouteState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
}

/// A masquerade-bound pod interface: the VM's address and the NAT rules the kernel
/// holds for it now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MasqueradeView {
    pub interface: String,
    pub vm_address: IpCidr,
    pub gateway: std::net::Ipv4Addr,
    /// A dual-stack pod: the VM's private IPv6 address behind NAT66 (its lease and
    /// router are in [`Ipv6View`]), its gateway on the bridge and the pod's IPv6 address
    /// it stands behind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<masquerade::NatAddresses>,
    /// Why a pod with IPv6 gives the VM none ([`CachedInterface::ipv6_off`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_off: Option<String>,
    pub vm_mac: super::facts::MacAddr,
    /// The forwarded ports (`tcp/80`), or `every port`.
    pub forwarded: Vec<String>,
    pub table: String,
    /// The table's rules, read back from the kernel (empty: no table).
    pub rules: Vec<String>,
}

/// A dual-stack pod interface's IPv6 side: the address DHCPv6 leases the VM (the pod's
/// with the bridge binding, the private one with masquerade) and the router the
/// advertisements name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ipv6View {
    pub interface: String,
    pub vm_address: IpCidr,
    pub vm_mac: super::facts::MacAddr,
    /// The bridge's link-local address: the DHCPv6 server's and the VM's default router.
    pub router: std::net::Ipv6Addr,
    /// The DHCPv6 server's DUID (DUID-LL of the bridge MAC), hex bytes.
    pub server_duid: String,
}

/// Everything `vmpodctl net inspect` shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inspection {
    pub netns: String,
    pub links: Vec<LinkView>,
    pub routes: Vec<RouteView>,
    pub bridges: Vec<BridgeView>,
    pub taps: Vec<TapView>,
    pub cached: Vec<CachedInterface>,
    /// The anti-spoofing tables in the namespace and their drop counters.
    #[serde(default)]
    pub anti_spoofing: Vec<AntiSpoofReport>,
    /// The masquerade bindings: VM address, forwarded ports, the NAT rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masquerade: Vec<MasqueradeView>,
    /// The IPv6 side of dual-stack pod interfaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipv6: Vec<Ipv6View>,
}

/// Arrange a snapshot and the cache for reading. Pure.
pub fn inspection(
    netns: String,
    snap: &NetSnapshot,
    cached: Vec<CachedInterface>,
    anti_spoofing: Vec<AntiSpoofReport>,
) -> Inspection {
    let name = |i: Option<u32>| i.and_then(|i| snap.link_name(i)).map(str::to_owned);
    let links = snap
        .links
        .iter()
        .map(|l| LinkView {
            link: l.clone(),
            master_name: name(l.master),
            addresses: snap.addresses_of(l.index).map(|a| a.address).collect(),
        })
        .collect();
    let bridges = snap
        .links
        .iter()
        .filter(|l| l.kind.as_deref() == Some("bridge"))
        .map(|b| BridgeView {
            name: b.name.clone(),
            ports: snap.ports_of(b.index).map(|p| p.name.clone()).collect(),
        })
        .collect();
    let taps = snap
        .links
        .iter()
        .filter_map(|l| {
            Some(TapView {
                name: l.name.clone(),
                tun: l.tun.clone()?,
            })
        })
        .collect();
    let routes = snap
        .routes
        .iter()
        .map(|r| RouteView {
            route: r.clone(),
            dev: name(r.oif),
        })
        .collect();
    let ipv6 = cached.iter().filter_map(ipv6_view).collect();
    Inspection {
        netns,
        links,
        routes,
        bridges,
        taps,
        cached,
        anti_spoofing,
        masquerade: Vec::new(),
        ipv6,
    }
}

/// What the launcher's DHCPv6 server and RA sender serve for `c` (either binding).
fn ipv6_view(c: &CachedInterface) -> Option<Ipv6View> {
    let config = crate::dhcp::v6::DhcpV6Config::for_cached(c)?;
    Some(Ipv6View {
        interface: c.facts.interface.clone(),
        vm_address: IpCidr::new(IpAddr::V6(config.address), config.prefix),
        vm_mac: config.client_mac,
        router: super::ipv6::bridge_link_local(&c.facts),
        server_duid: crate::dhcp::describe::hex(&config.server_duid()),
    })
}

fn masquerade_view(c: &CachedInterface) -> Result<Option<MasqueradeView>, NetError> {
    if c.binding != Binding::Masquerade {
        return Ok(None);
    }
    let m = &c.options.masquerade;
    let table = masquerade::table_name(&c.facts.interface);
    Ok(Some(MasqueradeView {
        interface: c.facts.interface.clone(),
        vm_address: IpCidr::new(IpAddr::V4(m.vm_address()), m.vm_network.prefix),
        gateway: m.gateway(),
        ipv6: m.ipv6(&c.planned_facts()),
        ipv6_off: c.ipv6_off.clone(),
        vm_mac: c.vm_mac(),
        forwarded: if m.ports.is_empty() {
            vec!["every port".to_owned()]
        } else {
            m.ports.iter().map(ToString::to_string).collect()
        },
        rules: masquerade::live_rules(&table)?,
        table,
    }))
}

/// Inspect `netns` (the current namespace when `None`) and the cache in `state_dir`.
pub fn inspect(netns: Option<&Path>, state_dir: &Path) -> Result<Inspection, NetError> {
    let cached = cache::load_all(state_dir)?;
    let (snap, masquerade) = with_handle(netns, |h| {
        let cached = &cached;
        async move {
            // nft runs as a child of this thread, in the pod's namespace.
            let views = cached
                .iter()
                .filter_map(|c| masquerade_view(c).transpose())
                .collect::<Result<Vec<_>, _>>()?;
            Ok::<_, NetError>((snapshot(&h).await?, views))
        }
    })?;
    let anti_spoofing =
        super::netns::run_in(netns, AntiSpoofReport::read_all).map_err(|source| {
            NetError::Netns {
                netns: super::discover::netns_label(netns),
                source,
            }
        })?;
    Ok(Inspection {
        masquerade,
        ..inspection(
            super::discover::netns_label(netns),
            &snap,
            cached,
            anti_spoofing,
        )
    })
}
