//! DHCPv6 (RFC 8415) for one client: the pure core. [`handle`] turns one received
//! message and its source address into a [`Handled`]: a reply with its wire bytes, an
//! event, or a drop with its reason. No sockets, no clocks; the socket layer in
//! [`server`] sends what this decides and counts it.
//!
//! The server assigns one address (IA_NA) and no prefixes, answers only the VM, and
//! includes DNS servers (option 23) and the search list (option 24) in every reply.
//! Whom it answers: a client whose DUID carries a link-layer address (DUID-LLT, DUID-LL)
//! must carry the VM's MAC; a client with another DUID type must speak from the VM's
//! EUI-64 link-local address (the only IPv6 source the anti-spoofing rules let through
//! from the tap besides the leased address).

pub mod config;
pub mod probe;
pub mod server;
pub mod service;
#[cfg(test)]
mod tests;

pub use config::{DhcpV6Config, DhcpV6ConfigError, duid_ll, duid_mac};

use crate::dhcp::describe::hex;
use crate::net::antispoof::eui64_link_local;
use dhcproto::v6::{
    DhcpOption, DhcpOptions, IAAddr, IANA, Message, MessageType, OptionCode, Status, StatusCode,
};
use dhcproto::{Decodable, Decoder, Encodable, Encoder, Name};
use serde::{Deserialize, Serialize};
use std::net::Ipv6Addr;

/// Server (547) and client (546) ports.
pub const SERVER_PORT: u16 = 547;
pub const CLIENT_PORT: u16 = 546;

/// All_DHCP_Relay_Agents_and_Servers, the group clients send to.
pub const ALL_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);

/// The client-to-server message types, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RequestKind {
    Solicit,
    Request,
    Confirm,
    Renew,
    Rebind,
    Release,
    Decline,
    InformationRequest,
    /// A server-to-client or relay message, or an unknown type.
    Other,
}

/// The replies we send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ReplyKind {
    Advertise,
    Reply,
}

/// Why a message got no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DropReason {
    /// Not a DHCPv6 message.
    Malformed,
    /// A type a server does not answer (Advertise, Reply, relay messages, unknown).
    UnsupportedType,
    /// No Client Identifier where RFC 8415 16 requires one.
    NoClientId,
    /// A client other than the VM.
    ForeignClient,
    /// A Server Identifier where none may be (Solicit, Confirm, Rebind).
    UnexpectedServerId,
    /// A Server Identifier naming another server, or none where ours is required.
    NotForUs,
    /// A Confirm naming no address: RFC 8415 18.3.3 says answer nothing.
    ConfirmWithoutAddress,
    /// The reply could not be encoded (a bug; counted, never a panic).
    EncodeFailed,
}

/// What happened to the lease without changing the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseEvent {
    /// Advertised, not yet bound.
    Offered,
    /// Bound by Request, Renew, Rebind or a Rapid Commit Solicit.
    Bound,
    /// The VM gave the address back; it is offered again.
    Released,
    /// The VM found the address in use on the link: logged loudly; it stays the VM's.
    Declined,
}

/// A reply ready to send to the client's source address, port 546.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub kind: ReplyKind,
    pub bytes: Vec<u8>,
}

/// What to do with one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Reply(Reply, Option<LeaseEvent>),
    Drop(DropReason),
}

/// Who sent a message that decoded, for the stats.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientSeen {
    /// The client's DUID, as hex bytes.
    pub duid: String,
    pub source: Ipv6Addr,
    pub kind: RequestKind,
    pub xid: u32,
}

/// The outcome of [`handle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handled {
    /// `None` when the message did not decode.
    pub client: Option<ClientSeen>,
    pub kind: Option<RequestKind>,
    pub decision: Decision,
}

/// Decode one message received on port 547 from `source` and decide. Never panics.
pub fn handle(config: &DhcpV6Config, source: Ipv6Addr, packet: &[u8]) -> Handled {
    let Ok(msg) = Message::decode(&mut Decoder::new(packet)) else {
        return Handled {
            client: None,
            kind: None,
            decision: Decision::Drop(DropReason::Malformed),
        };
    };
    let kind = request_kind(msg.msg_type());
    let client_id = match msg.opts().get(OptionCode::ClientId) {
        Some(DhcpOption::ClientId(id)) => Some(id.clone()),
        _ => None,
    };
    let client = ClientSeen {
        duid: client_id.as_deref().map(hex).unwrap_or_default(),
        source,
        kind,
        xid: msg.xid_num(),
    };
    Handled {
        client: Some(client),
        kind: Some(kind),
        decision: decide(config, source, &msg, kind, client_id),
    }
}

fn request_kind(t: MessageType) -> RequestKind {
    match t {
        MessageType::Solicit => RequestKind::Solicit,
        MessageType::Request => RequestKind::Request,
        MessageType::Confirm => RequestKind::Confirm,
        MessageType::Renew => RequestKind::Renew,
        MessageType::Rebind => RequestKind::Rebind,
        MessageType::Release => RequestKind::Release,
        MessageType::Decline => RequestKind::Decline,
        MessageType::InformationRequest => RequestKind::InformationRequest,
        _ => RequestKind::Other,
    }
}

/// Whether the Server Identifier must be ours, must be absent, or may be either.
enum ServerIdRule {
    Ours,
    Absent,
    OursIfPresent,
}

fn decide(
    config: &DhcpV6Config,
    source: Ipv6Addr,
    msg: &Message,
    kind: RequestKind,
    client_id: Option<Vec<u8>>,
) -> Decision {
    use RequestKind as K;
    let rule = match kind {
        K::Solicit | K::Confirm | K::Rebind => ServerIdRule::Absent,
        K::Request | K::Renew | K::Release | K::Decline => ServerIdRule::Ours,
        K::InformationRequest => ServerIdRule::OursIfPresent,
        K::Other => return Decision::Drop(DropReason::UnsupportedType),
    };
    let Some(client_id) = client_id.filter(|id| !id.is_empty()) else {
        // Information-request may come without one (RFC 8415 18.2.6); then only the
        // source address can say who it is.
        if kind == K::InformationRequest && source == eui64_link_local(config.client_mac) {
            return reply_or_drop(config, msg, None, ReplyKind::Reply, None, vec![]);
        }
        return Decision::Drop(DropReason::NoClientId);
    };
    let is_vm = match duid_mac(&client_id) {
        Some(mac) => mac == config.client_mac,
        None => source == eui64_link_local(config.client_mac),
    };
    if !is_vm {
        return Decision::Drop(DropReason::ForeignClient);
    }
    let server_id = match msg.opts().get(OptionCode::ServerId) {
        Some(DhcpOption::ServerId(id)) => Some(id.as_slice()),
        _ => None,
    };
    let ours = config.server_duid();
    match (rule, server_id) {
        (ServerIdRule::Absent, Some(_)) => return Decision::Drop(DropReason::UnexpectedServerId),
        (ServerIdRule::Ours, None) => return Decision::Drop(DropReason::NotForUs),
        (ServerIdRule::Ours | ServerIdRule::OursIfPresent, Some(id)) if id != ours => {
            return Decision::Drop(DropReason::NotForUs);
        }
        _ => {}
    }
    let ias = client_ias(msg);
    let cid = Some(client_id.as_slice());
    match kind {
        K::Solicit => {
            let rapid = msg.opts().get(OptionCode::RapidCommit).is_some();
            let (reply_kind, event) = if rapid {
                (ReplyKind::Reply, LeaseEvent::Bound)
            } else {
                (ReplyKind::Advertise, LeaseEvent::Offered)
            };
            let mut opts = assign(config, &ias);
            if rapid {
                opts.push(DhcpOption::RapidCommit);
            }
            if !rapid {
                // The highest preference: the client need not wait for other servers.
                opts.push(DhcpOption::Preference(255));
            }
            reply_or_drop(config, msg, cid, reply_kind, Some(event), opts)
        }
        K::Request | K::Renew | K::Rebind => {
            let opts = assign(config, &ias);
            reply_or_drop(
                config,
                msg,
                cid,
                ReplyKind::Reply,
                Some(LeaseEvent::Bound),
                opts,
            )
        }
        K::Confirm => {
            let addrs: Vec<Ipv6Addr> = ias.iter().flat_map(|ia| ia.addrs.iter().copied()).collect();
            if addrs.is_empty() {
                return Decision::Drop(DropReason::ConfirmWithoutAddress);
            }
            let on_link = addrs
                .iter()
                .all(|a| same_prefix(*a, config.address, config.prefix));
            let status = if on_link {
                status(Status::Success, "all addresses on link")
            } else {
                status(Status::NotOnLink, "not on this link")
            };
            reply_or_drop(config, msg, cid, ReplyKind::Reply, None, vec![status])
        }
        K::Release | K::Decline => {
            let event = if kind == K::Release {
                LeaseEvent::Released
            } else {
                LeaseEvent::Declined
            };
            let opts = vec![status(Status::Success, "noted")];
            reply_or_drop(config, msg, cid, ReplyKind::Reply, Some(event), opts)
        }
        K::InformationRequest => reply_or_drop(config, msg, cid, ReplyKind::Reply, None, vec![]),
        K::Other => Decision::Drop(DropReason::UnsupportedType),
    }
}

/// One IA_NA a client sent: its IAID and the addresses it named.
struct ClientIa {
    id: u32,
    addrs: Vec<Ipv6Addr>,
}

fn client_ias(msg: &Message) -> Vec<ClientIa> {
    msg.opts()
        .iter()
        .filter_map(|o| match o {
            DhcpOption::IANA(ia) => Some(ClientIa {
                id: ia.id,
                addrs: ia
                    .opts
                    .iter()
                    .filter_map(|o| match o {
                        DhcpOption::IAAddr(a) => Some(a.addr),
                        _ => None,
                    })
                    .collect(),
            }),
            _ => None,
        })
        .collect()
}

/// The IA_NAs of a reply: each of the client's IAs gets the VM's address; any other
/// address it named comes back with lifetimes 0, so the client drops it (RFC 8415
/// 18.3.4). No IA_NA asked: status NoAddrsAvail (RFC 8415 18.3.1).
fn assign(config: &DhcpV6Config, ias: &[ClientIa]) -> Vec<DhcpOption> {
    if ias.is_empty() {
        return vec![status(
            Status::NoAddrsAvail,
            "this server assigns addresses in IA_NA only",
        )];
    }
    ias.iter()
        .map(|ia| {
            let mut opts = DhcpOptions::new();
            opts.insert(DhcpOption::IAAddr(IAAddr {
                addr: config.address,
                preferred_life: config.lease_secs,
                valid_life: config.lease_secs,
                opts: DhcpOptions::new(),
            }));
            for stale in ia.addrs.iter().filter(|a| **a != config.address) {
                opts.insert(DhcpOption::IAAddr(IAAddr {
                    addr: *stale,
                    preferred_life: 0,
                    valid_life: 0,
                    opts: DhcpOptions::new(),
                }));
            }
            DhcpOption::IANA(IANA {
                id: ia.id,
                t1: config.t1(),
                t2: config.t2(),
                opts,
            })
        })
        .collect()
}

fn status(status: Status, msg: &str) -> DhcpOption {
    DhcpOption::StatusCode(StatusCode {
        status,
        msg: msg.to_owned(),
    })
}

fn same_prefix(a: Ipv6Addr, b: Ipv6Addr, prefix: u8) -> bool {
    let mask = u128::MAX
        .checked_shl(128 - u32::from(prefix.min(128)))
        .unwrap_or(0);
    u128::from(a) & mask == u128::from(b) & mask
}

/// A reply with the client's transaction ID, our Server Identifier, the client's
/// Client Identifier, `opts`, and the DNS servers and search list.
fn reply_or_drop(
    config: &DhcpV6Config,
    request: &Message,
    client_id: Option<&[u8]>,
    kind: ReplyKind,
    event: Option<LeaseEvent>,
    opts: Vec<DhcpOption>,
) -> Decision {
    let msg_type = match kind {
        ReplyKind::Advertise => MessageType::Advertise,
        ReplyKind::Reply => MessageType::Reply,
    };
    let mut reply = Message::new_with_id(msg_type, request.xid());
    let o = reply.opts_mut();
    o.insert(DhcpOption::ServerId(config.server_duid()));
    if let Some(id) = client_id {
        o.insert(DhcpOption::ClientId(id.to_vec()));
    }
    for opt in opts {
        o.insert(opt);
    }
    if !config.dns.is_empty() {
        o.insert(DhcpOption::DomainNameServers(config.dns.clone()));
    }
    let names: Vec<Name> = config
        .search
        .iter()
        .filter_map(|d| Name::from_ascii(format!("{d}.")).ok())
        .collect();
    if !names.is_empty() {
        o.insert(DhcpOption::DomainSearchList(names));
    }
    let mut bytes = Vec::new();
    match reply.encode(&mut Encoder::new(&mut bytes)) {
        Ok(()) => Decision::Reply(Reply { kind, bytes }, event),
        Err(_) => Decision::Drop(DropReason::EncodeFailed),
    }
}
