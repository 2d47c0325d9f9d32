//! The DHCPv6 probe used by `vmpodctl dhcp probe --v6` and the benchmark: Solicit ->
//! Advertise -> Request -> Reply from one interface, as a client with the DUID-LL of a
//! given MAC, timing each answer. Configures nothing. The interface needs a usable
//! link-local address (the client speaks from it).

use super::{ALL_SERVERS, CLIENT_PORT, SERVER_PORT, duid_ll};
use crate::dhcp::describe::hex;
use crate::dhcp::probe::ProbeOptions;
use crate::dhcp::socket::{send_and_await, udp6_on_device};
use crate::net::MacAddr;
use dhcproto::v6::{DhcpOption, DhcpOptions, IANA, Message, MessageType, ORO, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::Duration;

/// One answer, decoded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeV6Answer {
    pub message_type: String,
    pub from: Ipv6Addr,
    /// From sending the request to receiving this answer.
    pub rtt_us: u64,
    /// The addresses in IA_NA with (preferred, valid) lifetimes.
    pub addresses: Vec<(Ipv6Addr, u32, u32)>,
    pub dns: Vec<Ipv6Addr>,
    pub search: Vec<String>,
    pub server_duid: String,
}

/// Both answers of a probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeV6Report {
    pub interface: String,
    pub mac: MacAddr,
    pub advertise: ProbeV6Answer,
    pub reply: ProbeV6Answer,
}

/// Why a probe got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ProbeV6Error {
    #[error("DHCPv6 probe on {interface}: {source}")]
    Socket {
        interface: String,
        source: io::Error,
    },
    #[error(
        "DHCPv6 probe on {interface}: no {waiting_for} within {timeout:?} (is a server answering MAC {mac}? does {interface} have a usable link-local address?)"
    )]
    Timeout {
        interface: String,
        mac: MacAddr,
        waiting_for: &'static str,
        timeout: Duration,
    },
    #[error("DHCPv6 probe on {interface}: cannot encode {what}: {detail}")]
    Encode {
        interface: String,
        what: &'static str,
        detail: String,
    },
}

/// Run Solicit/Advertise/Request/Reply on `opts.interface` in the current namespace.
pub async fn probe_v6(opts: &ProbeOptions) -> Result<ProbeV6Report, ProbeV6Error> {
    let sock_err = |source| ProbeV6Error::Socket {
        interface: opts.interface.clone(),
        source,
    };
    let (std_socket, ifindex) = udp6_on_device(&opts.interface, CLIENT_PORT).map_err(sock_err)?;
    let socket = tokio::net::UdpSocket::from_std(std_socket).map_err(sock_err)?;
    let to = SocketAddrV6::new(ALL_SERVERS, SERVER_PORT, 0, ifindex);
    let xid: [u8; 3] = rand::random();
    let client_id = duid_ll(opts.mac);
    let message = |t: MessageType, server: Option<&[u8]>| {
        let mut m = Message::new_with_id(t, xid);
        let o = m.opts_mut();
        o.insert(DhcpOption::ClientId(client_id.clone()));
        if let Some(s) = server {
            o.insert(DhcpOption::ServerId(s.to_vec()));
        }
        o.insert(DhcpOption::ElapsedTime(0));
        o.insert(DhcpOption::ORO(ORO {
            opts: vec![OptionCode::DomainNameServers, OptionCode::DomainSearchList],
        }));
        o.insert(DhcpOption::IANA(IANA {
            id: 1,
            t1: 0,
            t2: 0,
            opts: DhcpOptions::new(),
        }));
        m
    };
    let (advertise, server_id) = exchange(
        &socket,
        opts,
        sock_err,
        to,
        &message(MessageType::Solicit, None),
        MessageType::Advertise,
    )
    .await?;
    let (reply, _) = exchange(
        &socket,
        opts,
        sock_err,
        to,
        &message(MessageType::Request, Some(&server_id)),
        MessageType::Reply,
    )
    .await?;
    Ok(ProbeV6Report {
        interface: opts.interface.clone(),
        mac: opts.mac,
        advertise,
        reply,
    })
}

/// Send `msg`, wait for an answer of type `want` with the same transaction ID; `sock_err`
/// names a failed send or receive.
async fn exchange(
    socket: &tokio::net::UdpSocket,
    opts: &ProbeOptions,
    sock_err: impl Fn(io::Error) -> ProbeV6Error,
    to: SocketAddrV6,
    msg: &Message,
    want: MessageType,
) -> Result<(ProbeV6Answer, Vec<u8>), ProbeV6Error> {
    let mut bytes = Vec::new();
    msg.encode(&mut Encoder::new(&mut bytes))
        .map_err(|e| ProbeV6Error::Encode {
            interface: opts.interface.clone(),
            what: "the request",
            detail: e.to_string(),
        })?;
    let answer = send_and_await(socket, &bytes, to.into(), opts.timeout, |raw, from, rtt| {
        let answer = Message::decode(&mut Decoder::new(raw)).ok()?;
        let std::net::SocketAddr::V6(from) = from else {
            return None;
        };
        (answer.xid() == msg.xid() && answer.msg_type() == want).then(|| {
            let rtt_us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
            describe(&answer, *from.ip(), rtt_us)
        })
    })
    .await
    .map_err(sock_err)?;
    answer.ok_or_else(|| ProbeV6Error::Timeout {
        interface: opts.interface.clone(),
        mac: opts.mac,
        waiting_for: if want == MessageType::Advertise {
            "ADVERTISE"
        } else {
            "REPLY"
        },
        timeout: opts.timeout,
    })
}

fn describe(m: &Message, from: Ipv6Addr, rtt_us: u64) -> (ProbeV6Answer, Vec<u8>) {
    let mut a = ProbeV6Answer {
        message_type: format!("{:?}", m.msg_type()),
        from,
        rtt_us,
        addresses: Vec::new(),
        dns: Vec::new(),
        search: Vec::new(),
        server_duid: String::new(),
    };
    let mut server_id = Vec::new();
    for o in m.opts().iter() {
        match o {
            DhcpOption::ServerId(id) => {
                a.server_duid = hex(id);
                server_id.clone_from(id);
            }
            DhcpOption::IANA(ia) => {
                for o in ia.opts.iter() {
                    if let DhcpOption::IAAddr(x) = o {
                        a.addresses.push((x.addr, x.preferred_life, x.valid_life));
                    }
                }
            }
            DhcpOption::DomainNameServers(d) => a.dns.clone_from(d),
            DhcpOption::DomainSearchList(names) => {
                a.search = names.iter().map(ToString::to_string).collect();
            }
            _ => {}
        }
    }
    (a, server_id)
}

impl fmt::Display for ProbeV6Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "DHCPv6 probe on {} as DUID-LL of {}",
            self.interface, self.mac
        )?;
        for a in [&self.advertise, &self.reply] {
            writeln!(
                f,
                "{} from {} in {} µs (server DUID {})",
                a.message_type.to_uppercase(),
                a.from,
                a.rtt_us,
                a.server_duid
            )?;
            for (addr, preferred, valid) in &a.addresses {
                writeln!(f, "  address {addr} preferred {preferred}s valid {valid}s")?;
            }
            if !a.dns.is_empty() {
                let dns: Vec<String> = a.dns.iter().map(ToString::to_string).collect();
                writeln!(f, "  dns {}", dns.join(" "))?;
            }
            if !a.search.is_empty() {
                writeln!(f, "  search {}", a.search.join(" "))?;
            }
        }
        Ok(())
    }
}
