//! IPv6 for one VM interface as the launcher runs it: the DHCPv6 server and the router
//! advertisement sender on the same bridge, from the same [`DhcpV6Config`], reported
//! together ([`Ipv6Report`]). An IPv4-only pod gets neither.

use super::DhcpV6Config;
use super::server::{DhcpV6Server, DhcpV6ServerError, DhcpV6Stats, V6StatsHandle};
use crate::dhcp::ra::{RaError, RaSender, RaStats, RaStatsHandle};
use crate::net::CachedInterface;
use serde::{Deserialize, Serialize};

/// A failure of either part.
#[derive(Debug, thiserror::Error)]
pub enum Ipv6ServiceError {
    #[error(transparent)]
    Dhcp(#[from] DhcpV6ServerError),
    #[error(transparent)]
    Ra(#[from] RaError),
}

/// What the control API shows of a VM interface's IPv6 side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ipv6Report {
    pub dhcp: DhcpV6Stats,
    pub router_advertisements: RaStats,
}

/// Live counters of both parts.
#[derive(Clone, Debug)]
pub struct Ipv6Handle {
    dhcp: V6StatsHandle,
    ra: RaStatsHandle,
}

impl Ipv6Handle {
    pub fn snapshot(&self) -> Ipv6Report {
        Ipv6Report {
            dhcp: self.dhcp.snapshot(),
            router_advertisements: self.ra.snapshot(),
        }
    }
}

/// The DHCPv6 server and the RA sender, bound and ready to [`run`](Self::run).
pub struct Ipv6Service {
    dhcp: DhcpV6Server,
    ra: RaSender,
}

impl Ipv6Service {
    /// Bind both on the bridge the net phase made for `entry`, inside the pod's network
    /// namespace; `None` when the pod has no IPv6 address.
    pub fn bind_for(entry: &CachedInterface) -> Result<Option<Self>, Ipv6ServiceError> {
        let Some(config) = DhcpV6Config::for_cached(entry) else {
            return Ok(None);
        };
        for d in &config.dropped_search {
            tracing::warn!(interface = %config.interface, domain = %d.domain, reason = %d.reason,
                "search domain left out of DHCPv6 option 24 and the RA's DNSSL");
        }
        let ra = RaSender::bind(&config)?;
        let dhcp = DhcpV6Server::bind(config)?;
        Ok(Some(Ipv6Service { dhcp, ra }))
    }

    pub fn handle(&self) -> Ipv6Handle {
        Ipv6Handle {
            dhcp: self.dhcp.stats(),
            ra: self.ra.stats(),
        }
    }

    /// Serve until the future is dropped or either part fails.
    pub async fn run(self) -> Result<(), Ipv6ServiceError> {
        tokio::select! {
            r = self.dhcp.run() => r?,
            r = self.ra.run() => r?,
        }
        Ok(())
    }
}
