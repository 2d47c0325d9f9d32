//! [`DhcpConfig`]: everything the server tells the VM, built once from the cached
//! [`InterfaceFacts`] by a pure constructor. Invalid search domains are left out with a
//! warning here, so nothing later can fail on them.

use crate::net::{CachedInterface, InterfaceFacts, IpCidr};
use dhcproto::Name;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr};

/// The bridge's link-local address the server speaks from, unless told otherwise: the
/// one the net phase puts on the bridge.
pub const DEFAULT_SERVER_IP: Ipv4Addr = crate::net::plan::DEFAULT_BRIDGE_ADDRESS;

/// The lease the VM gets: 30 days. The address never changes (it is the pod's), so a
/// renewal carries no news; a finite lease (not "infinite", 0xffffffff) still makes the
/// guest check in now and then and avoids clients that mishandle infinite leases.
pub const DEFAULT_LEASE_SECS: u32 = 30 * 24 * 3600;

/// RFC 1035 limits, which RFC 3397 search domains obey.
const MAX_LABEL_LEN: usize = 63;
const MAX_NAME_LEN: usize = 255;

/// Per-interface extras, from KubeVirt's `interfaces[].dhcpOptions` as validation read
/// them (`TryFrom<&api::DhcpOptions>`): typed, so the server does not check them again.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DhcpExtras {
    /// Option 67.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_file_name: Option<String>,
    /// Option 66.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tftp_server_name: Option<String>,
    /// Option 42.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ntp_servers: Vec<Ipv4Addr>,
    /// Site-specific options 224-254, the value sent as its bytes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub private_options: Vec<PrivateOption>,
}

/// One private DHCP option: the code is in 224-254 by construction ([`PrivateOption::new`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrivateOption {
    option: u8,
    value: String,
}

impl PrivateOption {
    /// The codes RFC 2132 leaves to sites.
    pub const CODES: std::ops::RangeInclusive<u8> = 224..=254;

    /// The option `code` with `value`, or `None` when `code` is not in [`Self::CODES`].
    pub fn new(code: i64, value: impl Into<String>) -> Option<Self> {
        let option = u8::try_from(code)
            .ok()
            .filter(|c| Self::CODES.contains(c))?;
        Some(PrivateOption {
            option,
            value: value.into(),
        })
    }

    pub fn option(&self) -> u8 {
        self.option
    }

    pub fn value(&self) -> &str {
        &self.value
    }
}

/// A classless static route for option 121. `gateway` 0.0.0.0 means on-link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticRoute {
    pub destination: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
}

/// A search domain from resolv.conf that cannot go into option 119, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedSearchDomain {
    pub domain: String,
    pub reason: String,
}

/// What the server answers, for one VM interface. Built by [`DhcpConfig::from_facts`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DhcpConfig {
    /// The pod interface these facts came from (e.g. `eth0`), for logs and stats.
    pub interface: String,
    /// The bridge the server binds to (e.g. `k6t-eth0`).
    pub bridge: String,
    /// Server identifier (option 54) and source address.
    pub server_ip: Ipv4Addr,
    /// The only client answered: the VM's MAC (the pod's original MAC unless the VMI
    /// sets `macAddress`).
    pub client_mac: crate::net::MacAddr,
    pub client_ip: Ipv4Addr,
    pub prefix: u8,
    /// Option 3. `None` when the pod has no IPv4 default route.
    pub router: Option<Ipv4Addr>,
    /// Option 121, in wire order: on-link host route to an off-subnet gateway first,
    /// the default route last.
    pub routes: Vec<StaticRoute>,
    pub dns: Vec<Ipv4Addr>,
    /// Valid search domains, lower case, in resolv.conf order (option 119).
    pub search: Vec<String>,
    /// Option 15: the first search domain.
    pub domain_name: Option<String>,
    pub hostname: Option<String>,
    pub mtu: u16,
    pub lease_secs: u32,
    pub ntp_servers: Vec<Ipv4Addr>,
    pub tftp_server_name: Option<String>,
    pub boot_file_name: Option<String>,
    pub private_options: Vec<PrivateOption>,
    /// Search domains left out, reported once at startup and in the stats.
    pub dropped_search: Vec<DroppedSearchDomain>,
}

/// Facts or extras that cannot become a DHCP configuration.
#[derive(Debug, thiserror::Error)]
pub enum DhcpConfigError {
    /// The pod's IPv4 address is what DHCP serves (or NATs behind, with masquerade).
    #[error(transparent)]
    NoIpv4(#[from] crate::net::NoIpv4),
    #[error("interface {interface}: MTU {mtu} does not fit DHCP option 26 (16 bits)")]
    Mtu { interface: String, mtu: u32 },
}

impl DhcpConfig {
    /// The configuration for the VM behind `bridge`, from the pod's cached facts.
    /// Pure: invalid search domains are dropped into `dropped_search` (the caller logs them).
    pub fn from_facts(
        facts: &InterfaceFacts,
        bridge: &str,
        server_ip: Ipv4Addr,
        extras: &DhcpExtras,
    ) -> Result<Self, DhcpConfigError> {
        let interface = facts.interface.clone();
        let ipv4 = facts.pod_ipv4()?;
        let (client_ip, cidr) = (ipv4.addr(), IpCidr::from(ipnet::IpNet::V4(ipv4)));
        let mtu = u16::try_from(facts.mtu).map_err(|_| DhcpConfigError::Mtu {
            interface: interface.clone(),
            mtu: facts.mtu,
        })?;
        let router = facts.gateway4();
        let (search, dropped_search) = valid_search_domains(&facts.search);
        let hostname = Some(facts.hostname.trim().to_owned()).filter(|h| !h.is_empty());
        Ok(DhcpConfig {
            bridge: bridge.to_owned(),
            server_ip,
            client_mac: facts.mac,
            client_ip,
            prefix: cidr.prefix,
            router,
            routes: static_routes(cidr, router, &facts.routes),
            dns: facts.dns4(),
            domain_name: search.first().cloned(),
            search,
            hostname,
            mtu,
            lease_secs: DEFAULT_LEASE_SECS,
            ntp_servers: extras.ntp_servers.clone(),
            tftp_server_name: extras.tftp_server_name.clone(),
            boot_file_name: extras.boot_file_name.clone(),
            private_options: extras.private_options.clone(),
            dropped_search,
            interface: facts.interface.clone(),
        })
    }

    /// The configuration for an interface the net phase rewired: its cached facts, the
    /// bridge it built, the address it gave that bridge and the VM's MAC it recorded.
    /// With the masquerade binding, the VM's private address, prefix and gateway (see
    /// [`crate::net::masquerade::MasqueradeOptions::vm_facts`]).
    pub fn for_cached(
        entry: &CachedInterface,
        extras: &DhcpExtras,
    ) -> Result<Self, DhcpConfigError> {
        let bridge = entry.bridge_name();
        let config = match entry.binding {
            crate::net::Binding::Bridge => {
                Self::from_facts(&entry.facts, &bridge, entry.options.bridge_address, extras)?
            }
            // The VM's private address behind the gateway on the bridge; the pod's DNS,
            // search domains, hostname and MTU.
            crate::net::Binding::Masquerade => {
                let m = &entry.options.masquerade;
                let facts = m.vm_facts(&entry.planned_facts());
                Self::from_facts(&facts, &bridge, m.gateway(), extras)?
            }
        };
        Ok(DhcpConfig {
            client_mac: entry.vm_mac(),
            ..config
        })
    }

    /// The subnet mask for option 1.
    pub fn subnet_mask(&self) -> Ipv4Addr {
        ipnet::Ipv4Net::new(self.client_ip, self.prefix)
            .map_or(Ipv4Addr::BROADCAST, |n| n.netmask())
    }
}

/// Option 121 from the pod's IPv4 routes (RFC 3442). The pod's own subnet is implied
/// by the mask and left out; a gateway outside the subnet (a /32 pod address with
/// Calico's 169.254.1.1) gets an on-link host route first so the routes through it can
/// be installed; the default route comes last.
pub fn static_routes(
    addr: IpCidr,
    router: Option<Ipv4Addr>,
    routes: &[crate::net::Route],
) -> Vec<StaticRoute> {
    let mut out = Vec::new();
    if let Some(gw) = router.filter(|gw| !addr.contains(IpAddr::V4(*gw))) {
        out.push(StaticRoute {
            destination: gw,
            prefix: 32,
            gateway: Ipv4Addr::UNSPECIFIED,
        });
    }
    for r in routes {
        let (IpAddr::V4(dest), prefix) = (r.destination.network(), r.destination.prefix) else {
            continue;
        };
        if r.destination.is_default()
            || (r.destination.network() == addr.network() && prefix == addr.prefix)
        {
            continue;
        }
        let gateway = match r.gateway {
            Some(IpAddr::V4(g)) => g,
            Some(IpAddr::V6(_)) => continue,
            None => Ipv4Addr::UNSPECIFIED,
        };
        let route = StaticRoute {
            destination: dest,
            prefix: prefix.min(32),
            gateway,
        };
        if !out.contains(&route) {
            out.push(route);
        }
    }
    if let Some(gw) = router {
        out.push(StaticRoute {
            destination: Ipv4Addr::UNSPECIFIED,
            prefix: 0,
            gateway: gw,
        });
    }
    out
}

/// Split resolv.conf search domains into those option 119 can carry (lower-cased,
/// trailing dot removed, duplicates dropped) and those left out with the reason.
pub fn valid_search_domains(domains: &[String]) -> (Vec<String>, Vec<DroppedSearchDomain>) {
    let mut ok: Vec<String> = Vec::new();
    let mut dropped = Vec::new();
    for d in domains {
        match check_search_domain(d) {
            Ok(name) if !ok.contains(&name) => ok.push(name),
            Ok(_) => {}
            Err(reason) => dropped.push(DroppedSearchDomain {
                domain: d.clone(),
                reason,
            }),
        }
    }
    // RFC 3397 has no limit on the list, but a list over 255 bytes cannot be searched
    // by resolv.conf (glibc's old limit) and will not fit a small reply: keep the head.
    let mut total = 0usize;
    let mut kept = Vec::new();
    for name in ok {
        total += name.len() + 2;
        if total > MAX_NAME_LEN {
            dropped.push(DroppedSearchDomain {
                reason: format!("search list longer than {MAX_NAME_LEN} bytes"),
                domain: name,
            });
        } else {
            kept.push(name);
        }
    }
    (kept, dropped)
}

/// One search domain as a lower-case DNS name, or why it is not one.
pub fn check_search_domain(domain: &str) -> Result<String, String> {
    let name = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() {
        return Err("empty name".into());
    }
    if name.parse::<IpAddr>().is_ok() {
        return Err("an IP address, not a domain".into());
    }
    if name.len() + 2 > MAX_NAME_LEN {
        return Err(format!("longer than {MAX_NAME_LEN} bytes"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label".into());
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(format!("label {label:?} longer than {MAX_LABEL_LEN} bytes"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "label {label:?} has characters a host name cannot have"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} starts or ends with '-'"));
        }
    }
    if name
        .split('.')
        .next_back()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("all-numeric top-level label".into());
    }
    Name::from_ascii(&name).map_err(|e| e.to_string())?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cache decides whom the server answers: the VMI's MAC when the net phase
    /// recorded one, else the pod's original MAC; the bridge address comes from there too.
    #[test]
    fn for_cached_answers_the_mac_the_cache_recorded() {
        let mut entry = crate::net::CachedInterface {
            facts: crate::dhcp::v4::tests::facts(),
            binding: crate::net::Binding::Bridge,
            options: crate::net::PlanOptions::default(),
            original: crate::net::OriginalSettings::default(),
            applied: vec![],
            netns_id: None,
            ipv6_off: None,
        };
        let pod_mac = entry.facts.mac;
        let cfg = DhcpConfig::for_cached(&entry, &DhcpExtras::default()).unwrap();
        assert_eq!((cfg.client_mac, cfg.bridge.as_str()), (pod_mac, "k6t-eth0"));
        let vmi_mac: crate::net::MacAddr = "02:5a:00:00:00:09".parse().unwrap();
        entry.options.vm_mac = Some(vmi_mac);
        entry.options.bridge_address = Ipv4Addr::new(169, 254, 1, 9);
        let json = serde_json::to_string(&entry).unwrap();
        let back: crate::net::CachedInterface = serde_json::from_str(&json).unwrap();
        let cfg = DhcpConfig::for_cached(&back, &DhcpExtras::default()).unwrap();
        assert_eq!(
            (cfg.client_mac, cfg.server_ip, cfg.client_ip),
            (
                vmi_mac,
                Ipv4Addr::new(169, 254, 1, 9),
                Ipv4Addr::new(10, 244, 1, 5)
            )
        );
    }

    /// Masquerade: the VM's private address from the VM network, the gateway on the
    /// bridge as server and router, the pod's DNS, search domains, hostname and MTU,
    /// and a MAC derived from the pod's (the pod keeps its own).
    #[test]
    fn for_cached_masquerade_serves_the_private_network() {
        let mut entry = crate::net::CachedInterface {
            facts: crate::dhcp::v4::tests::facts(),
            binding: crate::net::Binding::Masquerade,
            options: crate::net::PlanOptions::default(),
            original: crate::net::OriginalSettings::default(),
            applied: vec![],
            netns_id: None,
            ipv6_off: None,
        };
        let cfg = DhcpConfig::for_cached(&entry, &DhcpExtras::default()).unwrap();
        let gw = Ipv4Addr::new(10, 0, 2, 1);
        assert_eq!(
            (cfg.client_ip, cfg.prefix, cfg.server_ip, cfg.router),
            (Ipv4Addr::new(10, 0, 2, 2), 24, gw, Some(gw))
        );
        assert!(
            cfg.routes.iter().all(|r| r.gateway == gw),
            "{:?}",
            cfg.routes
        );
        let facts = &entry.facts;
        assert_eq!(u32::from(cfg.mtu), facts.mtu);
        assert_eq!(cfg.hostname.as_deref(), Some(facts.hostname.as_str()));
        assert!(!cfg.dns.is_empty());
        assert_eq!(
            cfg.dns.len(),
            facts.dns.iter().filter(|d| d.is_ipv4()).count()
        );
        assert_eq!(cfg.search.len(), facts.search.len());
        assert_ne!(cfg.client_mac, facts.mac);
        assert!(cfg.client_mac.is_local());
        entry.options.masquerade.vm_network =
            crate::net::IpCidr::new("192.168.100.0".parse().unwrap(), 28);
        let cfg = DhcpConfig::for_cached(&entry, &DhcpExtras::default()).unwrap();
        assert_eq!(
            (cfg.client_ip, cfg.prefix),
            (Ipv4Addr::new(192, 168, 100, 2), 28)
        );
    }

    #[test]
    fn invalid_search_domains_are_dropped_not_fatal() {
        let long_label = format!("{}.com", "a".repeat(64));
        let input: Vec<String> = [
            "Default.SVC.cluster.local.",
            "svc.cluster.local",
            "10.0.0.1",
            long_label.as_str(),
            "bad_-.example.com", // underscore is tolerated, a trailing '-' is not
            "two..dots",
            "svc.cluster.local",
            "corp.example.123",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (ok, dropped) = valid_search_domains(&input);
        assert_eq!(ok, ["default.svc.cluster.local", "svc.cluster.local"]);
        let reasons: Vec<&str> = dropped.iter().map(|d| d.domain.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "10.0.0.1",
                long_label.as_str(),
                "bad_-.example.com",
                "two..dots",
                "corp.example.123"
            ]
        );
    }

    #[test]
    fn a_search_list_over_255_bytes_keeps_its_head() {
        let input: Vec<String> = (0..20)
            .map(|i| format!("namespace{i:02}.svc.cluster.local"))
            .collect();
        let (ok, dropped) = valid_search_domains(&input);
        let total: usize = ok.iter().map(|d| d.len() + 2).sum();
        assert!(total <= 255 && !ok.is_empty(), "{total}");
        assert_eq!(ok[0], "namespace00.svc.cluster.local");
        assert_eq!(ok.len() + dropped.len(), 20);
    }

    #[test]
    fn no_ipv4_address_is_an_error_naming_the_interface() {
        let f = crate::dhcp::v4::tests::facts();
        let mut no_v4 = f.clone();
        no_v4.addresses.retain(|a| a.addr.is_ipv6());
        let e = DhcpConfig::from_facts(
            &no_v4,
            "k6t-eth0",
            DEFAULT_SERVER_IP,
            &DhcpExtras::default(),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "pod interface eth0 has no IPv4 address (found: fd00::5/64)"
        );
    }

    #[test]
    fn on_link_routes_and_an_off_subnet_gateway() {
        let addr = IpCidr::new("10.244.1.5".parse().unwrap(), 32);
        let routes = vec![
            crate::net::Route {
                destination: IpCidr::new("10.1.0.0".parse().unwrap(), 16),
                gateway: None,
                metric: None,
            },
            crate::net::Route {
                destination: IpCidr::new("0.0.0.0".parse().unwrap(), 0),
                gateway: Some("169.254.1.1".parse().unwrap()),
                metric: None,
            },
        ];
        let gw: Ipv4Addr = "169.254.1.1".parse().unwrap();
        let r = static_routes(addr, Some(gw), &routes);
        let any = Ipv4Addr::UNSPECIFIED;
        assert_eq!(
            r,
            [
                StaticRoute {
                    destination: gw,
                    prefix: 32,
                    gateway: any
                },
                StaticRoute {
                    destination: "10.1.0.0".parse().unwrap(),
                    prefix: 16,
                    gateway: any
                },
                StaticRoute {
                    destination: any,
                    prefix: 0,
                    gateway: gw
                },
            ]
        );
    }
}
