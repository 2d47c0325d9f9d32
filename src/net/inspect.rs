//! A read-only view of a pod's network for people and the control API: links,
//! addresses, routes, bridges with their ports, taps, and the cached facts. Changes
//! nothing.

use super::antispoof::AntiSpoofReport;
use super::cache::{self, CachedInterface};
use super::discover::with_handle;
use super::error::NetError;
use super::facts::IpCidr;
use super::state::{LinkState, NetSnapshot, RouteState, TunState, snapshot};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One link with its addresses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkView {
    #[serde(flatten)]
    pub link: LinkState,
    /// The bridge it is a port of, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_name: Option<String>,
    pub addresses: Vec<IpCidr>,
}

/// A bridge and its ports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeView {
    pub name: String,
    pub ports: Vec<String>,
}

/// A tap (or tun) and how it was made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapView {
    pub name: String,
    #[serde(flatten)]
    pub tun: TunState,
}

/// A route with its outgoing link by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteView {
    #[serde(flatten)]
    pub route: RouteState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
}

/// Everything `vmpodctl net inspect` shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inspection {
    pub netns: String,
    pub links: Vec<LinkView>,
    pub routes: Vec<RouteView>,
    pub bridges: Vec<BridgeView>,
    pub taps: Vec<TapView>,
    pub cached: Vec<CachedInterface>,
    /// The anti-spoofing tables in the namespace and their drop counters.
    #[serde(default)]
    pub anti_spoofing: Vec<AntiSpoofReport>,
}

/// Arrange a snapshot and the cache for reading. Pure.
pub fn inspection(
    netns: String,
    snap: &NetSnapshot,
    cached: Vec<CachedInterface>,
    anti_spoofing: Vec<AntiSpoofReport>,
) -> Inspection {
    let name = |i: Option<u32>| i.and_then(|i| snap.link_name(i)).map(str::to_owned);
    let links = snap
        .links
        .iter()
        .map(|l| LinkView {
            link: l.clone(),
            master_name: name(l.master),
            addresses: snap.addresses_of(l.index).map(|a| a.address).collect(),
        })
        .collect();
    let bridges = snap
        .links
        .iter()
        .filter(|l| l.kind.as_deref() == Some("bridge"))
        .map(|b| BridgeView {
            name: b.name.clone(),
            ports: snap.ports_of(b.index).map(|p| p.name.clone()).collect(),
        })
        .collect();
    let taps = snap
        .links
        .iter()
        .filter_map(|l| {
            Some(TapView {
                name: l.name.clone(),
                tun: l.tun.clone()?,
            })
        })
        .collect();
    let routes = snap
        .routes
        .iter()
        .map(|r| RouteView {
            route: r.clone(),
            dev: name(r.oif),
        })
        .collect();
    Inspection {
        netns,
        links,
        routes,
        bridges,
        taps,
        cached,
        anti_spoofing,
    }
}

/// Inspect `netns` (the current namespace when `None`) and the cache in `state_dir`.
pub fn inspect(netns: Option<&Path>, state_dir: &Path) -> Result<Inspection, NetError> {
    let cached = cache::load_all(state_dir)?;
    let snap = with_handle(netns, |h| async move { snapshot(&h).await })?;
    let anti_spoofing =
        super::netns::run_in(netns, AntiSpoofReport::read_all).map_err(|source| {
            NetError::Netns {
                netns: super::discover::netns_label(netns),
                source,
            }
        })?;
    Ok(inspection(
        super::discover::netns_label(netns),
        &snap,
        cached,
        anti_spoofing,
    ))
}
