//! What the kernel shows in a namespace right now: links, addresses and routes, read by
//! netlink dumps and decoded into plain data. Discovery and `vmpodctl net inspect` both
//! read through here. Reads only: nothing in this file changes the namespace.

use super::error::NetError;
use super::facts::{IpCidr, MacAddr};
use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoTun, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType, RouteVia,
};
use rtnetlink::packet_core::Nla;
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// One link as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkState {
    pub index: u32,
    pub name: String,
    /// `bridge`, `tun`, `veth`, `dummy`...; `None` for a plain device (e.g. `lo`).
    pub kind: Option<String>,
    pub mac: Option<MacAddr>,
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// The bridge this link is a port of.
    pub master: Option<u32>,
    /// For a tun/tap device: how it was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tun: Option<TunState>,
}

/// The tun/tap attributes the kernel reports (`IFLA_TUN_*`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TunState {
    /// A tap (Ethernet frames), not a tun.
    pub tap: bool,
    pub owner: Option<u32>,
    pub group: Option<u32>,
    pub vnet_hdr: bool,
    pub persist: bool,
    pub multi_queue: bool,
}

/// One address as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddressState {
    /// The link it sits on.
    pub index: u32,
    pub address: IpCidr,
    /// `global`, `link`, `host`...
    pub scope: String,
}

/// One route of the main table as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteState {
    pub destination: IpCidr,
    pub gateway: Option<IpAddr>,
    /// The outgoing link.
    pub oif: Option<u32>,
    pub metric: Option<u32>,
    /// `kernel` for routes the kernel derives from addresses, `static`, `boot`, `ra`...
    pub protocol: String,
    pub scope: String,
}

/// Everything in the namespace at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetSnapshot {
    pub links: Vec<LinkState>,
    pub addresses: Vec<AddressState>,
    pub routes: Vec<RouteState>,
}

impl NetSnapshot {
    pub fn link(&self, name: &str) -> Option<&LinkState> {
        self.links.iter().find(|l| l.name == name)
    }

    pub fn link_name(&self, index: u32) -> Option<&str> {
        self.links
            .iter()
            .find(|l| l.index == index)
            .map(|l| l.name.as_str())
    }

    pub fn addresses_of(&self, index: u32) -> impl Iterator<Item = &AddressState> {
        self.addresses.iter().filter(move |a| a.index == index)
    }

    /// The ports of a bridge.
    pub fn ports_of(&self, bridge: u32) -> impl Iterator<Item = &LinkState> {
        self.links.iter().filter(move |l| l.master == Some(bridge))
    }
}

/// Dump links, addresses and main-table routes (both families).
pub async fn snapshot(handle: &Handle) -> Result<NetSnapshot, NetError> {
    let links = handle
        .link()
        .get()
        .execute()
        .map_ok(|m| decode_link(&m))
        .try_collect()
        .await
        .map_err(|e| NetError::netlink("dump links", e))?;
    let addresses = handle
        .address()
        .get()
        .execute()
        .try_filter_map(|m| futures::future::ok(decode_address(&m)))
        .try_collect()
        .await
        .map_err(|e| NetError::netlink("dump addresses", e))?;
    let mut routes = Vec::new();
    for version in [IpVersion::V4, IpVersion::V6] {
        let filter = match version {
            IpVersion::V4 => RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            IpVersion::V6 => RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        };
        let mut got: Vec<RouteState> = handle
            .route()
            .get(filter)
            .execute()
            .try_filter_map(|m| futures::future::ok(decode_route(&m)))
            .try_collect()
            .await
            .map_err(|e| NetError::netlink(format!("dump {version:?} routes"), e))?;
        routes.append(&mut got);
    }
    Ok(NetSnapshot {
        links,
        addresses,
        routes,
    })
}

fn decode_link(m: &LinkMessage) -> LinkState {
    let mut l = LinkState {
        index: m.header.index,
        name: String::new(),
        kind: None,
        mac: None,
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        master: None,
        tun: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name.clone_from(n),
            LinkAttribute::Mtu(v) => l.mtu = *v,
            LinkAttribute::Controller(i) => l.master = Some(*i),
            LinkAttribute::Address(b) => {
                l.mac = <[u8; 6]>::try_from(b.as_slice()).ok().map(MacAddr);
            }
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => l.kind = Some(kind_name(k)),
                        LinkInfo::Data(InfoData::Tun(nlas)) => l.tun = Some(decode_tun(nlas)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    l
}

/// `IFLA_TUN_*` from linux/if_link.h: OWNER=1, GROUP=2, TYPE=3, PI=4, VNET_HDR=5,
/// PERSIST=6, MULTI_QUEUE=7. Owner/group are u32 (-1: none), the rest u8.
fn decode_tun(nlas: &[InfoTun]) -> TunState {
    let mut t = TunState::default();
    for nla in nlas.iter().filter_map(|n| match n {
        InfoTun::Other(nla) => Some(nla),
        _ => None,
    }) {
        let mut v = vec![0u8; nla.value_len()];
        nla.emit_value(&mut v);
        let id = <[u8; 4]>::try_from(v.as_slice())
            .ok()
            .map(u32::from_ne_bytes)
            .filter(|&id| id != u32::MAX);
        let flag = v.first().is_some_and(|b| *b != 0);
        match nla.kind() {
            1 => t.owner = id,
            2 => t.group = id,
            3 => t.tap = v.first() == Some(&2),
            5 => t.vnet_hdr = flag,
            6 => t.persist = flag,
            7 => t.multi_queue = flag,
            _ => {}
        }
    }
    t
}

fn kind_name(k: &InfoKind) -> String {
    match k {
        InfoKind::Bridge => "bridge".into(),
        InfoKind::Tun => "tun".into(),
        InfoKind::Veth => "veth".into(),
        InfoKind::Dummy => "dummy".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn decode_address(m: &AddressMessage) -> Option<AddressState> {
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on
    // point-to-point links, so prefer LOCAL when both are present.
    let local = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let addr = local.or_else(|| {
        m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })?;
    Some(AddressState {
        index: m.header.index,
        address: IpCidr::new(addr, m.header.prefix_len),
        scope: format!("{:?}", m.header.scope).to_lowercase(),
    })
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn decode_route(m: &RouteMessage) -> Option<RouteState> {
    let table = m
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table));
    if table != u32::from(netlink_packet_route::route::RouteHeader::RT_TABLE_MAIN)
        || m.header.kind != RouteType::Unicast
    {
        return None;
    }
    let unspecified = match m.header.address_family {
        netlink_packet_route::AddressFamily::Inet6 => IpAddr::from([0u16; 8]),
        _ => IpAddr::from([0u8; 4]),
    };
    let mut r = RouteState {
        destination: IpCidr::new(unspecified, m.header.destination_prefix_length),
        gateway: None,
        oif: None,
        metric: None,
        protocol: protocol_name(m.header.protocol),
        scope: scope_name(m.header.scope),
    };
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => {
                r.destination.addr = route_ip(d)?;
            }
            RouteAttribute::Gateway(g) => r.gateway = route_ip(g),
            RouteAttribute::Via(RouteVia::Inet(v4)) => r.gateway = Some(IpAddr::V4(*v4)),
            RouteAttribute::Via(RouteVia::Inet6(v6)) => r.gateway = Some(IpAddr::V6(*v6)),
            RouteAttribute::Oif(i) => r.oif = Some(*i),
            RouteAttribute::Priority(p) => r.metric = Some(*p),
            _ => {}
        }
    }
    Some(r)
}

fn protocol_name(p: RouteProtocol) -> String {
    match p {
        RouteProtocol::Kernel => "kernel".into(),
        RouteProtocol::Boot => "boot".into(),
        RouteProtocol::Static => "static".into(),
        RouteProtocol::Ra => "ra".into(),
        RouteProtocol::Dhcp => "dhcp".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn scope_name(s: RouteScope) -> String {
    match s {
        RouteScope::Universe => "global".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}
