//! What a pod and its node should look like, and the pure plan derived from it: the pod's
//! routes, what the node side must add for the pod, the resolv.conf text. No I/O here.

use crate::net::{IpCidr, MacAddr, Route};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use super::SandboxError;

/// The link-local gateway Calico gives every pod (reached through an on-link route).
pub const CALICO_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// Where the node side of the pod network lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeSide {
    /// A fresh named network namespace (`/run/netns/NAME`) created for the node and
    /// deleted with it. Tests use this so the host is never touched.
    Netns(String),
    /// The host's own network namespace (local mode). A bridge that already exists there
    /// is adopted and left in place on drop; one created here is deleted on drop.
    Host,
}

/// The node: a bridge holding the gateway addresses, where pod veths are enslaved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    pub side: NodeSide,
    /// Bridge name, at most 15 bytes (e.g. `vmpod0`).
    pub bridge: String,
    /// Addresses on the bridge: the gateways of the pods, with the node subnet's prefix
    /// (e.g. `10.77.0.1/24`, `fd77::1/64`).
    pub addresses: Vec<IpCidr>,
}

impl NodeSpec {
    /// A node in a fresh, uniquely named namespace with one bridge holding `addresses`.
    pub fn isolated(addresses: Vec<IpCidr>) -> Self {
        NodeSpec {
            side: NodeSide::Netns(format!("vmpod-node-{}", unique_id())),
            bridge: unique_link_name("vpbr"),
            addresses,
        }
    }
}

/// One pod as kubelet + a bridge CNI would set it up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSpec {
    /// Pod name; the namespace is `vmpod-pod-<name>`. Must be unique on the machine
    /// ([`PodSpec::new`] appends a unique suffix).
    pub name: String,
    /// The pod address on `eth0`. A /32 with a gateway outside it is the Calico shape.
    pub ipv4: IpCidr,
    /// The IPv4 default gateway. Outside `ipv4`'s subnet it is reached by an on-link route.
    pub gateway4: Option<Ipv4Addr>,
    pub mac: MacAddr,
    pub mtu: u32,
    /// Extra routes through `eth0` (on-link when `gateway` is `None`).
    pub routes: Vec<Route>,
    /// An IPv6 address (dual stack), added without duplicate address detection.
    pub ipv6: Option<IpCidr>,
    pub gateway6: Option<Ipv6Addr>,
    /// Nameservers and search domains written to the pod's resolv.conf.
    pub dns: Vec<IpAddr>,
    pub search: Vec<String>,
    pub hostname: String,
    /// Directory for the pod's resolv.conf and hostname files; a private temporary
    /// directory (deleted on drop) when `None`.
    pub state_dir: Option<PathBuf>,
}

impl PodSpec {
    /// A pod named `<base>-<unique>` with a random local MAC, MTU 1500, hostname `base`,
    /// no routes but the default one, no IPv6, no DNS.
    pub fn new(base: &str, ipv4: IpCidr, gateway4: Ipv4Addr) -> Self {
        PodSpec {
            name: format!("{base}-{}", unique_id()),
            ipv4,
            gateway4: Some(gateway4),
            mac: MacAddr::random_local(),
            mtu: 1500,
            routes: Vec::new(),
            ipv6: None,
            gateway6: None,
            dns: Vec::new(),
            search: Vec::new(),
            hostname: base.to_string(),
            state_dir: None,
        }
    }

    /// The pod's network namespace name.
    pub fn netns_name(&self) -> String {
        format!("vmpod-pod-{}", self.name)
    }

    /// Checks that do not need the kernel.
    pub fn validate(&self) -> Result<(), SandboxError> {
        let bad = |why: String| {
            Err(SandboxError::Invalid {
                pod: self.name.clone(),
                why,
            })
        };
        if !self.ipv4.addr.is_ipv4() || self.ipv4.prefix > 32 {
            return bad(format!("ipv4 {} is not an IPv4 address/prefix", self.ipv4));
        }
        if let Some(v6) = self.ipv6
            && (!v6.addr.is_ipv6() || v6.prefix > 128)
        {
            return bad(format!("ipv6 {v6} is not an IPv6 address/prefix"));
        }
        if self.gateway6.is_some() && self.ipv6.is_none() {
            return bad("gateway6 without ipv6".into());
        }
        if !(68..=65535).contains(&self.mtu) {
            return bad(format!("mtu {} out of range 68..=65535", self.mtu));
        }
        if self.mac.0[0] & 1 != 0 {
            return bad(format!("mac {} is multicast", self.mac));
        }
        if self.name.is_empty() || self.name.contains('/') {
            return bad("name must be non-empty and contain no '/'".into());
        }
        Ok(())
    }

    /// Every route the pod's `eth0` gets: an on-link route to an off-subnet gateway
    /// (Calico), the default routes, then the extra routes.
    pub fn routes(&self) -> Vec<Route> {
        let mut out = Vec::new();
        if let Some(gw) = self.gateway4 {
            let gw = IpAddr::V4(gw);
            if !self.ipv4.contains(gw) || self.ipv4.prefix == 32 {
                out.push(Route {
                    destination: IpCidr::new(gw, 32),
                    gateway: None,
                    metric: None,
                });
            }
            out.push(Route {
                destination: IpCidr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
                gateway: Some(gw),
                metric: None,
            });
        }
        if let Some(gw) = self.gateway6 {
            out.push(Route {
                destination: IpCidr::new(Ipv6Addr::UNSPECIFIED.into(), 0),
                gateway: Some(IpAddr::V6(gw)),
                metric: None,
            });
        }
        out.extend(self.routes.iter().cloned());
        out
    }

    /// The resolv.conf text for this pod.
    pub fn resolv_conf(&self) -> String {
        let mut s = String::new();
        for ns in &self.dns {
            s.push_str(&format!("nameserver {ns}\n"));
        }
        if !self.search.is_empty() {
            s.push_str(&format!("search {}\n", self.search.join(" ")));
        }
        s
    }
}

/// What the node side adds for one pod beyond the veth: addresses it must hold so the
/// pod's gateways answer (with the prefix to add them with), and host routes back to pod
/// addresses that lie outside every bridge subnet (Calico /32 pods).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeAdditions {
    pub addresses: Vec<IpCidr>,
    pub routes: Vec<IpCidr>,
}

/// Pure: compare the pod's gateways and addresses with what the bridge already holds.
pub fn node_additions(node: &NodeSpec, pod: &PodSpec) -> NodeAdditions {
    let mut add = NodeAdditions::default();
    let holds = |ip: IpAddr| node.addresses.iter().any(|a| a.addr == ip);
    let covered = |ip: IpAddr| {
        node.addresses
            .iter()
            .any(|a| a.prefix > 0 && a.contains(ip))
    };
    let gateways = [pod.gateway4.map(IpAddr::V4), pod.gateway6.map(IpAddr::V6)];
    for gw in gateways.into_iter().flatten() {
        if !holds(gw) {
            add.addresses
                .push(IpCidr::new(gw, if gw.is_ipv4() { 32 } else { 128 }));
        }
    }
    for a in std::iter::once(pod.ipv4).chain(pod.ipv6) {
        if !covered(a.addr) {
            add.routes
                .push(IpCidr::new(a.addr, if a.addr.is_ipv4() { 32 } else { 128 }));
        }
    }
    add
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A process-unique id: `<pid hex>x<counter hex>`, unique across parallel test binaries.
pub fn unique_id() -> String {
    format!(
        "{:x}x{:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A unique interface name: `prefix`, the pid (6 hex digits: pids stay below 2^22) and a
/// counter (3 hex digits). At most 15 bytes when `prefix` has at most 6.
pub fn unique_link_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) & 0xfff;
    format!("{prefix}{:06x}{n:03x}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bridge-CNI pod `name`: 10.77.0.5/24 behind 10.77.0.1.
    fn pod(name: &str) -> PodSpec {
        PodSpec::new(
            name,
            "10.77.0.5/24".parse::<IpCidr>().unwrap(),
            "10.77.0.1".parse().unwrap(),
        )
    }

    #[test]
    fn bridge_cni_pod_gets_only_a_default_route() {
        let pod = pod("web");
        let r = pod.routes();
        assert_eq!(r.len(), 1);
        assert!(r[0].destination.is_default());
        assert_eq!(r[0].gateway, Some("10.77.0.1".parse().unwrap()));
        let node = NodeSpec::isolated(vec!["10.77.0.1/24".parse::<IpCidr>().unwrap()]);
        assert_eq!(node_additions(&node, &pod), NodeAdditions::default());
    }

    #[test]
    fn calico_pod_gets_onlink_gateway_and_node_holds_it() {
        let mut pod = PodSpec::new(
            "cal",
            "10.88.1.7/32".parse::<IpCidr>().unwrap(),
            CALICO_GATEWAY,
        );
        pod.routes.push(Route {
            destination: "192.168.50.0/24".parse::<IpCidr>().unwrap(),
            gateway: Some(CALICO_GATEWAY.into()),
            metric: Some(10),
        });
        let r = pod.routes();
        assert_eq!(
            r[0],
            Route {
                destination: "169.254.1.1/32".parse::<IpCidr>().unwrap(),
                gateway: None,
                metric: None
            }
        );
        assert!(r[1].destination.is_default());
        assert_eq!(
            r[2].destination,
            "192.168.50.0/24".parse::<IpCidr>().unwrap()
        );
        let node = NodeSpec::isolated(vec!["10.77.0.1/24".parse::<IpCidr>().unwrap()]);
        let add = node_additions(&node, &pod);
        assert_eq!(
            add.addresses,
            vec!["169.254.1.1/32".parse::<IpCidr>().unwrap()]
        );
        assert_eq!(add.routes, vec!["10.88.1.7/32".parse::<IpCidr>().unwrap()]);
    }

    #[test]
    fn dual_stack_and_resolv_conf() {
        let mut pod = PodSpec::new(
            "ds",
            "10.77.0.9/24".parse::<IpCidr>().unwrap(),
            "10.77.0.1".parse().unwrap(),
        );
        pod.ipv6 = Some("fd77::9/64".parse::<IpCidr>().unwrap());
        pod.gateway6 = Some("fd77::1".parse().unwrap());
        pod.dns = vec!["10.96.0.10".parse().unwrap()];
        pod.search = vec!["default.svc.cluster.local".into(), "cluster.local".into()];
        assert!(
            pod.routes().iter().any(
                |r| r.destination.is_default() && r.gateway == Some("fd77::1".parse().unwrap())
            )
        );
        assert_eq!(
            pod.resolv_conf(),
            "nameserver 10.96.0.10\nsearch default.svc.cluster.local cluster.local\n"
        );
        let node = NodeSpec::isolated(vec![
            "10.77.0.1/24".parse::<IpCidr>().unwrap(),
            "fd77::1/64".parse::<IpCidr>().unwrap(),
        ]);
        assert_eq!(node_additions(&node, &pod), NodeAdditions::default());
        let v6_first = NodeSpec::isolated(vec![
            "fd77::1/64".parse::<IpCidr>().unwrap(),
            "10.77.0.1/24".parse::<IpCidr>().unwrap(),
        ]);
        assert_eq!(node_additions(&v6_first, &pod), NodeAdditions::default());
    }

    #[test]
    fn validate_rejects_mismatches() {
        let good = pod("v");
        good.validate().unwrap();
        let refused = |p: PodSpec, why: &str| match p.validate() {
            Err(SandboxError::Invalid { pod, why: got }) => {
                assert_eq!((pod, got.as_str()), (p.name, why));
            }
            other => panic!("want Invalid({why:?}), got {other:?}"),
        };
        let mut p = good.clone();
        p.ipv4 = "fd00::1/64".parse::<IpCidr>().unwrap();
        refused(p, "ipv4 fd00::1/64 is not an IPv4 address/prefix");
        let mut p = good.clone();
        p.gateway6 = Some("fd00::1".parse().unwrap());
        refused(p, "gateway6 without ipv6");
        let mut p = good.clone();
        p.mtu = 10;
        refused(p, "mtu 10 out of range 68..=65535");
        let mut p = good;
        p.mac = "01:00:5e:00:00:01".parse().unwrap();
        refused(p, "mac 01:00:5e:00:00:01 is multicast");
    }

    #[test]
    fn unique_link_names_fit_ifnamsiz() {
        let a = unique_link_name("vmpod");
        let b = unique_link_name("vmpod");
        assert_ne!(a, b);
        assert!(a.len() <= 15, "{a}");
        assert!(NodeSpec::isolated(vec![]).bridge.len() <= 15);
    }
}
