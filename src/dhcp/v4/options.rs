//! Which options a reply carries, in which order, within the client's size limit.
//!
//! Pure. Each option is encoded on its own by dhcproto (long ones split per RFC 3396),
//! then laid out: the message type (53) first, then every option the client asked for
//! in its parameter request list (55), in its order, lease time (51) and server
//! identifier (54) included (RFC 2132 9.8), then the protocol options it did not ask
//! for, then the rest. When the reply would exceed what the client accepts, the least
//! important options are left out whole; none is ever truncated, and the protocol
//! options are never left out.

use crate::dhcp::config::DhcpConfig;
use dhcproto::v4::{DhcpOption, MessageType, OptionCode, UnknownOption};
use dhcproto::{Encodable, Encoder, Name};

/// A DHCP message always fits this (RFC 2131: 576-byte IP datagrams).
pub const MIN_MAX_MESSAGE_SIZE: u16 = 576;
/// IPv4 + UDP headers, counted in option 57 (RFC 2132 9.10 sizes the whole datagram:
/// 576 minus these 28 bytes and the 236-byte header leaves RFC 2131's 312 for options).
const IP_UDP_HEADERS: usize = 28;
/// BOOTP header plus the magic cookie.
pub const FIXED_LEN: usize = 240;
/// Replies are padded to the BOOTP minimum some old clients insist on.
const MIN_REPLY_LEN: usize = 300;

/// What kind of reply the options are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyOptions {
    /// OFFER or ACK for a lease: everything, with lease times.
    Lease(MessageType),
    /// ACK to an INFORM: configuration without lease data.
    Inform,
    /// NAK with a reason.
    Nak(&'static str),
}

/// The DHCP payload size the client accepts: option 57 (never below 576), minus the IP
/// and UDP headers, and never over what the link's MTU carries.
pub fn payload_budget(max_message_size: Option<u16>, link_mtu: u16) -> usize {
    let mms = max_message_size
        .unwrap_or(MIN_MAX_MESSAGE_SIZE)
        .max(MIN_MAX_MESSAGE_SIZE);
    let limit = usize::from(mms).min(usize::from(link_mtu.max(MIN_MAX_MESSAGE_SIZE)));
    limit - IP_UDP_HEADERS
}

/// The options for a reply, most important first: that order decides what is left
/// out when space runs short. `client_id` (option 61) is echoed per RFC 6842.
pub fn reply_options(
    config: &DhcpConfig,
    what: ReplyOptions,
    client_id: Option<&[u8]>,
) -> Vec<DhcpOption> {
    let (kind, lease) = match what {
        ReplyOptions::Lease(kind) => (kind, true),
        ReplyOptions::Inform => (MessageType::Ack, false),
        ReplyOptions::Nak(_) => (MessageType::Nak, false),
    };
    let mut out = vec![
        DhcpOption::MessageType(kind),
        DhcpOption::ServerIdentifier(config.server_ip),
    ];
    if let Some(id) = client_id {
        out.push(DhcpOption::ClientIdentifier(id.to_vec()));
    }
    if let ReplyOptions::Nak(why) = what {
        out.push(DhcpOption::Message(why.to_owned()));
        return out;
    }
    if lease {
        out.push(DhcpOption::AddressLeaseTime(config.lease_secs));
    }
    out.push(DhcpOption::SubnetMask(config.subnet_mask()));
    if let Some(r) = config.router {
        out.push(DhcpOption::Router(vec![r]));
    }
    if !config.routes.is_empty() {
        out.push(DhcpOption::ClasslessStaticRoute(
            config
                .routes
                .iter()
                .filter_map(|r| {
                    let net = ipnet::Ipv4Net::new(r.destination, r.prefix).ok()?.trunc();
                    Some((net, r.gateway))
                })
                .collect(),
        ));
    }
    if !config.dns.is_empty() {
        out.push(DhcpOption::DomainNameServer(config.dns.clone()));
    }
    out.push(DhcpOption::InterfaceMtu(config.mtu));
    if lease {
        out.push(DhcpOption::Renewal(config.lease_secs / 2));
        out.push(DhcpOption::Rebinding(
            u32::try_from(u64::from(config.lease_secs) * 7 / 8).unwrap_or(u32::MAX),
        ));
    }
    let names: Vec<Name> = config
        .search
        .iter()
        .filter_map(|s| Name::from_ascii(s).ok())
        .collect();
    if !names.is_empty() {
        out.push(DhcpOption::DomainSearch(names));
    }
    if let Some(d) = &config.domain_name {
        out.push(DhcpOption::DomainName(d.clone()));
    }
    if let Some(h) = &config.hostname {
        out.push(DhcpOption::Hostname(h.clone()));
    }
    if !config.ntp_servers.is_empty() {
        out.push(DhcpOption::NtpServers(config.ntp_servers.clone()));
    }
    if let Some(t) = &config.tftp_server_name {
        out.push(DhcpOption::TFTPServerName(t.as_bytes().to_vec()));
    }
    if let Some(b) = &config.boot_file_name {
        out.push(DhcpOption::BootfileName(b.as_bytes().to_vec()));
    }
    for p in &config.private_options {
        out.push(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::from(p.option()),
            p.value().as_bytes().to_vec(),
        )));
    }
    out
}

/// Options every reply keeps in front and never leaves out.
fn is_protocol(code: u8) -> bool {
    matches!(code, 53 | 54 | 51 | 61)
}

/// One option on the wire (code, length, data; several chunks when long).
fn encode_option(opt: &DhcpOption) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    match opt.encode(&mut Encoder::new(&mut buf)) {
        Ok(()) => Some(buf),
        Err(e) => {
            tracing::warn!(option = u8::from(OptionCode::from(opt)), error = %e, "cannot encode DHCP option; left out");
            None
        }
    }
}

/// The options area of a reply (after the magic cookie): the message type, then the
/// client's requested codes in its order, then unrequested protocol options, then the
/// rest by importance, then End, so that the whole message fits `budget` bytes.
/// `options` is in importance order.
pub fn lay_out(options: &[DhcpOption], requested: &[u8], budget: usize) -> Vec<u8> {
    let encoded: Vec<(u8, Vec<u8>)> = options
        .iter()
        .filter_map(|o| Some((u8::from(OptionCode::from(o)), encode_option(o)?)))
        .collect();
    // Keep options in importance order while they fit; one that does not fit is left
    // out whole and smaller, less important ones may still go in.
    let mut room = budget.saturating_sub(FIXED_LEN + 1);
    let mut keep = vec![false; encoded.len()];
    for (i, (code, bytes)) in encoded.iter().enumerate() {
        if is_protocol(*code) || bytes.len() <= room {
            room = room.saturating_sub(bytes.len());
            keep[i] = true;
        } else {
            tracing::debug!(
                option = code,
                len = bytes.len(),
                "DHCP option left out: reply full"
            );
        }
    }
    let rank = |code: u8| -> usize {
        if code == u8::from(OptionCode::MessageType) {
            return 0;
        }
        match requested.iter().position(|c| *c == code) {
            Some(p) => 1 + p,
            None if is_protocol(code) => 1 + requested.len(),
            None => 2 + requested.len(),
        }
    };
    let mut order: Vec<usize> = (0..encoded.len()).filter(|i| keep[*i]).collect();
    order.sort_by_key(|i| rank(encoded[*i].0)); // stable: ties keep importance order
    let mut out: Vec<u8> = order
        .iter()
        .flat_map(|i| encoded[*i].1.iter().copied())
        .collect();
    out.push(u8::from(OptionCode::End));
    let min_opts = MIN_REPLY_LEN - FIXED_LEN;
    if out.len() < min_opts {
        out.resize(min_opts, 0);
    }
    out
}
