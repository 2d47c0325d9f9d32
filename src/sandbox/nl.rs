//! Thin rtnetlink calls used by the sandbox. Each runs on the caller's netlink handle, so
//! it acts in whatever namespace the handle's socket was opened in.

use super::SandboxError;
use crate::net::{IpCidr, Route};
use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressFlags};
use netlink_packet_route::route::RouteScope;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::net::IpAddr;
use std::os::fd::RawFd;

type Result<T> = std::result::Result<T, SandboxError>;

fn nl_err(
    what: &'static str,
    object: impl Into<String>,
) -> impl FnOnce(rtnetlink::Error) -> SandboxError {
    let object = object.into();
    move |source| SandboxError::Netlink {
        what,
        object,
        source,
    }
}

/// The errno carried by a netlink error reply, if any.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

/// Open a route-netlink socket in the current thread's namespace.
pub(crate) fn connect() -> std::io::Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(conn);
    Ok(handle)
}

/// The index of link `name`, or `None` when there is no such link.
pub(crate) async fn link_index(h: &Handle, name: &str) -> Result<Option<u32>> {
    match h.link().get().match_name(name).execute().try_next().await {
        Ok(m) => Ok(m.map(|m| m.header.index)),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(nl_err("look up link", name)(e)),
    }
}

async fn require_index(h: &Handle, name: &str) -> Result<u32> {
    link_index(h, name)
        .await?
        .ok_or_else(|| SandboxError::Netlink {
            what: "find link",
            object: name.into(),
            source: rtnetlink::Error::RequestFailed,
        })
}

/// Create bridge `name` and bring it up; adopt it when it already exists.
/// Returns the index and whether it was created here.
pub(crate) async fn ensure_bridge(h: &Handle, name: &str) -> Result<(u32, bool)> {
    if let Some(i) = link_index(h, name).await? {
        return Ok((i, false));
    }
    h.link()
        .add(LinkBridge::new(name).up().build())
        .execute()
        .await
        .map_err(nl_err("create bridge", name))?;
    Ok((require_index(h, name).await?, true))
}

/// Bring link `name` up.
pub(crate) async fn set_up(h: &Handle, name: &str) -> Result<()> {
    let i = require_index(h, name).await?;
    h.link()
        .set(LinkUnspec::new_with_index(i).up().build())
        .execute()
        .await
        .map_err(nl_err("bring up", name))
}

/// Add `cidr` to link `index` (named `link` in errors), without DAD for IPv6.
/// An address that is already there is fine when `exists_ok`.
pub(crate) async fn add_address(
    h: &Handle,
    index: u32,
    link: &str,
    cidr: IpCidr,
    exists_ok: bool,
) -> Result<()> {
    let mut req = h.address().add(index, cidr.addr, cidr.prefix);
    if cidr.addr.is_ipv6() {
        req.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    match req.execute().await {
        Err(e) if exists_ok && errno(&e) == Some(libc::EEXIST) => Ok(()),
        r => r.map_err(nl_err("add address", format!("{cidr} on {link}"))),
    }
}

/// The netlink message for `route` through link `index`: scope link without a gateway.
fn route_message(
    route: &Route,
    index: u32,
) -> std::result::Result<netlink_packet_route::route::RouteMessage, String> {
    let d = route.destination;
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(d.network(), d.prefix)
        .map_err(|e| e.to_string())?
        .output_interface(index);
    match route.gateway {
        Some(gw) => b = b.gateway(gw).map_err(|e| e.to_string())?,
        None => b = b.scope(RouteScope::Link),
    }
    if let Some(m) = route.metric {
        b = b.priority(m);
    }
    Ok(b.build())
}

fn describe(route: &Route, link: &str) -> String {
    match route.gateway {
        Some(gw) => format!("{} via {gw} dev {link}", route.destination),
        None => format!("{} dev {link}", route.destination),
    }
}

/// Add `route` through link `index` (named `link` in errors).
pub(crate) async fn add_route(h: &Handle, index: u32, link: &str, route: &Route) -> Result<()> {
    let msg = route_message(route, index).map_err(|why| SandboxError::Netlink {
        what: "build route",
        object: format!("{} ({why})", describe(route, link)),
        source: rtnetlink::Error::RequestFailed,
    })?;
    h.route()
        .add(msg)
        .execute()
        .await
        .map_err(nl_err("add route", describe(route, link)))
}

/// Delete `route` through link `index`; a route that is gone already is fine.
pub(crate) async fn del_route(h: &Handle, index: u32, link: &str, route: &Route) -> Result<()> {
    let Ok(msg) = route_message(route, index) else {
        return Ok(());
    };
    match h.route().del(msg).execute().await {
        Err(e) if matches!(errno(&e), Some(libc::ESRCH | libc::ENODEV)) => Ok(()),
        r => r.map_err(nl_err("delete route", describe(route, link))),
    }
}

/// Create veth `name` (MTU `mtu`, up) whose peer `peer` goes straight into the namespace
/// open at `peer_netns`, enslaved to bridge `bridge`.
pub(crate) async fn add_veth_to(
    h: &Handle,
    name: &str,
    peer: &str,
    mtu: u32,
    bridge: u32,
    peer_netns: RawFd,
) -> Result<()> {
    h.link()
        .add(LinkVeth::new(name, peer).mtu(mtu).build())
        .execute()
        .await
        .map_err(nl_err("create veth", format!("{name} (peer {peer})")))?;
    let p = require_index(h, peer).await?;
    h.link()
        .set(
            LinkUnspec::new_with_index(p)
                .mtu(mtu)
                .setns_by_fd(peer_netns)
                .build(),
        )
        .execute()
        .await
        .map_err(nl_err("move veth peer into the pod netns", peer))?;
    let i = require_index(h, name).await?;
    h.link()
        .set(
            LinkUnspec::new_with_index(i)
                .controller(bridge)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(nl_err("enslave to the bridge and bring up", name))
}

/// Rename link `from` to `to`, set its MAC and MTU, bring it up; returns its index.
pub(crate) async fn configure_link(
    h: &Handle,
    from: &str,
    to: &str,
    mac: [u8; 6],
    mtu: u32,
) -> Result<u32> {
    let i = require_index(h, from).await?;
    h.link()
        .set(
            LinkUnspec::new_with_index(i)
                .name(to.to_string())
                .address(mac.to_vec())
                .mtu(mtu)
                .build(),
        )
        .execute()
        .await
        .map_err(nl_err(
            "rename, set MAC and MTU of",
            format!("{from} -> {to}"),
        ))?;
    set_up(h, to).await?;
    Ok(i)
}

/// Delete link `name`; a link that is gone already is fine.
pub(crate) async fn del_link(h: &Handle, name: &str) -> Result<()> {
    let Some(i) = link_index(h, name).await? else {
        return Ok(());
    };
    match h.link().del(i).execute().await {
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
        r => r.map_err(nl_err("delete link", name)),
    }
}

/// True when some link is enslaved to the bridge with index `bridge`.
pub(crate) async fn has_ports(h: &Handle, bridge: u32) -> Result<bool> {
    use netlink_packet_route::link::LinkAttribute;
    let mut links = h.link().get().execute();
    while let Some(m) = links
        .try_next()
        .await
        .map_err(nl_err("list links for ports of bridge", bridge.to_string()))?
    {
        if m.attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::Controller(i) if *i == bridge))
        {
            return Ok(true);
        }
    }
    Ok(false)
}
