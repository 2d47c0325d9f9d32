//! The masquerade binding's NAT: which ports go to the VM, and the nftables ruleset that
//! does it, built as nft's JSON (the `nftables` crate's schema, applied by `nft -j -f -`).
//! Pure: options + addresses -> [`Nftables`]; [`super::apply`] runs it.
//!
//! One table of its own, `inet vmpod_masq_<iface>`, replaced whole in one nft transaction
//! (add, delete, add again), so applying twice converges and teardown (add, delete)
//! succeeds whether or not the table exists. The `inet` family holds both IP families:
//! the same rules are made for IPv4 (always) and for IPv6 (a dual-stack pod: the VM's
//! `vmIPv6NetworkCIDR`, default `fd10:0:2::/120`), one [`NatAddresses`] each. Three NAT
//! chains:
//! - `prerouting`: connections arriving on the pod interface for the pod IP go to the
//!   VM (the listed ports, or every port when none is listed);
//! - `output`: connections from inside the pod to `127.0.0.1:<listed port>` go to the VM
//!   too (the bridge needs `route_localnet` for a 127.0.0.1 source to leave it). IPv4
//!   only: IPv6 has no `route_localnet`, `::1` never leaves the loopback link;
//! - `postrouting`: the VM's own traffic leaving the pod interface is masqueraded to the
//!   pod IP (NAT44 and NAT66), and the 127.0.0.1 source of the previous case becomes
//!   the gateway.
//!
//! Replies need no rule: conntrack reverses the translation.

use super::facts::{InterfaceFacts, IpCidr, Route};
use super::nft::{eq, meta, payload, text};
use nftables::expr::{Expression, MetaKey, NamedExpression, Payload, Prefix};
use nftables::schema::{Chain, NfCmd, NfListObject, NfObject, Nftables, Rule, Table};
use nftables::stmt::{Counter, NAT, NATFamily, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The VM's network when the VMI names none (KubeVirt's default).
pub const DEFAULT_VM_NETWORK: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 0);
/// Its prefix length.
pub const DEFAULT_VM_PREFIX: u8 = 24;
/// The VM's IPv6 network when the VMI names none (KubeVirt's default), in a dual-stack
/// pod.
pub const DEFAULT_VM_NETWORK6: Ipv6Addr = Ipv6Addr::new(0xfd10, 0, 2, 0, 0, 0, 0, 0);
/// Its prefix length.
pub const DEFAULT_VM_PREFIX6: u8 = 120;

/// A forwarded port's transport protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    /// nft's payload protocol name.
    fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.nft())
    }
}

/// One port forwarded from the pod IP (and the pod's 127.0.0.1) to the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ForwardPort {
    pub protocol: Protocol,
    pub port: u16,
}

impl fmt::Display for ForwardPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.protocol, self.port)
    }
}

impl std::str::FromStr for ForwardPort {
    type Err = String;
    /// `tcp/80`, `udp/53`, or `80` (TCP).
    fn from_str(text: &str) -> Result<Self, String> {
        let (protocol, port) = match text.split_once('/') {
            Some(("tcp", p)) => (Protocol::Tcp, p),
            Some(("udp", p)) => (Protocol::Udp, p),
            Some((other, _)) => return Err(format!("{other:?}: protocol is tcp or udp")),
            None => (Protocol::Tcp, text),
        };
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{text:?}: want tcp/PORT or udp/PORT, PORT 1-65535"))?;
        Ok(ForwardPort { protocol, port })
    }
}

/// `--vm-network`, `--vm-ipv6-network` and `--port`: the masquerade options on the
/// command line of `vmpod-launcher net setup` and `vmpodctl net plan`.
#[cfg(feature = "runtime")]
#[derive(clap::Args, Clone, Debug)]
pub struct MasqueradeArgs {
    /// Masquerade binding: the VM's private network (`networks[].pod.vmNetworkCIDR`).
    #[arg(long, default_value = "10.0.2.0/24")]
    pub vm_network: IpCidr,
    /// Masquerade binding in a dual-stack pod: the VM's private IPv6 network
    /// (`networks[].pod.vmIPv6NetworkCIDR`).
    #[arg(long = "vm-ipv6-network", default_value = "fd10:0:2::/120")]
    pub vm_network6: IpCidr,
    /// Masquerade binding: a port forwarded from the pod IP to the VM, `tcp/80` or
    /// `udp/53` (repeat it); none forwards every port.
    #[arg(long = "port")]
    pub ports: Vec<ForwardPort>,
}

#[cfg(feature = "runtime")]
impl From<MasqueradeArgs> for MasqueradeOptions {
    fn from(a: MasqueradeArgs) -> Self {
        MasqueradeOptions {
            vm_network: a.vm_network,
            vm_network6: a.vm_network6,
            ports: a.ports,
        }
    }
}

/// What a masquerade plan needs beyond the pod's facts: the VMI's
/// `networks[].pod.vmNetworkCIDR`, `networks[].pod.vmIPv6NetworkCIDR` and
/// `interfaces[].ports`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MasqueradeOptions {
    /// The VM's IPv4 network: the gateway is its first host, the VM the second.
    pub vm_network: IpCidr,
    /// The VM's IPv6 network, used when the pod has IPv6: gateway and VM as for IPv4.
    #[serde(default = "default_vm_network6")]
    pub vm_network6: IpCidr,
    /// Forwarded ports; empty forwards every port.
    #[serde(default)]
    pub ports: Vec<ForwardPort>,
}

fn default_vm_network6() -> IpCidr {
    IpCidr::new(IpAddr::V6(DEFAULT_VM_NETWORK6), DEFAULT_VM_PREFIX6)
}

impl Default for MasqueradeOptions {
    fn default() -> Self {
        MasqueradeOptions {
            vm_network: IpCidr::new(IpAddr::V4(DEFAULT_VM_NETWORK), DEFAULT_VM_PREFIX),
            vm_network6: default_vm_network6(),
            ports: Vec::new(),
        }
    }
}

/// Host `n` of `net` (1: the gateway, 2: the VM), either family.
fn nth_host(net: IpCidr, n: u8) -> IpAddr {
    match net.network() {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) + u32::from(n))),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) + u128::from(n))),
    }
}

/// Why `net` cannot be the VM's network of its family (`ipv6`: IPv6, else IPv4), if it
/// cannot: another family, not unicast, or no room for a gateway and a VM.
pub fn check_vm_network(net: IpCidr, ipv6: bool) -> Result<(), String> {
    let (family, longest) = if ipv6 { ("IPv6", 126) } else { ("IPv4", 30) };
    let unicast = match net.addr {
        IpAddr::V4(_) => true,
        IpAddr::V6(a) => {
            !(a.is_multicast()
                || a.is_unicast_link_local()
                || a.is_loopback()
                || a.is_unspecified())
        }
    };
    if net.addr.is_ipv6() != ipv6 {
        Err(format!("{net}: not an {family} network"))
    } else if !unicast {
        Err(format!(
            "{net}: not a unicast network (multicast, link-local and loopback are refused)"
        ))
    } else if net.prefix > longest {
        Err(format!(
            "{net}: a /{} has no room for a gateway and a VM (at most /{longest})",
            net.prefix
        ))
    } else {
        Ok(())
    }
}

impl MasqueradeOptions {
    /// The gateway, on the bridge: the network's first host (`10.0.2.1`).
    pub fn gateway(&self) -> Ipv4Addr {
        match nth_host(self.vm_network, 1) {
            IpAddr::V4(a) => a,
            // The API and the plan refuse anything but IPv4 (see `check`).
            IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
        }
    }

    /// The VM's address: the network's second host (`10.0.2.2`).
    pub fn vm_address(&self) -> Ipv4Addr {
        match nth_host(self.vm_network, 2) {
            IpAddr::V4(a) => a,
            IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
        }
    }

    /// The VM's IPv6 side in a pod with IPv6 (`None` in an IPv4-only pod): the pod's
    /// IPv6 address the NAT66 stands behind, and the VM network's gateway and VM
    /// (`fd10:0:2::1`, `fd10:0:2::2`).
    pub fn ipv6(&self, facts: &InterfaceFacts) -> Option<NatAddresses> {
        let pod_ip = facts.ipv6().next()?.addr;
        Some(NatAddresses {
            pod_ip,
            vm_ip: nth_host(self.vm_network6, 2),
            gateway: nth_host(self.vm_network6, 1),
            vm_network: IpCidr::new(self.vm_network6.network(), self.vm_network6.prefix),
        })
    }

    /// The NAT addresses of each family the pod has, IPv4 first: the pod IP the VM
    /// stands behind, the VM's and the gateway's address, the VM network.
    pub fn nat_addresses(&self, pod_ipv4: Ipv4Addr, facts: &InterfaceFacts) -> Vec<NatAddresses> {
        let ipv4 = NatAddresses {
            pod_ip: IpAddr::V4(pod_ipv4),
            vm_ip: IpAddr::V4(self.vm_address()),
            gateway: IpAddr::V4(self.gateway()),
            vm_network: IpCidr::new(self.vm_network.network(), self.vm_network.prefix),
        };
        std::iter::once(ipv4).chain(self.ipv6(facts)).collect()
    }

    /// Why these networks cannot hold a gateway and a VM, if they cannot: the VMI
    /// field at fault and the reason.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        check_vm_network(self.vm_network, false).map_err(|e| ("vmNetworkCIDR", e))?;
        check_vm_network(self.vm_network6, true).map_err(|e| ("vmIPv6NetworkCIDR", e))
    }

    /// The pod facts as the VM sees them: its private address (and, in a pod with
    /// IPv6, its private IPv6 address), the gateway as default route (IPv6's comes from
    /// the router advertisements); DNS, search domains, hostname and MTU unchanged.
    /// DHCP and DHCPv6 serve this.
    pub fn vm_facts(&self, facts: &InterfaceFacts) -> InterfaceFacts {
        let gateway = self.gateway();
        let ipv4 = IpCidr::new(IpAddr::V4(self.vm_address()), self.vm_network.prefix);
        let ipv6 = self
            .ipv6(facts)
            .map(|a| IpCidr::new(a.vm_ip, a.vm_network.prefix));
        InterfaceFacts {
            addresses: std::iter::once(ipv4).chain(ipv6).collect(),
            routes: vec![Route {
                destination: IpCidr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
                gateway: Some(IpAddr::V4(gateway)),
                metric: None,
            }],
            ..facts.clone()
        }
    }
}

/// The sysctl NAT66 needs, as a Pod's `securityContext.sysctls` names it.
pub const IPV6_FORWARDING_SYSCTL: &str = "net.ipv6.conf.all.forwarding";

/// Why the VM's IPv6 side stays off in a pod with IPv6, if it does: the masquerade
/// binding routes IPv6 only with [`IPV6_FORWARDING_SYSCTL`] on, which has no per-link
/// switch and no netlink verb; when it is off (`forwarding`) and `/proc/sys` cannot be
/// written (`writable`: a container runtime mounts it read-only), the VM gets IPv4
/// alone rather than an IPv6 default route that leads nowhere.
pub fn ipv6_off(
    facts: &InterfaceFacts,
    binding: super::Binding,
    forwarding: u32,
    writable: bool,
) -> Option<String> {
    (binding == super::Binding::Masquerade
        && facts.ipv6().next().is_some()
        && forwarding != 1
        && !writable)
        .then(|| {
            format!(
                "{IPV6_FORWARDING_SYSCTL} is {forwarding} and /proc/sys is read-only, so the VM \
                 gets IPv4 only: give the launcher Pod securityContext.sysctls \
                 {IPV6_FORWARDING_SYSCTL}=1 (vmpod-handler --masquerade-ipv6-forwarding-sysctl; \
                 the kubelet must list it in --allowed-unsafe-sysctls)"
            )
        })
}

/// The nftables table of a masquerade-bound pod interface.
pub fn table_name(interface: &str) -> String {
    format!("vmpod_masq_{interface}")
}

/// Everything the NAT rules name; what [`super::NetOp::Nat`] carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NatRules {
    /// The `inet` family table holding the chains.
    pub table: String,
    pub pod_interface: String,
    pub bridge: String,
    /// One entry per family the pod has: IPv4, then IPv6 in a dual-stack pod.
    pub families: Vec<NatAddresses>,
    /// Empty: every port.
    pub ports: Vec<ForwardPort>,
}

/// One IP family's side of the NAT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NatAddresses {
    /// The pod interface's address the VM stands behind.
    pub pod_ip: IpAddr,
    /// The VM's private address.
    pub vm_ip: IpAddr,
    /// The bridge's address in the VM network.
    pub gateway: IpAddr,
    pub vm_network: IpCidr,
}

impl NatAddresses {
    /// nft's payload protocol of this family (`ip daddr`, `ip6 daddr`).
    fn protocol(&self) -> &'static str {
        if self.pod_ip.is_ipv6() { "ip6" } else { "ip" }
    }

    /// The family a NAT statement names in an `inet` table.
    fn nat_family(&self) -> NATFamily {
        if self.pod_ip.is_ipv6() {
            NATFamily::IP6
        } else {
            NATFamily::IP
        }
    }

    /// The loopback address whose listed ports reach the VM too: IPv4's only (IPv6 has
    /// no `route_localnet`; `::1` never leaves the loopback link).
    fn loopback(&self) -> Option<IpAddr> {
        self.pod_ip.is_ipv4().then_some(IpAddr::V4(LOCALHOST))
    }
}

impl fmt::Display for NatRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "nft table inet {}: forward ", self.table)?;
        if self.ports.is_empty() {
            write!(f, "every port")?;
        } else {
            let ports: Vec<String> = self.ports.iter().map(ToString::to_string).collect();
            write!(f, "{}", ports.join(","))?;
        }
        for (i, a) in self.families.iter().enumerate() {
            let sep = if i == 0 { " of" } else { ";" };
            write!(f, "{sep} {}", a.pod_ip)?;
            if let Some(lo) = a.loopback() {
                write!(f, " (and {lo})")?;
            }
            write!(f, " to {}, masquerade {}", a.vm_ip, a.vm_network)?;
        }
        write!(f, " out {}", self.pod_interface)
    }
}

const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// Counted, so `vmpod-launcher net inspect` and `nft list` show what each rule matched.
fn counter() -> Statement<'static> {
    Statement::Counter(Counter::Anonymous(None))
}

fn nat_to(family: NATFamily, addr: IpAddr) -> Option<NAT<'static>> {
    Some(NAT {
        addr: Some(text(addr)),
        family: Some(family),
        port: None,
        flags: None,
    })
}

/// `tcp dport 80`-style matches, one per listed port; one empty match (any port) when
/// none is listed.
fn port_matches(ports: &[ForwardPort]) -> Vec<Vec<Statement<'static>>> {
    if ports.is_empty() {
        return vec![Vec::new()];
    }
    ports
        .iter()
        .map(|p| {
            vec![eq(
                payload(p.protocol.nft(), "dport"),
                Expression::Number(u32::from(p.port)),
            )]
        })
        .collect()
}

fn table(name: &str) -> NfListObject<'static> {
    NfListObject::Table(Table {
        family: NfFamily::INet,
        name: Cow::Owned(name.to_owned()),
        handle: None,
    })
}

/// Add then delete the table: removes it whether or not it exists, in one transaction.
fn drop_table(name: &str) -> [NfObject<'static>; 2] {
    [
        NfObject::CmdObject(NfCmd::Add(table(name))),
        NfObject::CmdObject(NfCmd::Delete(table(name))),
    ]
}

/// The batch that removes the table of `name`; absent already is fine.
pub fn teardown_ruleset(name: &str) -> Nftables<'static> {
    Nftables {
        objects: Cow::Owned(drop_table(name).to_vec()),
    }
}

/// The batch that (re)creates the whole table for `r`.
pub fn ruleset(r: &NatRules) -> Nftables<'static> {
    let t = r.table.as_str();
    let mut objects: Vec<NfObject<'static>> = drop_table(t).to_vec();
    objects.push(NfObject::CmdObject(NfCmd::Add(table(t))));
    let chain = |name: &'static str, hook: NfHook, prio: i32| {
        NfObject::CmdObject(NfCmd::Add(NfListObject::Chain(Chain {
            family: NfFamily::INet,
            table: Cow::Owned(t.to_owned()),
            name: Cow::Borrowed(name),
            _type: Some(NfChainType::NAT),
            hook: Some(hook),
            prio: Some(prio),
            policy: Some(NfChainPolicy::Accept),
            ..Chain::default()
        })))
    };
    objects.extend([
        chain("prerouting", NfHook::Prerouting, -100),
        chain("output", NfHook::Output, -100),
        chain("postrouting", NfHook::Postrouting, 100),
    ]);
    let rule = |chain: &'static str, expr: Vec<Statement<'static>>| {
        NfObject::CmdObject(NfCmd::Add(NfListObject::Rule(Rule {
            family: NfFamily::INet,
            table: Cow::Owned(t.to_owned()),
            chain: Cow::Borrowed(chain),
            expr: Cow::Owned(expr),
            ..Rule::default()
        })))
    };
    for a in &r.families {
        objects.extend(
            family_rules(r, a)
                .into_iter()
                .map(|(chain, expr)| rule(chain, expr)),
        );
    }
    Nftables {
        objects: Cow::Owned(objects),
    }
}

/// The rules of one family, chain by chain: the same for IPv4 and IPv6 but for the
/// loopback forwarding, which only IPv4 has.
fn family_rules(r: &NatRules, a: &NatAddresses) -> Vec<(&'static str, Vec<Statement<'static>>)> {
    let ip = a.protocol();
    let dnat = || Statement::DNAT(nat_to(a.nat_family(), a.vm_ip));
    let mut rules = Vec::new();
    for ports in port_matches(&r.ports) {
        let mut inbound = vec![
            eq(meta(MetaKey::Iifname), text(&r.pod_interface)),
            eq(payload(ip, "daddr"), text(a.pod_ip)),
        ];
        inbound.extend(ports);
        inbound.extend([counter(), dnat()]);
        rules.push(("prerouting", inbound));
    }
    if let Some(lo) = a.loopback() {
        // Loopback forwarding only for listed ports: with none listed, taking every
        // 127.0.0.1 port would cut the pod's own processes off from each other.
        for ports in port_matches(&r.ports).into_iter().filter(|p| !p.is_empty()) {
            let mut local = vec![eq(payload(ip, "daddr"), text(lo))];
            local.extend(ports);
            local.extend([counter(), dnat()]);
            rules.push(("output", local));
        }
    }
    rules.push((
        "postrouting",
        vec![
            eq(meta(MetaKey::Oifname), text(&r.pod_interface)),
            eq(
                payload(ip, "saddr"),
                Expression::Named(NamedExpression::Prefix(Prefix {
                    addr: Box::new(text(a.vm_network.network())),
                    len: u32::from(a.vm_network.prefix),
                })),
            ),
            counter(),
            Statement::Masquerade(None),
        ],
    ));
    if let Some(lo) = a.loopback() {
        rules.push((
            "postrouting",
            vec![
                eq(meta(MetaKey::Oifname), text(&r.bridge)),
                eq(payload(ip, "saddr"), text(lo)),
                counter(),
                Statement::SNAT(nat_to(a.nat_family(), a.gateway)),
            ],
        ));
    }
    rules
}

/// The rules of table `name` as the kernel has them now, one line each
/// (`prerouting: iifname eth0, ip daddr 10.79.0.5, tcp dport 80 -> dnat to 10.0.2.2
/// [12 packets]`); empty when the table does not exist. Runs `nft -j list table` in
/// the calling thread's namespace.
pub fn live_rules(name: &str) -> Result<Vec<String>, super::NetError> {
    let listed = nftables::helper::get_current_ruleset_with_args(
        nftables::helper::DEFAULT_NFT,
        ["list", "table", "inet", name],
    );
    match listed {
        Ok(ruleset) => Ok(ruleset
            .objects
            .iter()
            .filter_map(|o| match o {
                NfObject::ListObject(NfListObject::Rule(r)) => Some(describe_rule(r)),
                _ => None,
            })
            .collect()),
        // nft says "No such file or directory" for a table that is not there.
        Err(nftables::helper::NftablesError::NftFailed { stderr, .. })
            if stderr.contains("No such file or directory") =>
        {
            Ok(Vec::new())
        }
        Err(e) => Err(super::NetError::Nft {
            what: format!("list table inet {name}"),
            detail: e.to_string(),
        }),
    }
}

/// One rule as a line: its chain, its matches, its verdict and its counter.
pub fn describe_rule(r: &Rule<'_>) -> String {
    fn value(e: &Expression<'_>) -> String {
        match e {
            Expression::String(v) => v.to_string(),
            Expression::Number(n) => n.to_string(),
            Expression::Named(NamedExpression::Payload(Payload::PayloadField(f))) => {
                format!("{} {}", f.protocol, f.field)
            }
            Expression::Named(NamedExpression::Meta(m)) => format!("{:?}", m.key).to_lowercase(),
            Expression::Named(NamedExpression::Prefix(p)) => {
                format!("{}/{}", value(&p.addr), p.len)
            }
            other => serde_json::to_string(other).unwrap_or_default(),
        }
    }
    let to = |n: &Option<NAT<'_>>| {
        n.as_ref()
            .and_then(|n| n.addr.as_ref())
            .map(|a| format!(" to {}", value(a)))
            .unwrap_or_default()
    };
    let mut matches = Vec::new();
    let mut verdict = String::new();
    let mut packets = None;
    for st in r.expr.iter() {
        match st {
            Statement::Match(m) => matches.push(format!("{} {}", value(&m.left), value(&m.right))),
            Statement::Counter(Counter::Anonymous(c)) => {
                packets = Some(c.as_ref().and_then(|c| c.packets).unwrap_or(0));
            }
            Statement::DNAT(n) => verdict = format!("dnat{}", to(n)),
            Statement::SNAT(n) => verdict = format!("snat{}", to(n)),
            Statement::Masquerade(_) => verdict = "masquerade".into(),
            other => verdict = serde_json::to_string(other).unwrap_or_default(),
        }
    }
    let mut line = format!("{}: {} -> {verdict}", r.chain, matches.join(", "));
    if let Some(p) = packets {
        line.push_str(&format!(" [{p} packets]"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::plan::tests::{dual_stack, ipv4_only};
    use serde_json::{Value, json};

    fn rules(ports: Vec<ForwardPort>) -> NatRules {
        NatRules {
            table: table_name("eth0"),
            pod_interface: "eth0".into(),
            bridge: "k6t-eth0".into(),
            families: vec![NatAddresses {
                pod_ip: "10.244.0.5".parse().unwrap(),
                vm_ip: "10.0.2.2".parse().unwrap(),
                gateway: "10.0.2.1".parse().unwrap(),
                vm_network: IpCidr::new("10.0.2.0".parse().unwrap(), 24),
            }],
            ports,
        }
    }

    /// IPv6 stays off only for masquerade in a pod with IPv6 whose forwarding is off
    /// and read-only; the reason names the sysctl and how to allow it.
    #[test]
    fn ipv6_is_off_only_when_forwarding_is_off_and_read_only() {
        use crate::net::Binding::{Bridge, Masquerade};
        let f = dual_stack();
        let why = ipv6_off(&f, Masquerade, 0, false).expect("off");
        for want in [
            "net.ipv6.conf.all.forwarding is 0",
            "securityContext.sysctls net.ipv6.conf.all.forwarding=1",
            "--masquerade-ipv6-forwarding-sysctl",
            "--allowed-unsafe-sysctls",
        ] {
            assert!(why.contains(want), "{want:?} not in {why:?}");
        }
        assert_eq!(ipv6_off(&f, Masquerade, 1, false), None);
        assert_eq!(ipv6_off(&f, Masquerade, 0, true), None);
        assert_eq!(ipv6_off(&f, Bridge, 0, false), None);
        let mut v4 = f.clone();
        v4.addresses.retain(|a| a.addr.is_ipv4());
        assert_eq!(ipv6_off(&v4, Masquerade, 0, false), None);
    }

    fn json_rules(r: &NatRules) -> Vec<(String, Value)> {
        let v = serde_json::to_value(ruleset(r)).unwrap();
        v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o.get("add")?.get("rule"))
            .map(|r| (r["chain"].as_str().unwrap().to_owned(), r["expr"].clone()))
            .collect()
    }

    /// A rule's JSON: `iifname eth0, <ip> daddr <pod_ip>, <proto> dport <port>`, counted,
    /// DNATed to `vm_ip`.
    fn dnat_json(ip: &str, pod_ip: &str, proto: &str, port: u16, vm_ip: &str) -> Value {
        json!([
            {"match": {"left": {"meta": {"key": "iifname"}}, "right": "eth0", "op": "=="}},
            {"match": {"left": {"payload": {"protocol": ip, "field": "daddr"}}, "right": pod_ip, "op": "=="}},
            {"match": {"left": {"payload": {"protocol": proto, "field": "dport"}}, "right": port, "op": "=="}},
            {"counter": null},
            {"dnat": {"addr": vm_ip, "family": ip}}
        ])
    }

    /// A rule's JSON: `oifname eth0, <ip> saddr <network>/<len>`, counted, masqueraded.
    fn masquerade_json(ip: &str, network: &str, len: u8) -> Value {
        json!([
            {"match": {"left": {"meta": {"key": "oifname"}}, "right": "eth0", "op": "=="}},
            {"match": {"left": {"payload": {"protocol": ip, "field": "saddr"}}, "right": {"prefix": {"addr": network, "len": len}}, "op": "=="}},
            {"counter": null},
            {"masquerade": null}
        ])
    }

    const HTTP: ForwardPort = ForwardPort {
        protocol: Protocol::Tcp,
        port: 80,
    };

    #[test]
    fn listed_ports_are_dnated_from_the_pod_ip_and_localhost() {
        let r = rules(vec![
            HTTP,
            ForwardPort {
                protocol: Protocol::Udp,
                port: 53,
            },
        ]);
        let got = json_rules(&r);
        let chains: Vec<&str> = got.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(
            chains,
            [
                "prerouting",
                "prerouting",
                "output",
                "output",
                "postrouting",
                "postrouting"
            ]
        );
        assert_eq!(
            got[0].1,
            dnat_json("ip", "10.244.0.5", "tcp", 80, "10.0.2.2")
        );
        assert_eq!(
            got[3].1,
            json!([
                {"match": {"left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "127.0.0.1", "op": "=="}},
                {"match": {"left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 53, "op": "=="}},
                {"counter": null},
                {"dnat": {"addr": "10.0.2.2", "family": "ip"}}
            ])
        );
        assert_eq!(got[4].1, masquerade_json("ip", "10.0.2.0", 24));
        assert_eq!(
            got[5].1,
            json!([
                {"match": {"left": {"meta": {"key": "oifname"}}, "right": "k6t-eth0", "op": "=="}},
                {"match": {"left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "127.0.0.1", "op": "=="}},
                {"counter": null},
                {"snat": {"addr": "10.0.2.1", "family": "ip"}}
            ])
        );
    }

    #[test]
    fn no_ports_forwards_every_port_of_the_pod_ip_but_not_localhost() {
        let got = json_rules(&rules(vec![]));
        let chains: Vec<&str> = got.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(chains, ["prerouting", "postrouting", "postrouting"]);
        let pre = got[0].1.as_array().unwrap();
        assert_eq!(pre.len(), 4, "iifname, daddr, counter, dnat: {pre:?}");
        assert_eq!(
            pre[3],
            json!({"dnat": {"addr": "10.0.2.2", "family": "ip"}})
        );
    }

    #[test]
    fn the_batch_replaces_the_table_and_teardown_drops_it() {
        let v = serde_json::to_value(ruleset(&rules(vec![HTTP]))).unwrap();
        let objs = v["nftables"].as_array().unwrap();
        let t = json!({"family": "inet", "name": "vmpod_masq_eth0"});
        assert_eq!(objs[0], json!({"add": {"table": t}}));
        assert_eq!(objs[1], json!({"delete": {"table": t}}));
        assert_eq!(objs[2], json!({"add": {"table": t}}));
        let hooks: Vec<(&str, i64)> = objs
            .iter()
            .filter_map(|o| o.get("add")?.get("chain"))
            .map(|c| (c["hook"].as_str().unwrap(), c["prio"].as_i64().unwrap()))
            .collect();
        assert_eq!(
            hooks,
            [("prerouting", -100), ("output", -100), ("postrouting", 100)]
        );
        let down = serde_json::to_value(teardown_ruleset("vmpod_masq_eth0")).unwrap();
        assert_eq!(
            down,
            json!({"nftables": [{"add": {"table": t}}, {"delete": {"table": t}}]})
        );
    }

    #[test]
    fn rules_read_back_as_lines() {
        let batch = ruleset(&rules(vec![HTTP]));
        let lines: Vec<String> = batch
            .objects
            .iter()
            .filter_map(|o| match o {
                NfObject::CmdObject(NfCmd::Add(NfListObject::Rule(r))) => Some(describe_rule(r)),
                _ => None,
            })
            .collect();
        assert_eq!(
            lines,
            [
                "prerouting: iifname eth0, ip daddr 10.244.0.5, tcp dport 80 -> dnat to 10.0.2.2 [0 packets]",
                "output: ip daddr 127.0.0.1, tcp dport 80 -> dnat to 10.0.2.2 [0 packets]",
                "postrouting: oifname eth0, ip saddr 10.0.2.0/24 -> masquerade [0 packets]",
                "postrouting: oifname k6t-eth0, ip saddr 127.0.0.1 -> snat to 10.0.2.1 [0 packets]",
            ]
        );
    }

    #[test]
    fn ports_parse_and_print() {
        for (text, want) in [("tcp/80", HTTP), ("80", HTTP)] {
            assert_eq!(text.parse::<ForwardPort>().unwrap(), want);
        }
        let dns: ForwardPort = "udp/53".parse().unwrap();
        assert_eq!(dns.to_string(), "udp/53");
        for bad in ["sctp/1", "tcp/0", "tcp/70000", "x"] {
            assert!(bad.parse::<ForwardPort>().is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses_come_from_the_vm_network() {
        let o = MasqueradeOptions::default();
        assert_eq!(o.gateway(), Ipv4Addr::new(10, 0, 2, 1));
        assert_eq!(o.vm_address(), Ipv4Addr::new(10, 0, 2, 2));
        let o = MasqueradeOptions {
            vm_network: IpCidr::new("192.168.7.9".parse().unwrap(), 29),
            ..MasqueradeOptions::default()
        };
        assert_eq!(o.gateway(), Ipv4Addr::new(192, 168, 7, 9));
        assert_eq!(o.vm_address(), Ipv4Addr::new(192, 168, 7, 10));
        assert!(o.check().is_ok());
        let tiny = MasqueradeOptions {
            vm_network: IpCidr::new("10.0.0.0".parse().unwrap(), 31),
            ..MasqueradeOptions::default()
        };
        let (field, why) = tiny.check().unwrap_err();
        assert_eq!(field, "vmNetworkCIDR");
        assert!(why.contains("/31"), "{why}");
    }

    #[test]
    fn the_ipv6_network_is_checked_like_the_ipv4_one() {
        let o = MasqueradeOptions::default();
        assert_eq!(o.vm_network6.to_string(), "fd10:0:2::/120");
        assert!(o.check().is_ok());
        for (net, why) in [
            (
                "fd10:0:2::/127",
                "a /127 has no room for a gateway and a VM (at most /126)",
            ),
            ("10.0.2.0/24", "not an IPv6 network"),
            ("fe80::/64", "not a unicast network"),
            ("ff02::/120", "not a unicast network"),
        ] {
            let o = MasqueradeOptions {
                vm_network6: net.parse().unwrap(),
                ..MasqueradeOptions::default()
            };
            let (field, got) = o.check().unwrap_err();
            assert_eq!(field, "vmIPv6NetworkCIDR");
            assert!(got.contains(why), "{net}: {got}");
        }
        assert!(check_vm_network("fd10::/64".parse().unwrap(), false).is_err());
    }

    /// A dual-stack pod: the IPv6 side gets the same rules as IPv4 (its own payload
    /// protocol and NAT family) but no loopback forwarding; the VM's addresses are the
    /// first two hosts of the IPv6 VM network.
    #[test]
    fn a_dual_stack_pod_gets_the_same_rules_for_ipv6_without_loopback() {
        let o = MasqueradeOptions {
            ports: vec![HTTP],
            ..MasqueradeOptions::default()
        };
        let facts = dual_stack();
        let families = o.nat_addresses("10.244.0.5".parse().unwrap(), &facts);
        assert_eq!(families.len(), 2);
        let v6 = families[1];
        assert_eq!(
            (v6.pod_ip, v6.vm_ip, v6.gateway, v6.vm_network.to_string()),
            (
                "fd00:10:244::5".parse().unwrap(),
                "fd10:0:2::2".parse().unwrap(),
                "fd10:0:2::1".parse().unwrap(),
                "fd10:0:2::/120".to_owned()
            )
        );
        let mut r = rules(vec![HTTP]);
        r.families = families;
        let got = json_rules(&r);
        let chains: Vec<&str> = got.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(
            chains,
            [
                "prerouting",
                "output",
                "postrouting",
                "postrouting",
                "prerouting",
                "postrouting"
            ]
        );
        assert_eq!(
            got[4].1,
            dnat_json("ip6", "fd00:10:244::5", "tcp", 80, "fd10:0:2::2")
        );
        assert_eq!(got[5].1, masquerade_json("ip6", "fd10:0:2::", 120));
        assert_eq!(
            r.to_string(),
            "nft table inet vmpod_masq_eth0: forward tcp/80 of 10.244.0.5 (and 127.0.0.1) to \
             10.0.2.2, masquerade 10.0.2.0/24; fd00:10:244::5 to fd10:0:2::2, masquerade \
             fd10:0:2::/120 out eth0"
        );
        // An IPv4-only pod: IPv4 only.
        let mut v4_only = facts.clone();
        v4_only.addresses.truncate(1);
        assert_eq!(
            o.nat_addresses("10.244.0.5".parse().unwrap(), &v4_only)
                .len(),
            1
        );
        assert!(o.ipv6(&v4_only).is_none());
    }

    #[test]
    fn the_vm_sees_its_private_address_and_the_pods_dns() {
        let facts = InterfaceFacts {
            mtu: 1450,
            ..ipv4_only()
        };
        let vm = MasqueradeOptions::default().vm_facts(&facts);
        assert_eq!(vm.ipv4().unwrap().to_string(), "10.0.2.2/24");
        assert_eq!(vm.gateway4(), Some(Ipv4Addr::new(10, 0, 2, 1)));
        assert_eq!(
            (vm.mtu, &vm.dns, &vm.search),
            (1450, &facts.dns, &facts.search)
        );
        assert_eq!(vm.hostname, "vm-a");
        // A dual-stack pod: the VM's IPv6 address joins; the IPv6 nameserver stays.
        let vm = MasqueradeOptions::default().vm_facts(&dual_stack());
        let v6: Vec<String> = vm.ipv6().map(|a| a.to_string()).collect();
        assert_eq!(v6, ["fd10:0:2::2/120"]);
        assert_eq!(vm.ipv4().unwrap().to_string(), "10.0.2.2/24");
        assert_eq!(vm.dns, dual_stack().dns);
    }
}
