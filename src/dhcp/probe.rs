//! The DHCP probe: a client that runs DISCOVER/OFFER/REQUEST/ACK on one interface the
//! way the VM would, configures nothing, and reports every option received, decoded,
//! with round-trip times. Speaks from UDP port 68 bound to the interface, with the
//! broadcast flag set so that the server's replies reach an interface without an address.

use crate::dhcp::describe::{DescribedOption, describe_all};
use crate::dhcp::server::{CLIENT_PORT, SERVER_PORT};
use crate::dhcp::socket::{send_and_await, udp_on_device};
use crate::dhcp::v4::{client_message, decode};
use crate::net::MacAddr;
use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Encodable, Encoder};
use serde::{Deserialize, Serialize};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

/// What to probe, with DHCP or DHCPv6 ([`crate::dhcp::v6::probe::probe_v6`]).
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    pub interface: String,
    /// The client MAC to ask for (the VM's; DHCPv6 makes the client's DUID-LL from it);
    /// the interface's own MAC is not used.
    pub mac: MacAddr,
    /// How long to wait for each reply.
    pub timeout: Duration,
}

/// One reply received.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeReply {
    /// OFFER, ACK or NAK.
    pub message_type: String,
    pub from: SocketAddr,
    /// Microseconds from sending the request to receiving this reply.
    pub rtt_us: u64,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub broadcast_flag: bool,
    pub size: usize,
    /// In wire order.
    pub options: Vec<DescribedOption>,
}

/// The whole exchange.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeReport {
    pub interface: String,
    pub mac: MacAddr,
    pub offer: ProbeReply,
    pub ack: ProbeReply,
}

/// A probe that did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("DHCP probe on {interface}: {source}")]
    Socket {
        interface: String,
        source: io::Error,
    },
    #[error(
        "DHCP probe on {interface}: no {waiting_for} within {timeout:?} (is a server answering MAC {mac}?)"
    )]
    Timeout {
        interface: String,
        mac: MacAddr,
        waiting_for: &'static str,
        timeout: Duration,
    },
    #[error("DHCP probe on {interface}: OFFER without a server identifier")]
    NoServerId { interface: String },
    #[error("DHCP probe on {interface}: cannot encode {what}: {detail}")]
    Encode {
        interface: String,
        what: &'static str,
        detail: String,
    },
}

/// The options a probe asks for: everything the server can give.
const REQUESTED: [OptionCode; 13] = [
    OptionCode::SubnetMask,
    OptionCode::Router,
    OptionCode::DomainNameServer,
    OptionCode::Hostname,
    OptionCode::DomainName,
    OptionCode::InterfaceMtu,
    OptionCode::NtpServers,
    OptionCode::DomainSearch,
    OptionCode::ClasslessStaticRoute,
    OptionCode::TFTPServerName,
    OptionCode::BootfileName,
    OptionCode::Renewal,
    OptionCode::Rebinding,
];

/// Run DISCOVER/OFFER/REQUEST/ACK on `opts.interface` in the current network namespace.
pub async fn probe(opts: &ProbeOptions) -> Result<ProbeReport, ProbeError> {
    let sock_err = |source| ProbeError::Socket {
        interface: opts.interface.clone(),
        source,
    };
    let socket = tokio::net::UdpSocket::from_std(
        udp_on_device(&opts.interface, CLIENT_PORT).map_err(sock_err)?,
    )
    .map_err(sock_err)?;
    let xid: u32 = rand::random();
    let mut discover = client_message(opts.mac, xid, MessageType::Discover);
    discover
        .opts_mut()
        .insert(DhcpOption::ParameterRequestList(REQUESTED.to_vec()));
    let offer = exchange(&socket, opts, sock_err, &discover, "OFFER").await?;
    let server = match offer.0.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => *s,
        _ => {
            return Err(ProbeError::NoServerId {
                interface: opts.interface.clone(),
            });
        }
    };
    let mut request = client_message(opts.mac, xid, MessageType::Request);
    request
        .opts_mut()
        .insert(DhcpOption::ParameterRequestList(REQUESTED.to_vec()));
    request
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress(offer.0.yiaddr()));
    request
        .opts_mut()
        .insert(DhcpOption::ServerIdentifier(server));
    let ack = exchange(&socket, opts, sock_err, &request, "ACK or NAK").await?;
    Ok(ProbeReport {
        interface: opts.interface.clone(),
        mac: opts.mac,
        offer: offer.1,
        ack: ack.1,
    })
}

/// Send `msg` broadcast and wait for the reply to its xid; `sock_err` names a failed
/// send or receive.
async fn exchange(
    socket: &tokio::net::UdpSocket,
    opts: &ProbeOptions,
    sock_err: impl Fn(io::Error) -> ProbeError,
    msg: &Message,
    waiting_for: &'static str,
) -> Result<(Message, ProbeReply), ProbeError> {
    let mut out = Vec::new();
    msg.encode(&mut Encoder::new(&mut out))
        .map_err(|e| ProbeError::Encode {
            interface: opts.interface.clone(),
            what: waiting_for,
            detail: e.to_string(),
        })?;
    let to = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::BROADCAST, SERVER_PORT));
    let answer = send_and_await(socket, &out, to, opts.timeout, |raw, from, rtt| {
        let reply =
            decode(raw).filter(|r| r.opcode() == Opcode::BootReply && r.xid() == msg.xid())?;
        let message_type = match reply.opts().msg_type() {
            Some(t @ (MessageType::Offer | MessageType::Ack | MessageType::Nak)) => {
                format!("{t:?}").to_uppercase()
            }
            _ => return None,
        };
        let described = ProbeReply {
            message_type,
            from,
            rtt_us: u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX),
            yiaddr: reply.yiaddr(),
            siaddr: reply.siaddr(),
            broadcast_flag: reply.flags().broadcast(),
            size: raw.len(),
            options: describe_all(&reply, raw),
        };
        Some((reply, described))
    })
    .await
    .map_err(sock_err)?;
    answer.ok_or_else(|| ProbeError::Timeout {
        interface: opts.interface.clone(),
        mac: opts.mac,
        waiting_for,
        timeout: opts.timeout,
    })
}

impl std::fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "DHCP probe on {} as {}", self.interface, self.mac)?;
        for r in [&self.offer, &self.ack] {
            writeln!(
                f,
                "\n{} from {} in {} µs ({} bytes): yiaddr {}{}",
                r.message_type,
                r.from,
                r.rtt_us,
                r.size,
                r.yiaddr,
                if r.broadcast_flag { ", broadcast" } else { "" }
            )?;
            for o in &r.options {
                writeln!(f, "  {:>3} {:<24} {}", o.code, o.name, o.value)?;
            }
        }
        Ok(())
    }
}
