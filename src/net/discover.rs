//! Discovery: read what the pod's CNI configured on one interface, plus the pod's DNS
//! settings and hostname, into [`InterfaceFacts`]. Reads only. The decoding from a
//! [`NetSnapshot`] and the resolv.conf parser are pure and tested without root.

use super::error::NetError;
use super::facts::{InterfaceFacts, Route};
use super::netns::block_on_in;
use super::snapshot::{NetSnapshot, snapshot};
use std::net::IpAddr;
use std::path::Path;

/// Where the pod's resolv.conf lives unless told otherwise.
pub const DEFAULT_RESOLV_CONF: &str = "/etc/resolv.conf";

/// Nameservers and search domains from a resolv.conf.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<IpAddr>,
    pub search: Vec<String>,
}

/// Parse resolv.conf text the way the glibc resolver does: every `nameserver` line
/// (a zone suffix like `%eth0` is dropped), and the last `search` or `domain` line wins.
pub fn parse_resolv_conf(text: &str) -> ResolvConf {
    let mut out = ResolvConf::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                let ip = words
                    .next()
                    .and_then(|w| w.split('%').next()?.parse::<IpAddr>().ok());
                out.nameservers.extend(ip);
            }
            Some("search" | "domain") => out.search = words.map(str::to_owned).collect(),
            _ => {}
        }
    }
    out
}

/// The facts of `interface` from a snapshot of its namespace. Kept: global and
/// unique-local addresses (IPv6 link-local is derived from the MAC, not configured), and
/// every main-table route through the interface except those the kernel derives from
/// the addresses themselves (they come back with the addresses).
pub fn facts_from_snapshot(
    snap: &NetSnapshot,
    interface: &str,
    netns_label: &str,
    dns: ResolvConf,
    hostname: String,
) -> Result<InterfaceFacts, NetError> {
    let link = snap
        .link(interface)
        .ok_or_else(|| NetError::InterfaceNotFound {
            interface: interface.to_owned(),
            netns: netns_label.to_owned(),
        })?;
    let addresses: Vec<_> = snap
        .addresses_of(link.index)
        .map(|a| a.address)
        .filter(|a| !is_ipv6_link_local(a.addr))
        .collect();
    super::facts::pod_ipv4(interface, &addresses)?;
    let routes = snap
        .routes
        .iter()
        .filter(|r| r.oif == Some(link.index) && r.protocol != "kernel")
        .filter(|r| !is_ipv6_link_local(r.destination.addr) && !r.destination.addr.is_multicast())
        .map(|r| Route {
            destination: r.destination,
            gateway: r.gateway,
            metric: r.metric,
        })
        .collect();
    let mac = link.mac.ok_or_else(|| NetError::InterfaceNotFound {
        interface: format!("{interface} (it has no Ethernet address)"),
        netns: netns_label.to_owned(),
    })?;
    Ok(InterfaceFacts {
        interface: interface.to_owned(),
        mac,
        mtu: link.mtu,
        addresses,
        routes,
        dns: dns.nameservers,
        search: dns.search,
        hostname,
    })
}

fn is_ipv6_link_local(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

/// A label for a namespace in messages: its path, or "current".
pub(crate) fn netns_label(netns: Option<&Path>) -> String {
    netns.map_or_else(|| "current".to_owned(), |p| p.display().to_string())
}

/// Read the DNS settings and hostname of the pod: `hostname` when given, else the
/// hostname of the UTS namespace we run in (the pod's, for a launcher inside it).
pub fn pod_identity(
    resolv_conf: &Path,
    hostname: Option<&str>,
) -> Result<(ResolvConf, String), NetError> {
    let text = std::fs::read_to_string(resolv_conf).map_err(|source| NetError::ResolvConf {
        path: resolv_conf.to_owned(),
        source,
    })?;
    let host = match hostname {
        Some(h) => h.to_owned(),
        None => nix::unistd::gethostname()
            .map_err(NetError::Hostname)?
            .to_string_lossy()
            .into_owned(),
    };
    Ok((parse_resolv_conf(&text), host))
}

/// Discover `interface` inside `netns` (the current namespace when `None`).
pub async fn discover_with(
    handle: &rtnetlink::Handle,
    netns: Option<&Path>,
    interface: &str,
    resolv_conf: &Path,
    hostname: Option<&str>,
) -> Result<InterfaceFacts, NetError> {
    let (dns, host) = pod_identity(resolv_conf, hostname)?;
    let snap = snapshot(handle).await?;
    facts_from_snapshot(&snap, interface, &netns_label(netns), dns, host)
}

/// Discover `interface` inside `netns` (the current namespace when `None`): its
/// addresses, MAC, MTU and routes by netlink, DNS from `resolv_conf`, and the hostname
/// (`hostname`, or the one of the UTS namespace we run in).
pub fn discover(
    netns: Option<&Path>,
    interface: &str,
    resolv_conf: &Path,
    hostname: Option<&str>,
) -> Result<InterfaceFacts, NetError> {
    with_handle(netns, |h| async move {
        discover_with(&h, netns, interface, resolv_conf, hostname).await
    })
}

/// Run `f` with a netlink handle opened inside `netns`, on a thread of its own.
pub fn with_handle<T, F, Fut>(netns: Option<&Path>, f: F) -> Result<T, NetError>
where
    T: Send,
    F: FnOnce(rtnetlink::Handle) -> Fut + Send,
    Fut: std::future::Future<Output = Result<T, NetError>>,
{
    let label = netns_label(netns);
    let io_err = |source| NetError::Netns {
        netns: label.clone(),
        source,
    };
    block_on_in(netns, || async move {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(io_err)?;
        let task = tokio::spawn(conn);
        let out = f(handle).await;
        task.abort();
        out
    })
    .map_err(|source| NetError::Netns {
        netns: netns_label(netns),
        source,
    })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::IpCidr;
    use crate::net::snapshot::{AddressState, LinkState, RouteState};

    fn route(dst: &str, gw: Option<&str>, oif: u32, proto: &str) -> RouteState {
        RouteState {
            destination: dst.parse::<IpCidr>().unwrap(),
            gateway: gw.map(|g| g.parse().unwrap()),
            oif: Some(oif),
            metric: None,
            protocol: proto.into(),
            scope: "global".into(),
        }
    }

    fn pod() -> NetSnapshot {
        let link = |index, name: &str| LinkState {
            index,
            name: name.into(),
            kind: Some("veth".into()),
            mac: Some("0a:58:0a:f4:00:05".parse().unwrap()),
            mtu: 1450,
            up: true,
            master: None,
            tun: None,
        };
        let addr = |index, a: &str| AddressState {
            index,
            address: a.parse::<IpCidr>().unwrap(),
            scope: "global".into(),
        };
        NetSnapshot {
            links: vec![link(1, "lo"), link(2, "eth0"), link(3, "net1")],
            addresses: vec![
                addr(1, "127.0.0.1/8"),
                addr(2, "10.244.0.5/24"),
                addr(2, "fd00:10:244::5/64"),
                addr(2, "fe80::858:aff:fef4:5/64"),
                addr(3, "192.168.7.2/24"),
            ],
            routes: vec![
                route("0.0.0.0/0", Some("10.244.0.1"), 2, "boot"),
                route("10.244.0.0/24", None, 2, "kernel"),
                route("10.96.0.0/12", Some("10.244.0.1"), 2, "static"),
                route("192.168.7.0/24", None, 3, "kernel"),
                route("0.0.0.0/1", Some("192.168.7.1"), 3, "static"),
                route("fe80::/64", None, 2, "kernel"),
                route("::/0", Some("fe80::1"), 2, "ra"),
            ],
        }
    }

    fn dns() -> ResolvConf {
        parse_resolv_conf(
            "nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local\n",
        )
    }

    #[test]
    fn facts_keep_configured_addresses_and_routes_of_the_interface_only() {
        let f = facts_from_snapshot(&pod(), "eth0", "test", dns(), "vm-a".into()).unwrap();
        assert_eq!(f.mac.to_string(), "0a:58:0a:f4:00:05");
        assert_eq!(f.mtu, 1450);
        assert_eq!(
            f.addresses,
            vec![
                "10.244.0.5/24".parse::<IpCidr>().unwrap(),
                "fd00:10:244::5/64".parse::<IpCidr>().unwrap()
            ]
        );
        let dsts: Vec<String> = f.routes.iter().map(|r| r.destination.to_string()).collect();
        assert_eq!(dsts, vec!["0.0.0.0/0", "10.96.0.0/12", "::/0"]);
        assert_eq!(f.gateway4().unwrap().to_string(), "10.244.0.1");
        assert_eq!(f.gateway6().unwrap().to_string(), "fe80::1");
        assert_eq!(f.dns, vec!["10.96.0.10".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            f.search,
            vec!["default.svc.cluster.local", "svc.cluster.local"]
        );
        assert_eq!(f.hostname, "vm-a");
    }

    #[test]
    fn missing_interface_and_missing_ipv4_are_named() {
        let e = facts_from_snapshot(&pod(), "eth9", "pod1", dns(), "h".into()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "pod interface eth9 not found in network namespace pod1"
        );
        let mut snap = pod();
        snap.addresses
            .retain(|a| a.address.addr.is_ipv6() || a.index != 2);
        let e = facts_from_snapshot(&snap, "eth0", "pod1", dns(), "h".into()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "pod interface eth0 has no IPv4 address (found: fd00:10:244::5/64)"
        );
    }

    #[test]
    fn resolv_conf_parsing() {
        let r = parse_resolv_conf(
            "# generated\nnameserver 10.96.0.10\nnameserver fe80::1%eth0 # zone\n\
             nameserver bogus\ndomain old.example\nsearch ns.svc.cluster.local cluster.local\n\
             options ndots:5\n",
        );
        assert_eq!(
            r.nameservers,
            vec![
                "10.96.0.10".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
        assert_eq!(r.search, vec!["ns.svc.cluster.local", "cluster.local"]);
        assert_eq!(parse_resolv_conf(""), ResolvConf::default());
    }
}
