//! The socket layer of the DHCPv6 server: receive on the bridge (UDP 547, group
//! ff02::1:2), let [`super::handle`] decide, send to the client's address on port 546,
//! count. Nothing here decides anything. The counters and the lease live in
//! [`DhcpV6Stats`], shared through [`V6StatsHandle`].

use super::{
    ALL_SERVERS, CLIENT_PORT, ClientSeen, Decision, DhcpV6Config, DropReason, Handled, LeaseEvent,
    ReplyKind, RequestKind, SERVER_PORT,
};
use crate::dhcp::socket::{recv_retrying, udp6_on_device};
use crate::dhcp::stats::{LeaseState, unix_now};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::Arc;
use tracing::{debug, info, warn};

/// A failure of the DHCPv6 server's socket.
#[derive(Debug, thiserror::Error)]
pub enum DhcpV6ServerError {
    #[error("DHCPv6 server for {interface}: cannot open its socket on bridge {bridge}: {source}")]
    Bind {
        interface: String,
        bridge: String,
        source: io::Error,
    },
    #[error("DHCPv6 server for {interface}: socket on bridge {bridge}: {source}")]
    Socket {
        interface: String,
        bridge: String,
        source: io::Error,
    },
}

/// The VM's IPv6 lease: always the same address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DhcpV6Lease {
    pub mac: crate::net::MacAddr,
    pub address: Ipv6Addr,
    pub prefix: u8,
    pub lease_secs: u32,
    pub state: LeaseState,
    /// The client's DUID once it asked, as hex bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duid: Option<String>,
    /// Unix seconds of the last binding reply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bound_at: Option<u64>,
}

/// The last client heard from, answered or not.
pub type LastV6Client = crate::dhcp::stats::LastClient<ClientSeen>;

/// Everything the control API reports about one DHCPv6 server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DhcpV6Stats {
    pub interface: String,
    pub bridge: String,
    /// The server's DUID (DUID-LL of the bridge MAC), as hex bytes.
    pub server_duid: String,
    pub lease: DhcpV6Lease,
    /// Messages received, by type.
    pub requests: BTreeMap<RequestKind, u64>,
    /// Replies sent, by type.
    pub replies: BTreeMap<ReplyKind, u64>,
    /// Messages dropped, by reason.
    pub drops: BTreeMap<DropReason, u64>,
    /// Replies the socket could not send.
    pub send_errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_client: Option<LastV6Client>,
}

impl DhcpV6Stats {
    /// Zero counters for the server described by `config`.
    pub fn new(config: &DhcpV6Config) -> Self {
        DhcpV6Stats {
            interface: config.interface.clone(),
            bridge: config.bridge.clone(),
            server_duid: crate::dhcp::describe::hex(&config.server_duid()),
            lease: DhcpV6Lease {
                mac: config.client_mac,
                address: config.address,
                prefix: config.prefix,
                lease_secs: config.lease_secs,
                state: LeaseState::None,
                duid: None,
                bound_at: None,
            },
            requests: BTreeMap::new(),
            replies: BTreeMap::new(),
            drops: BTreeMap::new(),
            send_errors: 0,
            last_client: None,
        }
    }

    /// Count one outcome of [`super::handle`] at unix time `now`.
    pub fn record(&mut self, handled: &Handled, now: u64) {
        if let Some(kind) = handled.kind {
            *self.requests.entry(kind).or_default() += 1;
        }
        let answered = match &handled.decision {
            Decision::Reply(reply, event) => {
                *self.replies.entry(reply.kind).or_default() += 1;
                let state = match event {
                    Some(LeaseEvent::Offered) if self.lease.state != LeaseState::Bound => {
                        Some(LeaseState::Offered)
                    }
                    Some(LeaseEvent::Offered) | None => None,
                    Some(LeaseEvent::Bound) => {
                        self.lease.bound_at = Some(now);
                        Some(LeaseState::Bound)
                    }
                    Some(LeaseEvent::Released) => Some(LeaseState::Released),
                    Some(LeaseEvent::Declined) => Some(LeaseState::Declined),
                };
                if let Some(s) = state {
                    self.lease.state = s;
                    self.lease.duid = handled.client.as_ref().map(|c| c.duid.clone());
                }
                true
            }
            Decision::Drop(reason) => {
                *self.drops.entry(*reason).or_default() += 1;
                false
            }
        };
        if let Some(seen) = &handled.client {
            self.last_client = Some(LastV6Client {
                seen: seen.clone(),
                at: now,
                answered,
            });
        }
    }
}

/// The live DHCPv6 counters, shared between the serving task and readers.
pub type V6StatsHandle = crate::dhcp::StatsHandle<DhcpV6Stats>;

/// A DHCPv6 server for one VM interface, bound and ready to [`run`](Self::run).
pub struct DhcpV6Server {
    socket: std::net::UdpSocket,
    ifindex: u32,
    config: Arc<DhcpV6Config>,
    stats: V6StatsHandle,
}

impl DhcpV6Server {
    /// Bind UDP [::]:547 on `config.bridge` and join ff02::1:2 there. Call it inside the
    /// pod's network namespace.
    pub fn bind(config: DhcpV6Config) -> Result<Self, DhcpV6ServerError> {
        let err = |source| DhcpV6ServerError::Bind {
            interface: config.interface.clone(),
            bridge: config.bridge.clone(),
            source,
        };
        let (socket, ifindex) = udp6_on_device(&config.bridge, SERVER_PORT).map_err(err)?;
        socket
            .join_multicast_v6(&ALL_SERVERS, ifindex)
            .map_err(|e| {
                err(io::Error::new(
                    e.kind(),
                    format!("join {ALL_SERVERS} on {}: {e}", config.bridge),
                ))
            })?;
        let stats = V6StatsHandle::new(DhcpV6Stats::new(&config));
        Ok(DhcpV6Server {
            socket,
            ifindex,
            config: Arc::new(config),
            stats,
        })
    }

    /// The live counters and lease, readable while the server runs.
    pub fn stats(&self) -> V6StatsHandle {
        self.stats.clone()
    }

    /// Serve until the future is dropped. Needs a tokio runtime with I/O enabled.
    pub async fn run(self) -> Result<(), DhcpV6ServerError> {
        let cfg = self.config;
        let socket = tokio::net::UdpSocket::from_std(self.socket).map_err(|source| {
            DhcpV6ServerError::Socket {
                interface: cfg.interface.clone(),
                bridge: cfg.bridge.clone(),
                source,
            }
        })?;
        info!(interface = %cfg.interface, bridge = %cfg.bridge, mac = %cfg.client_mac,
            address = %cfg.address, prefix = cfg.prefix, "DHCPv6 server listening");
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, from) = recv_retrying(&socket, &mut buf, "DHCPv6", &cfg.interface).await;
            let SocketAddr::V6(from) = from else { continue };
            let handled = super::handle(&cfg, *from.ip(), &buf[..n]);
            let mut send_failed = false;
            match &handled.decision {
                Decision::Reply(reply, event) => {
                    let scope = if from.scope_id() == 0 {
                        self.ifindex
                    } else {
                        from.scope_id()
                    };
                    let to = SocketAddrV6::new(*from.ip(), CLIENT_PORT, 0, scope);
                    if let Err(e) = socket.send_to(&reply.bytes, to).await {
                        warn!(interface = %cfg.interface, %to, error = %e, "DHCPv6 reply not sent");
                        send_failed = true;
                    } else {
                        debug!(interface = %cfg.interface, kind = ?reply.kind, %to, "DHCPv6 reply sent");
                    }
                    match event {
                        Some(LeaseEvent::Declined) => warn!(interface = %cfg.interface,
                            address = %cfg.address, "the VM declined its IPv6 address: something else on the pod network uses it"),
                        Some(LeaseEvent::Released) => info!(interface = %cfg.interface,
                            address = %cfg.address, "the VM released its IPv6 address; it will be offered again"),
                        _ => {}
                    }
                }
                Decision::Drop(reason) => debug!(interface = %cfg.interface, %from, ?reason,
                    client = ?handled.client, "DHCPv6 message dropped"),
            }
            self.stats.update(|s| {
                s.record(&handled, unix_now());
                s.send_errors += u64::from(send_failed);
            });
        }
    }
}
