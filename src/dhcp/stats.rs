//! Counters and the current lease, as the control API returns them. [`DhcpStats`] is
//! plain serializable data; [`StatsHandle`] shares it between the serving task and
//! readers. Recording an outcome is a pure function of the outcome and the time.

use crate::dhcp::config::DhcpConfig;
use crate::dhcp::v4::{
    ClientSeen, Decision, DropReason, Handled, LeaseEvent, ReplyKind, RequestKind,
};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

/// Requests received, by message type.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounters {
    pub discover: u64,
    pub request: u64,
    pub decline: u64,
    pub release: u64,
    pub inform: u64,
    pub other: u64,
}

/// Replies sent, by message type.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyCounters {
    pub offer: u64,
    pub ack: u64,
    pub nak: u64,
    /// Replies the socket could not send.
    pub send_errors: u64,
}

/// Packets dropped, by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DropCounters {
    pub malformed: u64,
    pub not_boot_request: u64,
    pub not_ethernet: u64,
    pub foreign_client: u64,
    pub no_message_type: u64,
    pub unsupported_type: u64,
    pub request_without_address: u64,
    pub other_server_chosen: u64,
    pub inform_without_address: u64,
    pub encode_failed: u64,
    pub reply_too_large: u64,
}

impl DropCounters {
    fn bump(&mut self, r: DropReason) {
        let c = match r {
            DropReason::Malformed => &mut self.malformed,
            DropReason::NotBootRequest => &mut self.not_boot_request,
            DropReason::NotEthernet => &mut self.not_ethernet,
            DropReason::ForeignClient => &mut self.foreign_client,
            DropReason::NoMessageType => &mut self.no_message_type,
            DropReason::UnsupportedType => &mut self.unsupported_type,
            DropReason::RequestWithoutAddress => &mut self.request_without_address,
            DropReason::OtherServerChosen => &mut self.other_server_chosen,
            DropReason::InformWithoutAddress => &mut self.inform_without_address,
            DropReason::EncodeFailed => &mut self.encode_failed,
            DropReason::ReplyTooLarge => &mut self.reply_too_large,
        };
        *c += 1;
    }
}

/// Where the VM's lease stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    /// Nothing asked yet.
    #[default]
    None,
    Offered,
    Bound,
    Released,
    Declined,
}

/// The VM's lease: always the same address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DhcpLease {
    pub mac: crate::net::MacAddr,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub lease_secs: u32,
    pub state: LeaseState,
    /// Unix seconds of the last ACK.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bound_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// The last client heard from, answered or not: what the DHCP server saw of it
/// ([`ClientSeen`]; the DHCPv6 server's own for it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastClient<S = ClientSeen> {
    #[serde(flatten)]
    pub seen: S,
    /// Unix seconds.
    pub at: u64,
    /// False when the packet was dropped (e.g. another MAC).
    pub answered: bool,
}

/// Everything the control API reports about one DHCP server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DhcpStats {
    pub interface: String,
    pub bridge: String,
    pub server_ip: Ipv4Addr,
    pub lease: DhcpLease,
    pub requests: RequestCounters,
    pub replies: ReplyCounters,
    pub drops: DropCounters,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_client: Option<LastClient>,
    /// Search domains left out of option 119, with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped_search: Vec<crate::dhcp::config::DroppedSearchDomain>,
}

impl DhcpStats {
    /// Zero counters for the server described by `config`.
    pub fn new(config: &DhcpConfig) -> Self {
        DhcpStats {
            interface: config.interface.clone(),
            bridge: config.bridge.clone(),
            server_ip: config.server_ip,
            lease: DhcpLease {
                mac: config.client_mac,
                ip: config.client_ip,
                prefix: config.prefix,
                lease_secs: config.lease_secs,
                state: LeaseState::None,
                bound_at: None,
                expires_at: None,
            },
            requests: RequestCounters::default(),
            replies: ReplyCounters::default(),
            drops: DropCounters::default(),
            last_client: None,
            dropped_search: config.dropped_search.clone(),
        }
    }

    /// Count one handled packet at unix time `now`.
    pub fn record(&mut self, h: &Handled, now: u64) {
        if let Some(seen) = &h.client {
            let r = &mut self.requests;
            let c = match seen.kind {
                RequestKind::Discover => &mut r.discover,
                RequestKind::Request => &mut r.request,
                RequestKind::Decline => &mut r.decline,
                RequestKind::Release => &mut r.release,
                RequestKind::Inform => &mut r.inform,
                RequestKind::Other => &mut r.other,
            };
            *c += 1;
            self.last_client = Some(LastClient {
                seen: seen.clone(),
                at: now,
                answered: !matches!(h.decision, Decision::Drop(_)),
            });
        }
        match &h.decision {
            Decision::Drop(reason) => self.drops.bump(*reason),
            Decision::Event(LeaseEvent::Released) => self.lease.state = LeaseState::Released,
            Decision::Event(LeaseEvent::Declined) => self.lease.state = LeaseState::Declined,
            Decision::Reply(reply) => match reply.kind {
                ReplyKind::Offer => {
                    self.replies.offer += 1;
                    if self.lease.state != LeaseState::Bound {
                        self.lease.state = LeaseState::Offered;
                    }
                }
                ReplyKind::Ack => {
                    self.replies.ack += 1;
                    // An ACK to INFORM carries no lease (yiaddr 0).
                    if reply.bytes.get(16..20) != Some(&[0, 0, 0, 0][..]) {
                        self.lease.state = LeaseState::Bound;
                        self.lease.bound_at = Some(now);
                        self.lease.expires_at = Some(now + u64::from(self.lease.lease_secs));
                    }
                }
                ReplyKind::Nak => self.replies.nak += 1,
            },
        }
    }
}

/// Unix seconds now: the time stamps the servers' stats record (0 on a clock before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A shared, cheaply cloned handle on a server's counters: [`DhcpStats`] by default, the
/// DHCPv6 server's and the router advertisements' too. Readers may wait for a condition
/// on them ([`StatsHandle::wait_until`]): every update wakes the waiters.
#[derive(Clone, Debug, Default)]
pub struct StatsHandle<T = DhcpStats> {
    stats: Arc<Mutex<T>>,
    updated: Arc<tokio::sync::Notify>,
}

impl<T: Clone> StatsHandle<T> {
    pub fn new(stats: T) -> Self {
        StatsHandle {
            stats: Arc::new(Mutex::new(stats)),
            updated: Arc::default(),
        }
    }

    /// A copy of the current counters and lease.
    pub fn snapshot(&self) -> T {
        self.stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Apply `f` to the stats (short: the server holds the lock per packet).
    pub fn update(&self, f: impl FnOnce(&mut T)) {
        f(&mut self.stats.lock().unwrap_or_else(PoisonError::into_inner));
        self.updated.notify_waiters();
    }

    /// Return once `done` holds of the stats: checked now and after every update.
    pub async fn wait_until(&self, mut done: impl FnMut(&T) -> bool) {
        loop {
            // Registered before the check: an update between the two still wakes us.
            let updated = self.updated.notified();
            tokio::pin!(updated);
            updated.as_mut().enable();
            if done(&self.stats.lock().unwrap_or_else(PoisonError::into_inner)) {
                return;
            }
            updated.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::v4::{Destination, Reply};

    fn reply(kind: ReplyKind, yiaddr: [u8; 4]) -> Decision {
        let mut bytes = vec![0u8; 300];
        bytes[16..20].copy_from_slice(&yiaddr);
        Decision::Reply(Reply {
            kind,
            to: Destination::Broadcast,
            bytes,
        })
    }

    fn seen(kind: RequestKind) -> Option<ClientSeen> {
        Some(ClientSeen {
            chaddr: "02:00:00:aa:bb:cc".into(),
            kind,
            xid: 1,
            hostname: None,
        })
    }

    #[test]
    fn counts_requests_replies_drops_and_tracks_the_lease() {
        let cfg = crate::dhcp::DhcpConfig::from_facts(
            &crate::dhcp::v4::tests::facts(),
            "k6t-eth0",
            crate::dhcp::DEFAULT_SERVER_IP,
            &Default::default(),
        )
        .unwrap();
        let mut s = DhcpStats::new(&cfg);
        s.record(
            &Handled {
                client: seen(RequestKind::Discover),
                decision: reply(ReplyKind::Offer, [10, 244, 1, 5]),
            },
            100,
        );
        assert_eq!(s.lease.state, LeaseState::Offered);
        s.record(
            &Handled {
                client: seen(RequestKind::Request),
                decision: reply(ReplyKind::Ack, [10, 244, 1, 5]),
            },
            101,
        );
        assert_eq!(
            (s.lease.state, s.lease.bound_at, s.lease.expires_at),
            (
                LeaseState::Bound,
                Some(101),
                Some(101 + u64::from(cfg.lease_secs))
            )
        );
        s.record(
            &Handled {
                client: seen(RequestKind::Inform),
                decision: reply(ReplyKind::Ack, [0; 4]),
            },
            150,
        );
        assert_eq!(s.lease.bound_at, Some(101), "an INFORM ACK is no new lease");
        s.record(
            &Handled {
                client: None,
                decision: Decision::Drop(DropReason::Malformed),
            },
            160,
        );
        s.record(
            &Handled {
                client: seen(RequestKind::Release),
                decision: Decision::Event(LeaseEvent::Released),
            },
            170,
        );
        assert_eq!(s.lease.state, LeaseState::Released);
        assert_eq!(
            (
                s.requests.discover,
                s.requests.request,
                s.requests.inform,
                s.requests.release
            ),
            (1, 1, 1, 1)
        );
        assert_eq!(
            (s.replies.offer, s.replies.ack, s.drops.malformed),
            (1, 2, 1)
        );
        assert_eq!(
            s.last_client.as_ref().map(|l| (l.at, l.answered)),
            Some((170, true))
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["lease"]["state"], "released");
        assert_eq!(json["drops"]["foreignClient"], 0);
        assert_eq!(json["lastClient"]["chaddr"], "02:00:00:aa:bb:cc");
    }

    #[tokio::test]
    async fn wait_until_returns_on_the_update_that_makes_it_true() {
        let h = StatsHandle::new(0u32);
        let waiter = tokio::spawn({
            let h = h.clone();
            async move { h.wait_until(|n| *n >= 2).await }
        });
        h.update(|n| *n = 1);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "1 is not enough");
        h.update(|n| *n = 2);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the waiter did not wake on the update")
            .unwrap();
    }
}
