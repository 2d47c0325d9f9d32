//! DHCPv4: the pure core. [`handle`] turns one received packet into a [`Handled`]:
//! a reply with its wire bytes and destination, an event to record, or a drop with its
//! reason. No sockets, no clocks, no globals; the socket layer in [`crate::dhcp::server`]
//! sends what this decides, and [`crate::dhcp::stats`] counts it.

mod addressing;
pub mod options;

pub use addressing::Destination;

use crate::dhcp::config::DhcpConfig;
use crate::net::MacAddr;
use dhcproto::v4::{DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use options::{ReplyOptions, lay_out, payload_budget, reply_options};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// The client-to-server message types we act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestKind {
    Discover,
    Request,
    Decline,
    Release,
    Inform,
    /// Any other message type (a server-to-client type, lease query, unknown).
    Other,
}

/// The replies we send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplyKind {
    Offer,
    Ack,
    Nak,
}

/// Why a packet got no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DropReason {
    /// Not a DHCP message: too short, bad magic, broken options.
    Malformed,
    /// A BOOTREPLY or unknown op code.
    NotBootRequest,
    /// Hardware type or length other than Ethernet's.
    NotEthernet,
    /// A client other than the VM's MAC.
    ForeignClient,
    /// BOOTP without option 53.
    NoMessageType,
    /// A message type a server does not answer.
    UnsupportedType,
    /// A REQUEST naming no address at all (no option 50, no ciaddr).
    RequestWithoutAddress,
    /// A REQUEST whose server identifier (option 54) names another server: the client
    /// chose that server's offer, so this one stays silent (RFC 2131 4.3.2).
    OtherServerChosen,
    /// An INFORM without ciaddr: nowhere to answer.
    InformWithoutAddress,
    /// The reply could not be encoded (a bug; counted, never a panic).
    EncodeFailed,
    /// The options a reply cannot go without (message type, server identifier, lease
    /// time and the client identifier it must echo, RFC 6842) do not fit the client's
    /// size limit: a client identifier of hundreds of bytes (repeated option 61s are
    /// concatenated, RFC 3396) against 576 bytes. No reply beats one it cannot take.
    ReplyTooLarge,
}

/// What happened to a lease without a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseEvent {
    /// The VM gave the address back; it is offered again on the next DISCOVER.
    Released,
    /// The VM found the address in use (a conflict on the pod network). Logged loudly;
    /// the address stays the VM's, since a single-client server has no other.
    Declined,
}

/// A reply ready to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub kind: ReplyKind,
    pub to: Destination,
    pub bytes: Vec<u8>,
}

/// What to do with one packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Reply(Reply),
    Event(LeaseEvent),
    Drop(DropReason),
}

/// Who sent a packet that decoded, for the stats' "last client seen".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientSeen {
    /// The client hardware address, as hex bytes (a MAC for Ethernet).
    pub chaddr: String,
    pub kind: RequestKind,
    pub xid: u32,
    /// Option 12 from the client, if it sent one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// The outcome of [`handle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handled {
    /// `None` when the packet did not decode.
    pub client: Option<ClientSeen>,
    pub decision: Decision,
}

/// Decode one packet received on port 67 and decide. Never panics on any input.
pub fn handle(config: &DhcpConfig, packet: &[u8]) -> Handled {
    let Some(msg) = decode(packet) else {
        return Handled {
            client: None,
            decision: Decision::Drop(DropReason::Malformed),
        };
    };
    Handled {
        client: client_seen(&msg),
        decision: respond(config, &msg),
    }
}

/// Decode a DHCP message, or `None` for anything that is not one.
pub fn decode(packet: &[u8]) -> Option<Message> {
    // Shorter than the fixed header plus cookie is never DHCP; dhcproto would also
    // accept a packet whose options area is missing, which no client sends.
    if packet.len() < options::FIXED_LEN || packet[236..240] != [99, 130, 83, 99] {
        return None;
    }
    if !option_lengths_sane(&packet[240..]) {
        return None;
    }
    Message::decode(&mut Decoder::new(packet)).ok()
}

/// dhcproto 0.15 asserts (debug builds) or underflows on a few options with a wrong
/// length; a client never sends those, so such a packet is malformed. Lengths are
/// checked per run of one code, the way dhcproto joins split options (RFC 3396).
fn option_lengths_sane(mut opts: &[u8]) -> bool {
    let mut run: Option<(u8, usize)> = None;
    let ok = |(code, len): (u8, usize)| match code {
        80 => len == 0,
        94 => len == 3,
        81 => len >= 3,
        151 => len >= 1,
        152..=155 => len == 4,
        _ => true,
    };
    loop {
        match opts {
            [] | [255, ..] => return run.is_none_or(ok),
            [0, rest @ ..] => {
                if run.take().is_some_and(|r| !ok(r)) {
                    return false;
                }
                opts = rest;
            }
            [code, len, rest @ ..] if rest.len() >= usize::from(*len) => {
                let len = usize::from(*len);
                run = match run {
                    Some((c, l)) if c == *code => Some((c, l + len)),
                    Some(r) if !ok(r) => return false,
                    _ => Some((*code, len)),
                };
                opts = &rest[len..];
            }
            _ => return false, // an option running past the end
        }
    }
}

fn request_kind(msg: &Message) -> Option<RequestKind> {
    Some(match msg.opts().msg_type()? {
        MessageType::Discover => RequestKind::Discover,
        MessageType::Request => RequestKind::Request,
        MessageType::Decline => RequestKind::Decline,
        MessageType::Release => RequestKind::Release,
        MessageType::Inform => RequestKind::Inform,
        _ => RequestKind::Other,
    })
}

/// The client's hardware address, when it is a sane length (dhcproto's `chaddr()`
/// panics on hlen > 16, so this is the only way we read it).
fn hardware_address(msg: &Message) -> Option<&[u8]> {
    (msg.hlen() <= 16).then(|| msg.chaddr())
}

fn client_seen(msg: &Message) -> Option<ClientSeen> {
    let chaddr = hardware_address(msg)?;
    let hostname = match msg.opts().get(OptionCode::Hostname) {
        Some(DhcpOption::Hostname(h)) => {
            Some(h.chars().filter(|c| !c.is_control()).take(64).collect())
        }
        _ => None,
    };
    Some(ClientSeen {
        chaddr: chaddr
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
        kind: request_kind(msg)?,
        xid: msg.xid(),
        hostname,
    })
}

/// The pure server: what to answer to `msg` (RFC 2131 4.3), for the one client in
/// `config`.
pub fn respond(config: &DhcpConfig, msg: &Message) -> Decision {
    use Decision::Drop;
    if msg.opcode() != Opcode::BootRequest {
        return Drop(DropReason::NotBootRequest);
    }
    if msg.htype() != HType::Eth || msg.hlen() != 6 {
        return Drop(DropReason::NotEthernet);
    }
    if hardware_address(msg) != Some(&config.client_mac.0[..]) {
        return Drop(DropReason::ForeignClient);
    }
    let Some(kind) = request_kind(msg) else {
        return Drop(DropReason::NoMessageType);
    };
    let requested_ip = match msg.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    };
    let server_id = match msg.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    };
    match kind {
        RequestKind::Discover => reply(config, msg, ReplyKind::Offer),
        RequestKind::Request => {
            // SELECTING names a server; INIT-REBOOT names an address; RENEWING and
            // REBINDING carry it in ciaddr. A REQUEST naming another server's identifier
            // accepts that server's offer: not ours to answer, not even with a NAK
            // (RFC 2131 4.3.2).
            let asked = requested_ip.or((!msg.ciaddr().is_unspecified()).then(|| msg.ciaddr()));
            match (server_id, asked) {
                (Some(sid), _) if sid != config.server_ip => Drop(DropReason::OtherServerChosen),
                (_, None) => Drop(DropReason::RequestWithoutAddress),
                (_, Some(ip)) if ip != config.client_ip => nak(config, msg, "wrong address"),
                _ => reply(config, msg, ReplyKind::Ack),
            }
        }
        RequestKind::Inform if msg.ciaddr().is_unspecified() => {
            Drop(DropReason::InformWithoutAddress)
        }
        RequestKind::Inform => encode_reply(
            config,
            msg,
            ReplyKind::Ack,
            ReplyOptions::Inform,
            Ipv4Addr::UNSPECIFIED,
        ),
        RequestKind::Release => Decision::Event(LeaseEvent::Released),
        RequestKind::Decline => Decision::Event(LeaseEvent::Declined),
        RequestKind::Other => Drop(DropReason::UnsupportedType),
    }
}

fn reply(config: &DhcpConfig, msg: &Message, kind: ReplyKind) -> Decision {
    let mt = match kind {
        ReplyKind::Offer => MessageType::Offer,
        ReplyKind::Ack => MessageType::Ack,
        ReplyKind::Nak => MessageType::Nak,
    };
    encode_reply(config, msg, kind, ReplyOptions::Lease(mt), config.client_ip)
}

fn nak(config: &DhcpConfig, msg: &Message, why: &'static str) -> Decision {
    encode_reply(
        config,
        msg,
        ReplyKind::Nak,
        ReplyOptions::Nak(why),
        Ipv4Addr::UNSPECIFIED,
    )
}

/// Build the reply header (RFC 2131 table 3), its options and its destination.
fn encode_reply(
    config: &DhcpConfig,
    msg: &Message,
    kind: ReplyKind,
    what: ReplyOptions,
    yiaddr: Ipv4Addr,
) -> Decision {
    let to = addressing::destination(msg, kind, yiaddr, config.client_ip);
    // ciaddr is echoed in an ACK to a RENEW or INFORM, zero otherwise.
    let ciaddr = if kind == ReplyKind::Ack {
        msg.ciaddr()
    } else {
        Ipv4Addr::UNSPECIFIED
    };
    let mut out = Message::new_with_id(
        msg.xid(),
        ciaddr,
        yiaddr,
        Ipv4Addr::UNSPECIFIED,
        // No relay can sit between the tap and the server: giaddr is not echoed.
        Ipv4Addr::UNSPECIFIED,
        &config.client_mac.0,
    );
    let flags = msg.flags();
    out.set_opcode(Opcode::BootReply)
        .set_htype(HType::Eth)
        .set_flags(flags);
    if let (Some(file), ReplyOptions::Lease(_)) = (&config.boot_file_name, what)
        && file.len() < 128
    {
        out.set_fname_str(file);
    }
    let client_id = match msg.opts().get(OptionCode::ClientIdentifier) {
        Some(DhcpOption::ClientIdentifier(id)) => Some(id.as_slice()),
        _ => None,
    };
    let requested: Vec<u8> = match msg.opts().get(OptionCode::ParameterRequestList) {
        Some(DhcpOption::ParameterRequestList(codes)) => {
            codes.iter().map(|c| u8::from(*c)).collect()
        }
        _ => Vec::new(),
    };
    let max_size = match msg.opts().get(OptionCode::MaxMessageSize) {
        Some(DhcpOption::MaxMessageSize(n)) => Some(*n),
        _ => None,
    };
    let mut bytes = Vec::with_capacity(600);
    if out.encode(&mut Encoder::new(&mut bytes)).is_err() || bytes.len() != options::FIXED_LEN {
        return Decision::Drop(DropReason::EncodeFailed);
    }
    let opts = reply_options(config, what, client_id);
    let budget = payload_budget(max_size, config.mtu);
    bytes.extend(lay_out(&opts, &requested, budget));
    if bytes.len() > budget {
        return Decision::Drop(DropReason::ReplyTooLarge);
    }
    Decision::Reply(Reply { kind, to, bytes })
}

/// A client request skeleton: BOOTREQUEST from `mac` with `kind` and the broadcast flag
/// set, so that a client without an address hears the reply. Used by the probe.
pub fn client_message(mac: MacAddr, xid: u32, kind: MessageType) -> Message {
    let mut m = Message::new_with_id(
        xid,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac.0,
    );
    m.set_flags(Flags::default().set_broadcast());
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    m
}

#[cfg(test)]
pub(crate) mod tests;
