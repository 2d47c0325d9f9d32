//! Applying [`NetOp`]s through netlink (and `/proc/sys`, `/dev/net/tun` where netlink has
//! no verb). Every op is idempotent: "already so" is success, so applying a plan to an
//! untouched, half-rewired or fully rewired pod converges on the same state.
//! Runs on a thread inside the pod's namespace (see [`super::netns`]).

use super::error::{NetError, errno};
use super::facts::{IpCidr, Route};
use super::plan::NetOp;
use super::tap::{TapSpec, create_persistent};
use futures::TryStreamExt;
use netlink_packet_route::address::AddressHeaderFlags;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::route::RouteScope;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, RouteMessageBuilder};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

/// Apply `ops` in order inside `netns` (the current namespace when `None`). Stops at the
/// first failure, naming the op.
pub fn apply(netns: Option<&Path>, ops: &[NetOp]) -> Result<(), NetError> {
    super::discover::with_handle(netns, |h| async move { apply_with(&h, ops).await })
}

/// Apply `ops` with a handle whose socket lives in the target namespace. Must run on
/// the thread that is inside that namespace (sysctls and taps follow the thread's).
pub async fn apply_with(handle: &Handle, ops: &[NetOp]) -> Result<(), NetError> {
    // Link indexes by name, looked up once per apply: only this apply changes the links.
    let mut known = HashMap::new();
    for (index, op) in ops.iter().enumerate() {
        tracing::debug!(%op, "apply");
        apply_one(handle, &mut known, op)
            .await
            .map_err(|source| NetError::Apply {
                index,
                op: Box::new(op.clone()),
                source: Box::new(source),
            })?;
    }
    Ok(())
}

async fn apply_one(
    h: &Handle,
    known: &mut HashMap<String, u32>,
    op: &NetOp,
) -> Result<(), NetError> {
    match op {
        NetOp::Sysctl { key, value } => write_sysctl(key, value),
        NetOp::CreateBridge { name, mtu, mac } => match find_link(h, name).await? {
            Some(existing) => {
                expect_kind(&existing, name, "bridge")?;
                let msg = LinkUnspec::new_with_index(existing.header.index)
                    .mtu(*mtu)
                    .address(mac.0.to_vec())
                    .build();
                change(h, msg, format!("set mtu/mac of bridge {name}")).await
            }
            None => h
                .link()
                .add(
                    LinkBridge::new(name)
                        .mtu(*mtu)
                        .address(mac.0.to_vec())
                        .build(),
                )
                .execute()
                .await
                .map_err(|e| NetError::netlink(format!("create bridge {name}"), e)),
        },
        NetOp::CreateTap {
            name,
            mtu,
            owner,
            group,
            multiqueue,
        } => {
            let index = match find_link(h, name).await? {
                Some(existing) => {
                    expect_kind(&existing, name, "tun")?;
                    existing.header.index
                }
                None => {
                    let spec = TapSpec {
                        name,
                        owner: *owner,
                        group: *group,
                        multiqueue: *multiqueue,
                    };
                    create_persistent(spec).map_err(|(what, source)| NetError::Tap {
                        name: name.clone(),
                        what,
                        source,
                    })?;
                    link_index(h, known, name).await?
                }
            };
            let msg = LinkUnspec::new_with_index(index).mtu(*mtu).build();
            change(h, msg, format!("set mtu {mtu} on tap {name}")).await
        }
        NetOp::DelAddress { link, address } => {
            let index = link_index(h, known, link).await?;
            let msg = address_message(index, *address);
            match h.address().del(msg).execute().await {
                Err(e) if matches!(errno(&e), Some(libc::EADDRNOTAVAIL | libc::ENOENT)) => Ok(()),
                r => r.map_err(|e| NetError::netlink(format!("remove {address} from {link}"), e)),
            }
        }
        NetOp::AddAddress { link, address } => {
            let index = link_index(h, known, link).await?;
            let mut req = h.address().add(index, address.addr, address.prefix);
            if address.addr.is_ipv6() {
                req.message_mut().header.flags |= AddressHeaderFlags::Nodad;
            }
            match req.execute().await {
                Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
                r => r.map_err(|e| NetError::netlink(format!("add {address} to {link}"), e)),
            }
        }
        NetOp::SetMac { link, mac } => {
            let index = link_index(h, known, link).await?;
            let msg = LinkUnspec::new_with_index(index)
                .address(mac.0.to_vec())
                .build();
            change(h, msg, format!("set mac {mac} on {link}")).await
        }
        NetOp::SetMaster { link, master } => {
            let index = link_index(h, known, link).await?;
            let master_index = link_index(h, known, master).await?;
            let msg = LinkUnspec::new_with_index(index)
                .controller(master_index)
                .build();
            change(h, msg, format!("enslave {link} to {master}")).await
        }
        NetOp::SetUp { link } => {
            let index = link_index(h, known, link).await?;
            let msg = LinkUnspec::new_with_index(index).up().build();
            change(h, msg, format!("set {link} up")).await
        }
        NetOp::AddRoute { link, route } => {
            let index = link_index(h, known, link).await?;
            match h.route().add(route_message(index, route)).execute().await {
                Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
                r => r.map_err(|e| NetError::netlink(op.to_string(), e)),
            }
        }
        NetOp::DelLink { name } => {
            known.remove(name);
            match find_link(h, name).await? {
                None => Ok(()),
                Some(l) => match h.link().del(l.header.index).execute().await {
                    Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
                    r => r.map_err(|e| NetError::netlink(format!("delete link {name}"), e)),
                },
            }
        }
    }
}

async fn change(h: &Handle, msg: LinkMessage, what: String) -> Result<(), NetError> {
    h.link()
        .change(msg)
        .execute()
        .await
        .map_err(|e| NetError::netlink(what, e))
}

/// The link called `name`, or `None`.
pub(crate) async fn find_link(h: &Handle, name: &str) -> Result<Option<LinkMessage>, NetError> {
    match h.link().get().match_name(name).execute().try_next().await {
        Ok(m) => Ok(m),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(NetError::netlink(format!("look up link {name}"), e)),
    }
}

async fn link_index(
    h: &Handle,
    known: &mut HashMap<String, u32>,
    name: &str,
) -> Result<u32, NetError> {
    if let Some(&i) = known.get(name) {
        return Ok(i);
    }
    let i = find_link(h, name)
        .await?
        .map(|m| m.header.index)
        .ok_or_else(|| NetError::LinkNotFound {
            name: name.to_owned(),
        })?;
    known.insert(name.to_owned(), i);
    Ok(i)
}

fn expect_kind(m: &LinkMessage, name: &str, want: &str) -> Result<(), NetError> {
    let kind = m.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k.clone()),
            _ => None,
        }),
        _ => None,
    });
    let ok = matches!(
        (&kind, want),
        (Some(InfoKind::Bridge), "bridge") | (Some(InfoKind::Tun), "tun")
    );
    if ok {
        return Ok(());
    }
    Err(NetError::WrongKind {
        name: name.to_owned(),
        found: kind.map_or_else(
            || "device without a kind".to_owned(),
            |k| format!("{k:?}").to_lowercase(),
        ),
        want: want.to_owned(),
    })
}

fn address_message(index: u32, a: IpCidr) -> netlink_packet_route::address::AddressMessage {
    match a.addr {
        IpAddr::V4(v4) => rtnetlink::AddressMessageBuilder::<std::net::Ipv4Addr>::new()
            .index(index)
            .address(v4, a.prefix)
            .build(),
        IpAddr::V6(v6) => rtnetlink::AddressMessageBuilder::<std::net::Ipv6Addr>::new()
            .index(index)
            .address(v6, a.prefix)
            .build(),
    }
}

fn route_message(index: u32, r: &Route) -> netlink_packet_route::route::RouteMessage {
    let mut msg = match (r.destination.addr, r.gateway) {
        (IpAddr::V4(d), gw) => {
            let mut b = RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .destination_prefix(d, r.destination.prefix);
            if let Some(IpAddr::V4(g)) = gw {
                b = b.gateway(g);
            }
            let scope = if gw.is_none() {
                RouteScope::Link
            } else {
                RouteScope::Universe
            };
            b.output_interface(index).scope(scope).build()
        }
        (IpAddr::V6(d), gw) => {
            let mut b = RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .destination_prefix(d, r.destination.prefix);
            if let Some(IpAddr::V6(g)) = gw {
                b = b.gateway(g);
            }
            // The kernel gives IPv6 routes scope universe whatever the nexthop.
            b.output_interface(index).build()
        }
    };
    if let Some(m) = r.metric {
        msg.attributes
            .push(netlink_packet_route::route::RouteAttribute::Priority(m));
    }
    msg
}

fn write_sysctl(key: &str, value: &str) -> Result<(), NetError> {
    let err = |source| NetError::Sysctl {
        key: key.to_owned(),
        value: value.to_owned(),
        source,
    };
    if key.starts_with("net/ipv6/") && !Path::new("/proc/sys/net/ipv6").exists() {
        tracing::debug!(key, "IPv6 is off in this kernel; skipping");
        return Ok(());
    }
    std::fs::write(Path::new("/proc/sys").join(key), value).map_err(err)
}

/// Read a sysctl of the current thread's namespace, trimmed; `None` if it does not exist.
pub(crate) fn read_sysctl(key: &str) -> Result<Option<String>, NetError> {
    match std::fs::read_to_string(Path::new("/proc/sys").join(key)) {
        Ok(s) => Ok(Some(s.trim().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(NetError::Sysctl {
            key: key.to_owned(),
            value: "(read)".into(),
            source,
        }),
    }
}
