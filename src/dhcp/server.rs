//! The socket layer of the DHCPv4 server: receive on the bridge, let
//! [`crate::dhcp::v4::handle`] decide, send, count. Nothing here decides anything.

use crate::dhcp::config::DhcpConfig;
use crate::dhcp::socket::{recv_retrying, udp_on_device};
use crate::dhcp::stats::{DhcpStats, StatsHandle, unix_now};
use crate::dhcp::v4::{self, Decision, Destination, LeaseEvent};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use tracing::{debug, info, warn};

/// Server (67) and client (68) ports.
pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;

/// A failure of the server's socket.
#[derive(Debug, thiserror::Error)]
pub enum DhcpServerError {
    #[error("DHCP server for {interface}: cannot open its socket on bridge {bridge}: {source}")]
    Bind {
        interface: String,
        bridge: String,
        source: io::Error,
    },
    #[error("DHCP server for {interface}: socket on bridge {bridge}: {source}")]
    Socket {
        interface: String,
        bridge: String,
        source: io::Error,
    },
}

/// A DHCPv4 server for one VM interface, bound and ready to [`run`](Self::run).
pub struct DhcpServer {
    socket: std::net::UdpSocket,
    config: Arc<DhcpConfig>,
    stats: StatsHandle,
}

impl DhcpServer {
    /// Bind UDP 0.0.0.0:67 on `config.bridge`. Call it inside the pod's network
    /// namespace; the socket stays there wherever it is used afterwards.
    pub fn bind(config: DhcpConfig) -> Result<Self, DhcpServerError> {
        let socket =
            udp_on_device(&config.bridge, SERVER_PORT).map_err(|source| DhcpServerError::Bind {
                interface: config.interface.clone(),
                bridge: config.bridge.clone(),
                source,
            })?;
        for d in &config.dropped_search {
            warn!(interface = %config.interface, domain = %d.domain, reason = %d.reason,
                "search domain left out of DHCP option 119");
        }
        let stats = StatsHandle::new(DhcpStats::new(&config));
        Ok(DhcpServer {
            socket,
            config: Arc::new(config),
            stats,
        })
    }

    /// The live counters and lease, readable while the server runs.
    pub fn stats(&self) -> StatsHandle {
        self.stats.clone()
    }

    /// Serve until the future is dropped. Needs a tokio runtime with I/O enabled.
    pub async fn run(self) -> Result<(), DhcpServerError> {
        let cfg = self.config;
        let err = |source| DhcpServerError::Socket {
            interface: cfg.interface.clone(),
            bridge: cfg.bridge.clone(),
            source,
        };
        let socket = tokio::net::UdpSocket::from_std(self.socket).map_err(err)?;
        info!(interface = %cfg.interface, bridge = %cfg.bridge, server = %cfg.server_ip,
            mac = %cfg.client_mac, ip = %cfg.client_ip, prefix = cfg.prefix, "DHCP server listening");
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, from) = recv_retrying(&socket, &mut buf, "DHCP", &cfg.interface).await;
            let handled = v4::handle(&cfg, &buf[..n]);
            let mut send_failed = false;
            match &handled.decision {
                Decision::Reply(reply) => {
                    let to = socket_address(reply.to);
                    if let Err(e) = socket.send_to(&reply.bytes, to).await {
                        warn!(interface = %cfg.interface, %to, error = %e, "DHCP reply not sent");
                        send_failed = true;
                    } else if reply.kind == v4::ReplyKind::Ack {
                        // One line per lease and renewal: a launcher's log tells "the guest
                        // never asked" from "it got its address" at the default level.
                        info!(interface = %cfg.interface, ip = %cfg.client_ip, %to, "DHCP lease acknowledged");
                    } else {
                        debug!(interface = %cfg.interface, kind = ?reply.kind, %to, len = reply.bytes.len(), "DHCP reply sent");
                    }
                }
                Decision::Event(LeaseEvent::Declined) => warn!(interface = %cfg.interface,
                    ip = %cfg.client_ip, "the VM declined its address: something else on the pod network uses it"),
                Decision::Event(LeaseEvent::Released) => info!(interface = %cfg.interface,
                    ip = %cfg.client_ip, "the VM released its address; it will be offered again"),
                Decision::Drop(reason) => debug!(interface = %cfg.interface, %from, ?reason,
                    client = ?handled.client, "DHCP packet dropped"),
            }
            self.stats.update(|s| {
                s.record(&handled, unix_now());
                s.replies.send_errors += u64::from(send_failed);
            });
        }
    }
}

/// Where a decided reply goes on the wire. A client without an address that did not
/// ask for broadcast would need a static ARP entry for unicast; RFC 2131 4.1 allows
/// broadcasting instead, and every client hears a broadcast, so we broadcast.
pub fn socket_address(to: Destination) -> SocketAddrV4 {
    match to {
        Destination::Client(ip) => SocketAddrV4::new(ip, CLIENT_PORT),
        Destination::Hardware(_) | Destination::Broadcast => {
            SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
        }
    }
}
