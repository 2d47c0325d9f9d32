//! Plain data: what discovery finds and the cache stores. No I/O here.

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An Ethernet MAC address, written `02:00:00:aa:bb:cc`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

/// A MAC address string that is not six colon-separated hex bytes.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a MAC address (want six hex bytes like 02:00:00:aa:bb:cc)")]
pub struct ParseMacError(String);

impl MacAddr {
    /// True for a locally administered address (bit 1 of the first byte).
    pub fn is_local(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// True for a multicast (group) address (bit 0 of the first byte): never a NIC's.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// A random unicast, locally administered address.
    pub fn random_local() -> Self {
        let mut b: [u8; 6] = rand::random();
        b[0] = (b[0] & 0xfe) | 0x02;
        MacAddr(b)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = ParseMacError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let p = parts.next().ok_or_else(|| ParseMacError(s.into()))?;
            if p.len() != 2 {
                return Err(ParseMacError(s.into()));
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| ParseMacError(s.into()))?;
        }
        if parts.next().is_some() {
            return Err(ParseMacError(s.into()));
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// In a schema (the CRD's `macAddress`): a string of six hex bytes, so the API server
/// refuses what [`MacAddr`]'s deserializer would.
#[cfg(feature = "runtime")]
impl schemars::JsonSchema for MacAddr {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "MacAddr".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$",
        })
    }
}

/// An address with its prefix length, written `10.0.0.5/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IpCidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpCidr {
    pub fn new(addr: IpAddr, prefix: u8) -> Self {
        IpCidr { addr, prefix }
    }

    /// The same address and prefix as an [`IpNet`], for the CIDR arithmetic. A prefix
    /// longer than the family allows counts as the host's full length.
    pub fn ipnet(&self) -> IpNet {
        IpNet::new(self.addr, self.prefix).unwrap_or_else(|_| IpNet::from(self.addr))
    }

    /// The network address: `addr` with the host bits cleared.
    pub fn network(&self) -> IpAddr {
        self.ipnet().network()
    }

    /// True when `ip` lies inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.ipnet().contains(&ip)
    }

    /// True for a default route destination (`0.0.0.0/0` or `::/0`).
    pub fn is_default(&self) -> bool {
        self.prefix == 0
    }
}

impl FromStr for IpCidr {
    type Err = String;
    /// `10.0.2.5/24` or `fd00::1/64`; the host bits are kept.
    fn from_str(s: &str) -> Result<Self, String> {
        let net: IpNet = s
            .parse()
            .map_err(|_| format!("{s:?} is not an address with a prefix like 10.0.2.0/24"))?;
        Ok(IpCidr::from(net))
    }
}

impl From<IpNet> for IpCidr {
    fn from(net: IpNet) -> Self {
        IpCidr::new(net.addr(), net.prefix_len())
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A route through the pod interface. A default route has destination prefix 0.
/// `gateway` is `None` for an on-link (scope link) route.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Route {
    pub destination: IpCidr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
}

/// Everything the pod's CNI configured on one pod interface, captured before the
/// launcher changes anything. After a rewire the interface no longer shows most of this,
/// so it is cached and never discovered again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceFacts {
    /// The pod interface, e.g. `eth0`.
    pub interface: String,
    /// The pod's original MAC. With the bridge binding the VM takes it over.
    pub mac: MacAddr,
    pub mtu: u32,
    /// IPv4 and IPv6 addresses (global and unique-local; link-local left out).
    pub addresses: Vec<IpCidr>,
    /// Every route through the interface, both families, default routes included.
    pub routes: Vec<Route>,
    /// Nameservers from the pod's resolv.conf.
    pub dns: Vec<IpAddr>,
    /// Search domains from the pod's resolv.conf, as written there.
    pub search: Vec<String>,
    /// The pod's hostname.
    pub hostname: String,
}

/// The pod interface has no IPv4 address. Every binding needs one (the bridge binding
/// hands it to the VM, masquerade NATs behind it) and so does the DHCP server: discovery,
/// the plan and the DHCP configuration refuse such a pod with this one error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("pod interface {interface} has no IPv4 address (found: {found})")]
pub struct NoIpv4 {
    pub interface: String,
    /// The addresses it has instead, or `none`.
    pub found: String,
}

/// The first IPv4 address of `addresses` (of pod interface `interface`) with its prefix:
/// the one rule for "the pod's IPv4 address", see [`NoIpv4`].
pub fn pod_ipv4(interface: &str, addresses: &[IpCidr]) -> Result<Ipv4Net, NoIpv4> {
    let first = addresses
        .iter()
        .find_map(|a| Ipv4Net::new(v4(a.addr)?, a.prefix).ok());
    first.ok_or_else(|| {
        let found: Vec<String> = addresses.iter().map(ToString::to_string).collect();
        NoIpv4 {
            interface: interface.to_owned(),
            found: if found.is_empty() {
                "none".into()
            } else {
                found.join(", ")
            },
        }
    })
}

/// `a` if it is an IPv4 address.
pub(crate) fn v4(a: IpAddr) -> Option<Ipv4Addr> {
    match a {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    }
}

/// `a` if it is an IPv6 address.
pub(crate) fn v6(a: IpAddr) -> Option<Ipv6Addr> {
    match a {
        IpAddr::V6(a) => Some(a),
        IpAddr::V4(_) => None,
    }
}

impl InterfaceFacts {
    /// The first IPv4 address: the one the VM gets with the bridge binding.
    pub fn ipv4(&self) -> Option<IpCidr> {
        self.addresses.iter().copied().find(|a| a.addr.is_ipv4())
    }

    /// The pod's IPv4 address with its prefix, or the [`NoIpv4`] that refuses the pod.
    pub fn pod_ipv4(&self) -> Result<Ipv4Net, NoIpv4> {
        pod_ipv4(&self.interface, &self.addresses)
    }

    /// Global IPv6 addresses, kept for the bindings that will use them.
    pub fn ipv6(&self) -> impl Iterator<Item = IpCidr> + '_ {
        self.addresses.iter().copied().filter(|a| a.addr.is_ipv6())
    }

    /// The IPv4 default gateway, if the pod has one.
    pub fn gateway4(&self) -> Option<Ipv4Addr> {
        self.default_gateways().find_map(v4)
    }

    /// The IPv6 default gateway, if the pod has one.
    pub fn gateway6(&self) -> Option<Ipv6Addr> {
        self.default_gateways().find_map(v6)
    }

    /// The IPv4 nameservers, in resolv.conf order.
    pub fn dns4(&self) -> Vec<Ipv4Addr> {
        self.dns.iter().copied().filter_map(v4).collect()
    }

    /// The IPv6 nameservers, in resolv.conf order.
    pub fn dns6(&self) -> Vec<Ipv6Addr> {
        self.dns.iter().copied().filter_map(v6).collect()
    }

    /// The gateways of the default routes whose gateway is of the route's own family.
    fn default_gateways(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.routes.iter().filter_map(|r| {
            let g = r.gateway?;
            (r.destination.is_default() && r.destination.addr.is_ipv4() == g.is_ipv4()).then_some(g)
        })
    }
}

/// How a VMI interface is wired to the pod network. Matches KubeVirt's binding names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Binding {
    /// The VM takes over the pod's IP and MAC through a bridge and a tap.
    #[default]
    Bridge,
    /// The VM gets a private address behind the pod IP: NAT out, ports forwarded in.
    Masquerade,
}

impl FromStr for Binding {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bridge" => Ok(Binding::Bridge),
            "masquerade" => Ok(Binding::Masquerade),
            other => Err(format!(
                "unknown binding {other:?} (supported: bridge, masquerade)"
            )),
        }
    }
}

impl fmt::Display for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Binding::Bridge => "bridge",
            Binding::Masquerade => "masquerade",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trips_and_rejects_garbage() {
        let m: MacAddr = "02:AB:00:00:00:01".parse().unwrap();
        assert_eq!(m.to_string(), "02:ab:00:00:00:01");
        assert!(m.is_local());
        for bad in [
            "",
            "02:ab",
            "02:ab:00:00:00:01:02",
            "zz:00:00:00:00:00",
            "2:ab:0:0:0:1",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        let r = MacAddr::random_local();
        assert!(r.is_local() && r.0[0] & 1 == 0);
    }

    #[test]
    fn cidr_network_and_contains() {
        let c = IpCidr::new("10.1.2.3".parse().unwrap(), 24);
        assert_eq!(c.network().to_string(), "10.1.2.0");
        assert!(c.contains("10.1.2.200".parse().unwrap()));
        assert!(!c.contains("10.1.3.1".parse().unwrap()));
        let host = IpCidr::new("10.1.2.3".parse().unwrap(), 32);
        assert!(!host.contains("10.1.2.4".parse().unwrap()));
        let v6 = IpCidr::new("fd00::1".parse().unwrap(), 64);
        assert_eq!(v6.network().to_string(), "fd00::");
        assert!(!v6.contains("10.1.2.3".parse().unwrap()));
    }

    #[test]
    fn cidr_parses_and_prints_back() {
        for text in ["10.1.2.3/24", "0.0.0.0/0", "fd00::1/64", "10.1.2.3/32"] {
            let c: IpCidr = text.parse().unwrap();
            assert_eq!(c.to_string(), text);
        }
        let c: IpCidr = "10.1.2.3/24".parse().unwrap();
        assert_eq!(c, IpCidr::new("10.1.2.3".parse().unwrap(), 24));
        for bad in [
            "10.1.2.3",
            "10.1.2.3/33",
            "fd00::/129",
            "x/24",
            "10.1.2.3/-1",
            "",
        ] {
            let e = bad.parse::<IpCidr>().unwrap_err();
            assert!(e.contains("is not an address with a prefix"), "{bad}: {e}");
        }
    }
}
