//! Local IPAM, the one allocator of pod addresses for local mode: the node subnet
//! ([`parse_subnet`]), its gateway ([`gateway_of`]) and the lowest free host address
//! ([`pick_address`]). Pure; the runtime persists allocations as pod records and picks
//! under its lock (see [`super::runtime`]).

use crate::net::IpCidr;
use ipnet::{IpNet, Ipv4Net};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// Pure: `a.b.c.d/len` as an IPv4 network with room for a gateway and pods (len 8..=30).
pub fn parse_subnet(text: &str) -> Result<IpCidr, String> {
    let (addr, prefix) = text.split_once('/').ok_or("expected a.b.c.d/len")?;
    let addr: Ipv4Addr = addr.parse().map_err(|e| format!("{addr:?}: {e}"))?;
    let prefix: u8 = prefix
        .parse()
        .map_err(|e| format!("prefix {prefix:?}: {e}"))?;
    if !(8..=30).contains(&prefix) {
        return Err(format!("prefix /{prefix} is outside /8../30"));
    }
    let cidr = IpCidr::new(addr.into(), prefix);
    if cidr.network() != addr {
        return Err(format!(
            "{text} has host bits set (network is {})",
            cidr.network()
        ));
    }
    Ok(cidr)
}

/// The IPv4 network of `subnet` (an IPv6 one has no hosts here).
fn v4(subnet: IpCidr) -> Option<Ipv4Net> {
    match subnet.ipnet() {
        IpNet::V4(n) => Some(n.trunc()),
        IpNet::V6(_) => None,
    }
}

/// Pure: the subnet's first host address.
pub fn gateway_of(subnet: IpCidr) -> Ipv4Addr {
    v4(subnet)
        .and_then(|n| n.hosts().next())
        .unwrap_or(Ipv4Addr::UNSPECIFIED)
}

/// Pure: the lowest host address of `subnet` that is neither the gateway nor `used`.
pub fn pick_address(
    subnet: IpCidr,
    gateway: Ipv4Addr,
    used: &BTreeSet<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    v4(subnet)?
        .hosts()
        .find(|a| *a != gateway && !used.contains(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_with_reasons() {
        let s = parse_subnet("10.222.0.0/24").unwrap();
        assert_eq!(gateway_of(s), Ipv4Addr::new(10, 222, 0, 1));
        assert!(
            parse_subnet("10.222.0.5/24")
                .unwrap_err()
                .contains("host bits")
        );
        assert!(parse_subnet("10.222.0.0/31").unwrap_err().contains("/31"));
        assert!(
            parse_subnet("10.222.0.0")
                .unwrap_err()
                .contains("a.b.c.d/len")
        );
        assert!(parse_subnet("fd00::/64").is_err());
    }

    #[test]
    fn pick_skips_gateway_used_and_broadcast() {
        let s = parse_subnet("10.9.0.0/30").unwrap();
        let gw = gateway_of(s);
        let mut used = BTreeSet::new();
        assert_eq!(pick_address(s, gw, &used), Some(Ipv4Addr::new(10, 9, 0, 2)));
        used.insert(Ipv4Addr::new(10, 9, 0, 2));
        assert_eq!(
            pick_address(s, gw, &used),
            None,
            "only .1 (gateway) and .2 are hosts in a /30"
        );
        let s = parse_subnet("10.9.1.0/24").unwrap();
        used.insert(Ipv4Addr::new(10, 9, 1, 2));
        assert_eq!(
            pick_address(s, gateway_of(s), &used),
            Some(Ipv4Addr::new(10, 9, 1, 3))
        );
        let last = (3..=254).map(|h| Ipv4Addr::new(10, 9, 1, h));
        used.extend(last);
        assert_eq!(
            pick_address(s, gateway_of(s), &used),
            None,
            "the broadcast .255 is never picked"
        );
    }
}
