//! Applying [`NetOp`]s through netlink (and `/dev/net/tun`, which has no netlink verb
//! for creating taps; and `nft` fed JSON for the anti-spoofing table, which runs in the
//! namespace of the thread that starts it). Not `/proc/sys`: a container runtime mounts it read-only for
//! anything not privileged, NET_ADMIN or not; per-link settings go through
//! `RTM_SETLINK` / `IFLA_AF_SPEC` instead. The one exception is IPv6 forwarding, which
//! has neither a per-link switch nor a netlink verb ([`NetOp::Ipv6Forwarding`]): written
//! only when it differs, so a runtime that set it for the pod spares the write. Every op is idempotent: "already so" is
//! success, so applying a plan to an untouched, half-rewired or fully rewired pod
//! converges on the same state. Runs on a thread inside the pod's namespace (see
//! [`super::netns`]).

use super::error::{NetError, errno};
use super::facts::{IpCidr, Route};
use super::plan::{AddrGenMode, Ipv4Setting, NetOp};
use super::tap::{TapSpec, create_persistent};
use futures::TryStreamExt;
use netlink_packet_core::{DefaultNla, Emitable, NLA_F_NESTED};
use netlink_packet_route::address::AddressHeaderFlags;
use netlink_packet_route::link::{
    AfSpecInet, AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoKind, LinkAttribute, LinkInfo,
    LinkMessage,
};
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
        NetOp::Ipv4Conf {
            link,
            setting,
            value,
        } => {
            let index = link_index(h, known, link).await?;
            change(
                h,
                ipv4_conf_message(index, *setting, *value),
                op.to_string(),
            )
            .await
        }
        NetOp::Ipv6AddrGenMode { link, mode } => {
            if !kernel_has_ipv6() {
                tracing::debug!(%link, "IPv6 is off in this kernel; skipping");
                return Ok(());
            }
            let index = link_index(h, known, link).await?;
            change(h, addr_gen_mode_message(index, *mode), op.to_string()).await
        }
        NetOp::DelIpv6LinkLocal { link } => {
            let index = link_index(h, known, link).await?;
            let mut addrs = h.address().get().set_link_index_filter(index).execute();
            let mut link_local = Vec::new();
            while let Some(m) = addrs
                .try_next()
                .await
                .map_err(|e| NetError::netlink(format!("list addresses of {link}"), e))?
            {
                let is_ll = m.attributes.iter().any(|a| {
                    matches!(a, netlink_packet_route::address::AddressAttribute::Address(IpAddr::V6(v6))
                        if v6.segments()[0] & 0xffc0 == 0xfe80)
                });
                if is_ll && m.header.index == index {
                    link_local.push(m);
                }
            }
            for m in link_local {
                match h.address().del(m).execute().await {
                    Err(e) if matches!(errno(&e), Some(libc::EADDRNOTAVAIL | libc::ENOENT)) => {}
                    r => r.map_err(|e| NetError::netlink(op.to_string(), e))?,
                }
            }
            Ok(())
        }
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
        NetOp::CreateTap(tap) => {
            let (name, mtu) = (&tap.name, tap.mtu);
            let index = match find_link(h, name).await? {
                Some(existing) => {
                    expect_kind(&existing, name, "tun")?;
                    existing.header.index
                }
                None => {
                    let spec = TapSpec {
                        name,
                        owner: tap.owner,
                        group: tap.group,
                        multiqueue: tap.multiqueue,
                    };
                    create_persistent(spec).map_err(|(what, source)| NetError::Tap {
                        name: name.clone(),
                        what,
                        source,
                    })?;
                    link_index(h, known, name).await?
                }
            };
            let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
            change(h, msg, format!("set mtu {mtu} on tap {name}")).await
        }
        NetOp::AntiSpoof(rules) => {
            super::antispoof::apply(&rules.ruleset()).map_err(|source| NetError::AntiSpoofTable {
                table: rules.table.clone(),
                source,
            })
        }
        NetOp::DelNftTable { table } => {
            super::antispoof::apply(&super::antispoof::remove_ruleset(table)).map_err(|source| {
                NetError::AntiSpoofTable {
                    table: table.clone(),
                    source,
                }
            })
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
        NetOp::SetDown { link } => {
            let index = link_index(h, known, link).await?;
            let msg = LinkUnspec::new_with_index(index).down().build();
            change(h, msg, format!("set {link} down")).await
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
        NetOp::Nat(rules) => nft(&super::masquerade::ruleset(rules), op),
        NetOp::DelNatTable { table } => nft(&super::masquerade::teardown_ruleset(table), op),
        NetOp::Ipv6Forwarding { value } => {
            if !kernel_has_ipv6() {
                tracing::debug!("IPv6 is off in this kernel; skipping");
                return Ok(());
            }
            set_sysctl(IPV6_FORWARDING, *value)
        }
    }
}

/// The one sysctl a plan writes through `/proc/sys` (see [`NetOp::Ipv6Forwarding`]).
pub(crate) const IPV6_FORWARDING: &str = "net/ipv6/conf/all/forwarding";

/// Whether this process may write sysctl `key` (`access(2)`: a read-only `/proc/sys`,
/// as container runtimes mount it, says no).
pub(crate) fn sysctl_writable(key: &str) -> bool {
    let path = Path::new("/proc/sys").join(key);
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated path; access(2) reads nothing else.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

/// Write a sysctl of the current thread's namespace unless it already has `value`.
fn set_sysctl(key: &str, value: u32) -> Result<(), NetError> {
    if read_sysctl(key)?.and_then(|v| v.parse::<u32>().ok()) == Some(value) {
        return Ok(());
    }
    std::fs::write(Path::new("/proc/sys").join(key), value.to_string()).map_err(|source| {
        NetError::SysctlWrite {
            key: key.to_owned(),
            value,
            source,
        }
    })
}

/// Run one nft batch (`nft -j -f -`, a child of this thread, so in its namespace). nft
/// applies a batch as one transaction: all of it or nothing.
fn nft(batch: &nftables::schema::Nftables, op: &NetOp) -> Result<(), NetError> {
    nftables::helper::apply_ruleset(batch).map_err(|e| NetError::Nft {
        what: op.to_string(),
        detail: match e {
            nftables::helper::NftablesError::NftFailed { stderr, .. } => stderr.trim().to_owned(),
            other => other.to_string(),
        },
    })
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

/// `IFLA_INET_CONF` as the kernel takes it in a request: nested `u32` attributes typed
/// by `IPV4_DEVCONF_*` number (netlink-packet-route's request form leaves out zeros, so
/// the attribute is built here).
fn ipv4_conf_message(index: u32, setting: Ipv4Setting, value: u32) -> LinkMessage {
    const IFLA_INET_CONF: u16 = 1;
    let entry = DefaultNla::new(setting.devconf_id(), value.to_ne_bytes().to_vec());
    let mut nested = vec![0u8; entry.buffer_len()];
    entry.emit(&mut nested);
    let conf = DefaultNla::new(IFLA_INET_CONF | NLA_F_NESTED, nested);
    LinkUnspec::new_with_index(index)
        .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![
            AfSpecInet::Other(conf),
        ])]))
        .build()
}

fn addr_gen_mode_message(index: u32, mode: AddrGenMode) -> LinkMessage {
    LinkUnspec::new_with_index(index)
        .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
            vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::from(
                mode.to_kernel(),
            ))],
        )]))
        .build()
}

/// The kernel runs IPv6 (not booted with `ipv6.disable=1`).
fn kernel_has_ipv6() -> bool {
    Path::new("/proc/sys/net/ipv6").exists()
}

/// Read a sysctl of the current thread's namespace, trimmed; `None` if it does not exist.
pub(crate) fn read_sysctl(key: &str) -> Result<Option<String>, NetError> {
    match std::fs::read_to_string(Path::new("/proc/sys").join(key)) {
        Ok(s) => Ok(Some(s.trim().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(NetError::Sysctl {
            key: key.to_owned(),
            source,
        }),
    }
}
