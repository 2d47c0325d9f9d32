//! Single-client DHCPv4 server (answers the VM's MAC only) and the probe client used by
//! `vmpodctl dhcp probe`.
//!
//! Owns: the DHCP configuration derived from the cached [`crate::net::InterfaceFacts`]
//! ([`config`]), the pure protocol core ([`v4`]: packet in, decision out), the socket
//! layer ([`server`], [`socket`]), the counters ([`stats`]) and the probe ([`probe`]).
//! Must not touch: links, addresses, routes (that is [`crate::net`]); it only reads
//! facts and binds sockets. DHCPv6 and router advertisements slot in beside [`v4`] as
//! `v6` and `ra`, with the same shape: a pure `handle(&config, &packet)`, sent by the
//! socket layer and counted in [`stats`].

pub mod config;
pub mod describe;
pub mod probe;
pub mod ra;
pub mod server;
pub mod socket;
pub mod stats;
pub mod v4;
pub mod v6;

pub use config::{DEFAULT_LEASE_SECS, DEFAULT_SERVER_IP, DhcpConfig, DhcpConfigError, DhcpExtras};
pub use probe::{ProbeError, ProbeReport, probe};
pub use server::{DhcpServer, DhcpServerError};
pub use stats::{DhcpLease, DhcpStats, StatsHandle};
