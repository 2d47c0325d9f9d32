//! Local IPAM: hands out pod addresses from the node subnet, the way a host-local IPAM
//! plugin does for a bridge CNI. Pure bookkeeping; whoever owns the node persists it (or
//! rebuilds it with [`Ipam::reserve`] from the pods that exist).

use super::{SandboxError, within};
use crate::net::IpCidr;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Free and used addresses of one subnet (IPv4 or IPv6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipam {
    subnet: IpCidr,
    used: BTreeSet<IpAddr>,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v: u128, like: IpAddr) -> Option<IpAddr> {
    match like {
        IpAddr::V4(_) => u32::try_from(v).ok().map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        IpAddr::V6(_) => Some(IpAddr::V6(Ipv6Addr::from(v))),
    }
}

impl Ipam {
    /// An allocator for `subnet` (e.g. `10.77.0.0/24`) that never hands out `gateway`,
    /// the network address or (IPv4) the broadcast address.
    pub fn new(subnet: IpCidr, gateway: IpAddr) -> Result<Ipam, SandboxError> {
        let bits = if subnet.addr.is_ipv4() { 32 } else { 128 };
        let invalid = |why: String| SandboxError::Ipam { subnet, why };
        if subnet.prefix > bits - 2 {
            return Err(invalid("fewer than two host addresses".into()));
        }
        if !within(&subnet, gateway) {
            return Err(invalid(format!("gateway {gateway} is outside the subnet")));
        }
        let mut used = BTreeSet::from([subnet.network(), gateway]);
        if let Some(b) = from_u128(
            to_u128(subnet.network()) + Self::size(subnet) - 1,
            subnet.addr,
        ) && subnet.addr.is_ipv4()
        {
            used.insert(b);
        }
        Ok(Ipam {
            subnet: IpCidr::new(subnet.network(), subnet.prefix),
            used,
        })
    }

    fn size(subnet: IpCidr) -> u128 {
        let bits: u32 = if subnet.addr.is_ipv4() { 32 } else { 128 };
        1u128
            .checked_shl(bits - u32::from(subnet.prefix))
            .unwrap_or(u128::MAX)
    }

    /// The lowest free address, now marked used, with the subnet's prefix.
    pub fn allocate(&mut self) -> Result<IpCidr, SandboxError> {
        let base = to_u128(self.subnet.network());
        let free = (1..Self::size(self.subnet))
            .filter_map(|off| from_u128(base + off, self.subnet.addr))
            .find(|ip| !self.used.contains(ip))
            .ok_or_else(|| SandboxError::Ipam {
                subnet: self.subnet,
                why: "no free address left".into(),
            })?;
        self.used.insert(free);
        Ok(IpCidr::new(free, self.subnet.prefix))
    }

    /// Mark `ip` used (an address a pod already holds, e.g. after a restart).
    pub fn reserve(&mut self, ip: IpAddr) -> Result<(), SandboxError> {
        let invalid = |why: String| SandboxError::Ipam {
            subnet: self.subnet,
            why,
        };
        if !within(&self.subnet, ip) {
            return Err(invalid(format!("{ip} is outside the subnet")));
        }
        if !self.used.insert(ip) {
            return Err(invalid(format!("{ip} is already in use")));
        }
        Ok(())
    }

    /// Give `ip` back. Returns false if it was not allocated.
    pub fn release(&mut self, ip: IpAddr) -> bool {
        ip != self.subnet.network() && self.used.remove(&ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::test_cidr as cidr;

    /// `r` is the IPAM error for `subnet` with reason `why`.
    fn refused<T: std::fmt::Debug>(r: Result<T, SandboxError>, subnet: &str, why: &str) {
        match r {
            Err(SandboxError::Ipam { subnet: s, why: w }) => {
                assert_eq!((s, w.as_str()), (cidr(subnet), why));
            }
            other => panic!("want Ipam({subnet}: {why}), got {other:?}"),
        }
    }

    #[test]
    fn allocates_lowest_free_skipping_gateway_network_broadcast() {
        let mut ipam = Ipam::new(cidr("10.77.0.0/30"), "10.77.0.1".parse().unwrap()).unwrap();
        assert_eq!(ipam.allocate().unwrap(), cidr("10.77.0.2/30"));
        let err = ipam.allocate().unwrap_err().to_string();
        assert!(
            err.contains("no free address") && err.contains("10.77.0.0/30"),
            "{err}"
        );
        assert!(ipam.release("10.77.0.2".parse().unwrap()));
        assert!(!ipam.release("10.77.0.2".parse().unwrap()));
        assert_eq!(ipam.allocate().unwrap(), cidr("10.77.0.2/30"));
    }

    #[test]
    fn reserve_rebuilds_state_and_rejects_conflicts() {
        let mut ipam = Ipam::new(cidr("10.77.0.0/24"), "10.77.0.1".parse().unwrap()).unwrap();
        ipam.reserve("10.77.0.2".parse().unwrap()).unwrap();
        let net = "10.77.0.0/24";
        refused(
            ipam.reserve("10.77.0.2".parse().unwrap()),
            net,
            "10.77.0.2 is already in use",
        );
        refused(
            ipam.reserve("10.78.0.2".parse().unwrap()),
            net,
            "10.78.0.2 is outside the subnet",
        );
        refused(
            ipam.reserve("10.77.0.1".parse().unwrap()),
            net,
            "10.77.0.1 is already in use",
        );
        assert_eq!(ipam.allocate().unwrap(), cidr("10.77.0.3/24"));
    }

    #[test]
    fn ipv6_and_bad_subnets() {
        let mut ipam = Ipam::new(cidr("fd77::/64"), "fd77::1".parse().unwrap()).unwrap();
        assert_eq!(ipam.allocate().unwrap(), cidr("fd77::2/64"));
        refused(
            Ipam::new(cidr("10.77.0.0/31"), "10.77.0.1".parse().unwrap()),
            "10.77.0.0/31",
            "fewer than two host addresses",
        );
        refused(
            Ipam::new(cidr("10.77.0.0/24"), "10.78.0.1".parse().unwrap()),
            "10.77.0.0/24",
            "gateway 10.78.0.1 is outside the subnet",
        );
        refused(
            Ipam::new(cidr("fd77::/64"), "10.77.0.1".parse().unwrap()),
            "fd77::/64",
            "gateway 10.77.0.1 is outside the subnet",
        );
        refused(
            ipam.reserve("10.77.0.1".parse().unwrap()),
            "fd77::/64",
            "10.77.0.1 is outside the subnet",
        );
    }
}
