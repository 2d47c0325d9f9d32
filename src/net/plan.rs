//! Planning: from cached facts to the list of operations that rewire (or restore) a pod
//! interface. Pure: no I/O, no randomness, no clock. Same input, same plan, so a rerun
//! after a crash or a restart converges on the same state.
//!
//! A binding is one function from facts to [`NetOp`]s (`plan_bridge`, `plan_masquerade`);
//! where netlink has no verb for something (the masquerade binding's NAT), it has its own
//! `NetOp` variants, and the rest is shared.

use super::antispoof::{self, AntiSpoof};
use super::facts::{Binding, InterfaceFacts, IpCidr, MacAddr, Route, v6};
use super::masquerade::{self, MasqueradeOptions, NatRules};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

/// Longest Linux interface name (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// The address the bridge gets for the DHCP server to speak from.
pub const DEFAULT_BRIDGE_ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 75, 10);

/// The uid QEMU runs as, owner of the tap: KubeVirt's `qemu` user.
pub const DEFAULT_TAP_OWNER: u32 = 107;

/// The bridge of a bridge-bound pod interface: `k6t-<iface>`.
pub fn bridge_name(interface: &str) -> String {
    format!("k6t-{interface}")
}

/// The VM's tap behind a pod interface: `tap-<iface>`. The domain XML names it too.
pub fn tap_name(interface: &str) -> String {
    format!("tap-{interface}")
}

/// One idempotent step. Serializable, so `vmpodctl net plan --json` and the control API
/// can show it, and the cache can record what was applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum NetOp {
    /// Set one of a link's IPv4 settings (`net/ipv4/conf/<link>/<setting>`) through
    /// netlink (`IFLA_AF_SPEC` / `IFLA_INET_CONF`), not `/proc/sys`: container runtimes
    /// mount `/proc/sys` read-only.
    Ipv4Conf {
        link: String,
        setting: Ipv4Setting,
        value: u32,
    },
    /// Set how the kernel makes a link's IPv6 link-local address
    /// (`IFLA_INET6_ADDR_GEN_MODE`); `none`: no address at all. Skipped when the kernel
    /// has IPv6 off.
    Ipv6AddrGenMode { link: String, mode: AddrGenMode },
    /// Remove every IPv6 link-local address from a link; none left is fine.
    DelIpv6LinkLocal { link: String },
    /// Create a bridge (down), or make an existing one have this MTU and MAC.
    CreateBridge {
        name: String,
        mtu: u32,
        mac: MacAddr,
    },
    /// Create a persistent tap with vnet headers, or set the MTU of an existing one.
    CreateTap(TapConfig),
    /// Remove an address from a link; absent already is fine.
    DelAddress { link: String, address: IpCidr },
    /// Add an address to a link (IPv6 without duplicate address detection); present
    /// already is fine.
    AddAddress { link: String, address: IpCidr },
    /// Set a link's MAC address.
    SetMac { link: String, mac: MacAddr },
    /// Enslave `link` to the bridge `master`.
    SetMaster { link: String, master: String },
    /// Bring a link up.
    SetUp { link: String },
    /// Take a link down.
    SetDown { link: String },
    /// Add a route through `link` (on-link when it has no gateway); present is fine.
    AddRoute { link: String, route: Route },
    /// Delete a link; absent already is fine.
    DelLink { name: String },
    /// Install (or re-install) the anti-spoofing rules of a tap: an nftables
    /// bridge-family table (see [`super::antispoof`]).
    AntiSpoof(AntiSpoof),
    /// Remove an nftables bridge-family table; absent already is fine.
    DelNftTable { table: String },
    /// Install (or replace whole) the masquerade binding's nftables table.
    Nat(NatRules),
    /// Remove an `inet` family nftables table (the masquerade NAT); absent already is
    /// fine.
    DelNatTable { table: String },
    /// Set `net/ipv6/conf/all/forwarding` (the masquerade binding's NAT66 routes
    /// between the bridge and the pod interface). IPv6 forwarding has no per-link
    /// switch and no netlink verb: this one writes `/proc/sys`, and only when the value
    /// differs, so a pod whose runtime set the sysctl (`securityContext.sysctls`) needs
    /// no writable `/proc/sys`. Skipped when the kernel has IPv6 off.
    Ipv6Forwarding { value: u32 },
}

impl fmt::Display for NetOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetOp::Ipv4Conf {
                link,
                setting,
                value,
            } => write!(f, "set ipv4 {setting} = {value} on {link}"),
            NetOp::Ipv6AddrGenMode { link, mode } => {
                write!(f, "set ipv6 addrgenmode {mode} on {link}")
            }
            NetOp::DelIpv6LinkLocal { link } => {
                write!(f, "remove ipv6 link-local addresses from {link}")
            }
            NetOp::CreateBridge { name, mtu, mac } => {
                write!(f, "create bridge {name} (mtu {mtu}, mac {mac})")
            }
            NetOp::CreateTap(tap) => write!(f, "create {tap}"),
            NetOp::DelAddress { link, address } => write!(f, "remove {address} from {link}"),
            NetOp::AddAddress { link, address } => write!(f, "add {address} to {link}"),
            NetOp::SetMac { link, mac } => write!(f, "set mac of {link} to {mac}"),
            NetOp::SetMaster { link, master } => write!(f, "enslave {link} to {master}"),
            NetOp::SetUp { link } => write!(f, "set {link} up"),
            NetOp::SetDown { link } => write!(f, "set {link} down"),
            NetOp::AddRoute { link, route } => {
                write!(f, "add route {} ", route.destination)?;
                match route.gateway {
                    Some(gw) => write!(f, "via {gw} dev {link}")?,
                    None => write!(f, "dev {link} scope link")?,
                }
                match route.metric {
                    Some(m) => write!(f, " metric {m}"),
                    None => Ok(()),
                }
            }
            NetOp::DelLink { name } => write!(f, "delete link {name}"),
            NetOp::AntiSpoof(a) => write!(
                f,
                "install anti-spoofing table bridge {} (from {}: mac {}, ipv4 {}; no DHCP across {})",
                a.table, a.tap, a.mac, a.ipv4, a.pod
            ),
            NetOp::DelNftTable { table } => write!(f, "delete nftables table bridge {table}"),
            NetOp::Nat(rules) => write!(f, "install {rules}"),
            NetOp::DelNatTable { table } => write!(f, "delete nft table inet {table}"),
            NetOp::Ipv6Forwarding { value } => {
                write!(f, "set ipv6 forwarding = {value} (net/ipv6/conf/all)")
            }
        }
    }
}

/// The tap [`NetOp::CreateTap`] makes: owned by `owner` (and `group`), with vnet headers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TapConfig {
    pub name: String,
    pub mtu: u32,
    pub owner: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<u32>,
    pub multiqueue: bool,
}

impl fmt::Display for TapConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tap {} (mtu {}, owner uid {}",
            self.name, self.mtu, self.owner
        )?;
        if let Some(g) = self.group {
            write!(f, ", gid {g}")?;
        }
        if self.multiqueue {
            write!(f, ", multiqueue")?;
        }
        write!(f, ", vnet_hdr)")
    }
}

/// The per-link IPv4 settings a plan makes (`IPV4_DEVCONF_*` of `linux/ip.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ipv4Setting {
    /// Route packets arriving on this link that are not for the pod (1 = on). Per link,
    /// so no `net.ipv4.ip_forward`: the kernel checks the receiving link's setting.
    Forwarding,
    /// Allow 127.0.0.0/8 as source or destination on this link (1 = on).
    RouteLocalnet,
    /// Which ARP requests to answer: 1 = only for addresses on the receiving link.
    ArpIgnore,
    /// Which source address ARP requests use: 2 = the best one on the sending link.
    ArpAnnounce,
}

impl Ipv4Setting {
    /// The kernel's `IPV4_DEVCONF_*` number.
    pub fn devconf_id(self) -> u16 {
        match self {
            Ipv4Setting::Forwarding => 1,
            Ipv4Setting::ArpAnnounce => 18,
            Ipv4Setting::ArpIgnore => 19,
            Ipv4Setting::RouteLocalnet => 26,
        }
    }
}

impl fmt::Display for Ipv4Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Ipv4Setting::Forwarding => "forwarding",
            Ipv4Setting::ArpIgnore => "arp_ignore",
            Ipv4Setting::ArpAnnounce => "arp_announce",
            Ipv4Setting::RouteLocalnet => "route_localnet",
        })
    }
}

/// How the kernel makes a link's IPv6 link-local address (`IN6_ADDR_GEN_MODE_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddrGenMode {
    /// From the MAC (the kernel's default).
    #[default]
    Eui64,
    /// No link-local address.
    None,
    /// RFC 7217, from a secret.
    StablePrivacy,
    /// Random.
    Random,
}

impl AddrGenMode {
    /// The kernel's number.
    pub fn to_kernel(self) -> u8 {
        match self {
            AddrGenMode::Eui64 => 0,
            AddrGenMode::None => 1,
            AddrGenMode::StablePrivacy => 2,
            AddrGenMode::Random => 3,
        }
    }

    /// From the kernel's number (`/proc/sys/net/ipv6/conf/<link>/addr_gen_mode`).
    pub fn from_kernel(n: u8) -> Option<Self> {
        [
            AddrGenMode::Eui64,
            AddrGenMode::None,
            AddrGenMode::StablePrivacy,
            AddrGenMode::Random,
        ]
        .into_iter()
        .find(|m| m.to_kernel() == n)
    }
}

impl fmt::Display for AddrGenMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddrGenMode::Eui64 => "eui64",
            AddrGenMode::None => "none",
            AddrGenMode::StablePrivacy => "stable_privacy",
            AddrGenMode::Random => "random",
        })
    }
}

/// Knobs of a plan that do not come from the pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanOptions {
    /// The link-local address the bridge gets (as /32) for the DHCP server.
    pub bridge_address: Ipv4Addr,
    /// The uid QEMU runs as; it must be able to open the tap (KubeVirt's 107 by
    /// default, as the launcher runs QEMU).
    pub tap_owner: u32,
    /// The gid allowed to open the tap, if any.
    pub tap_group: Option<u32>,
    /// Create the tap with IFF_MULTI_QUEUE (for virtio-net queues > 1).
    pub multiqueue: bool,
    /// The MAC of the VM's NIC when the VMI sets `interfaces[].macAddress`; `None`: the
    /// VM takes over the pod's original MAC. The DHCP server answers this MAC only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_mac: Option<MacAddr>,
    /// The masquerade binding's VM network and forwarded ports (unused by bridge).
    #[serde(default)]
    pub masquerade: MasqueradeOptions,
}

impl PlanOptions {
    /// The MAC of the VM's NIC, the one rule: the VMI's `macAddress` when it set one,
    /// else the pod's original MAC (bridge: the VM takes over the pod's identity) or one
    /// derived from it (masquerade: the pod keeps its own).
    pub fn vm_mac(&self, binding: Binding, pod_mac: MacAddr) -> MacAddr {
        self.vm_mac.unwrap_or(match binding {
            Binding::Bridge => pod_mac,
            Binding::Masquerade => derived_mac(pod_mac, "vm"),
        })
    }
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            bridge_address: DEFAULT_BRIDGE_ADDRESS,
            tap_owner: DEFAULT_TAP_OWNER,
            tap_group: None,
            multiqueue: false,
            vm_mac: None,
            masquerade: MasqueradeOptions::default(),
        }
    }
}

/// What the pod interface looked like before setup, beyond the facts the VM needs;
/// teardown puts it back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OriginalSettings {
    /// `net/ipv6/conf/<iface>/disable_ipv6` was 1 (or the kernel has no IPv6).
    pub ipv6_disabled: bool,
    /// How the pod interface made its IPv6 link-local address.
    #[serde(default)]
    pub addr_gen_mode: AddrGenMode,
    /// `net/ipv4/conf/<iface>/forwarding` (masquerade turns it on).
    #[serde(default)]
    pub ipv4_forwarding: u32,
    /// `net/ipv6/conf/all/forwarding` (masquerade in a pod with IPv6 turns it on).
    #[serde(default)]
    pub ipv6_forwarding: u32,
}

/// Why no plan can be made for these facts.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// Every binding needs the pod's IPv4 address.
    #[error(transparent)]
    NoIpv4(#[from] super::facts::NoIpv4),
    /// Linux link names are at most 15 bytes.
    #[error(
        "link name {name:?} derived from pod interface {interface} is longer than {MAX_IFNAME} bytes"
    )]
    NameTooLong { interface: String, name: String },
    /// The masquerade binding's VM network (the VMI's `field`) cannot hold a gateway
    /// and a VM.
    #[error("pod interface {interface}: {field} {reason}")]
    VmNetwork {
        interface: String,
        field: &'static str,
        reason: String,
    },
}

/// The ops that wire `facts.interface` for `binding`.
pub fn plan(
    facts: &InterfaceFacts,
    binding: Binding,
    opts: &PlanOptions,
    original: OriginalSettings,
) -> Result<Vec<NetOp>, PlanError> {
    match binding {
        Binding::Bridge => plan_bridge(facts, opts, original),
        Binding::Masquerade => plan_masquerade(facts, opts),
    }
}

/// The ops that undo [`plan`]: remove what it created and give the pod interface back
/// its MAC, addresses and routes.
pub fn plan_teardown(
    facts: &InterfaceFacts,
    binding: Binding,
    original: OriginalSettings,
) -> Result<Vec<NetOp>, PlanError> {
    let (bridge, tap) = link_names(facts)?;
    let pod = facts.interface.as_str();
    let mut ops = vec![NetOp::DelNftTable {
        table: antispoof::table_name(pod),
    }];
    if binding == Binding::Masquerade {
        ops.push(NetOp::DelNatTable {
            table: masquerade::table_name(pod),
        });
    }
    // With the bridge binding, deleting the bridge releases the pod interface.
    ops.extend([
        NetOp::DelLink { name: tap },
        NetOp::DelLink { name: bridge },
    ]);
    ops.extend(match binding {
        Binding::Bridge => restore_pod_interface(facts, original),
        Binding::Masquerade => restore_forwarding(facts, original),
    });
    Ok(ops)
}

fn link_names(facts: &InterfaceFacts) -> Result<(String, String), PlanError> {
    let names = (bridge_name(&facts.interface), tap_name(&facts.interface));
    for name in [&names.0, &names.1] {
        if name.len() > MAX_IFNAME {
            return Err(PlanError::NameTooLong {
                interface: facts.interface.clone(),
                name: name.clone(),
            });
        }
    }
    Ok(names)
}

fn ipv4_conf(link: &str, setting: Ipv4Setting, value: u32) -> NetOp {
    NetOp::Ipv4Conf {
        link: link.to_owned(),
        setting,
        value,
    }
}

fn addr_gen_mode(link: &str, mode: AddrGenMode) -> NetOp {
    NetOp::Ipv6AddrGenMode {
        link: link.to_owned(),
        mode,
    }
}

fn plan_bridge(
    facts: &InterfaceFacts,
    opts: &PlanOptions,
    original: OriginalSettings,
) -> Result<Vec<NetOp>, PlanError> {
    let ipv4 = facts.pod_ipv4()?.addr();
    let (bridge, tap) = link_names(facts)?;
    let pod = facts.interface.as_str();
    let mut ops = create_bridge(facts, &bridge).to_vec();
    // Answer ARP only for addresses on the bridge itself (the DHCP server's), never
    // for the VM's.
    ops.extend([
        ipv4_conf(&bridge, Ipv4Setting::ArpIgnore, 1),
        ipv4_conf(&bridge, Ipv4Setting::ArpAnnounce, 2),
    ]);
    ops.extend(create_tap(facts, opts, &tap));
    ops.extend(facts.addresses.iter().map(|&address| NetOp::DelAddress {
        link: pod.to_owned(),
        address,
    }));
    if !original.ipv6_disabled {
        // The pod interface's link-local address derives from the original MAC, which
        // the VM now uses: none is made again, and the one there goes.
        ops.push(addr_gen_mode(pod, AddrGenMode::None));
        ops.push(NetOp::DelIpv6LinkLocal {
            link: pod.to_owned(),
        });
    }
    ops.extend([
        NetOp::SetMac {
            link: pod.to_owned(),
            mac: derived_mac(facts.mac, "pod"),
        },
        NetOp::SetMaster {
            link: pod.to_owned(),
            master: bridge.clone(),
        },
        NetOp::SetMaster {
            link: tap.clone(),
            master: bridge.clone(),
        },
        // Before the tap and the pod interface go up: the VM's first frame already
        // meets the rules.
        anti_spoof(
            facts,
            Binding::Bridge,
            opts,
            ipv4,
            super::ipv6::vm_addresses(facts),
        ),
        NetOp::AddAddress {
            link: bridge.clone(),
            address: IpCidr::new(IpAddr::V4(opts.bridge_address), 32),
        },
    ]);
    ops.extend(super::ipv6::bridge_link_local_op(facts, &bridge));
    ops.extend([
        NetOp::SetUp { link: bridge },
        NetOp::SetUp { link: tap },
        NetOp::SetUp {
            link: pod.to_owned(),
        },
    ]);
    Ok(ops)
}

/// The tap's anti-spoofing rules (both bindings): only the VM's MAC and `vm_ipv4` may
/// send from the tap. Planned before the tap goes up.
fn anti_spoof(
    facts: &InterfaceFacts,
    binding: Binding,
    opts: &PlanOptions,
    vm_ipv4: Ipv4Addr,
    vm_ipv6: Vec<std::net::Ipv6Addr>,
) -> NetOp {
    let pod = facts.interface.as_str();
    NetOp::AntiSpoof(AntiSpoof {
        table: antispoof::table_name(pod),
        tap: tap_name(pod),
        pod: pod.to_owned(),
        mac: opts.vm_mac(binding, facts.mac),
        ipv4: vm_ipv4,
        ipv6: vm_ipv6,
    })
}

/// The bridge, made before it goes up with no IPv6 link-local address (nothing in
/// the pod speaks IPv6 on it yet; see the module docs).
fn create_bridge(facts: &InterfaceFacts, bridge: &str) -> [NetOp; 2] {
    [
        NetOp::CreateBridge {
            name: bridge.to_owned(),
            mtu: facts.mtu,
            mac: derived_mac(facts.mac, "bridge"),
        },
        addr_gen_mode(bridge, AddrGenMode::None),
    ]
}

/// The VM's tap, owned by QEMU's user, without an IPv6 link-local address.
fn create_tap(facts: &InterfaceFacts, opts: &PlanOptions, tap: &str) -> [NetOp; 2] {
    [
        NetOp::CreateTap(TapConfig {
            name: tap.to_owned(),
            mtu: facts.mtu,
            owner: opts.tap_owner,
            group: opts.tap_group,
            multiqueue: opts.multiqueue,
        }),
        addr_gen_mode(tap, AddrGenMode::None),
    ]
}

/// Masquerade: the pod interface keeps its IP and MAC; the bridge holds the gateway of
/// the VM's private network, the tap is its only port, and the pod routes between them
/// with NAT (see [`super::masquerade`]).
fn plan_masquerade(facts: &InterfaceFacts, opts: &PlanOptions) -> Result<Vec<NetOp>, PlanError> {
    let pod_ip = facts.pod_ipv4()?.addr();
    let m = &opts.masquerade;
    m.check().map_err(|(field, reason)| PlanError::VmNetwork {
        interface: facts.interface.clone(),
        field,
        reason,
    })?;
    let (bridge, tap) = link_names(facts)?;
    let pod = facts.interface.as_str();
    let families = m.nat_addresses(pod_ip, facts);
    let mut ops = create_bridge(facts, &bridge).to_vec();
    ops.extend(create_tap(facts, opts, &tap));
    ops.push(NetOp::SetMaster {
        link: tap.clone(),
        master: bridge.clone(),
    });
    // The VM's private addresses (IPv6 too in a dual-stack pod) are the only ones the
    // tap lets through, besides the link-local and `::`.
    let vm_ipv6 = families.iter().filter_map(|a| v6(a.vm_ip));
    ops.push(anti_spoof(
        facts,
        Binding::Masquerade,
        opts,
        m.vm_address(),
        vm_ipv6.collect(),
    ));
    // The gateway of each family on the bridge; with IPv6, the link-local address the
    // router advertisements come from too, and IPv6 forwarding.
    ops.extend(families.iter().map(|a| NetOp::AddAddress {
        link: bridge.clone(),
        address: IpCidr::new(a.gateway, a.vm_network.prefix),
    }));
    if families.iter().any(|a| a.pod_ip.is_ipv6()) {
        ops.extend(super::ipv6::bridge_link_local_op(facts, &bridge));
        ops.push(NetOp::Ipv6Forwarding { value: 1 });
    }
    ops.extend([
        ipv4_conf(&bridge, Ipv4Setting::Forwarding, 1),
        // A connection to 127.0.0.1:<port> DNATed to the VM leaves through the bridge
        // with its loopback source until postrouting rewrites it.
        ipv4_conf(&bridge, Ipv4Setting::RouteLocalnet, 1),
        ipv4_conf(pod, Ipv4Setting::Forwarding, 1),
        NetOp::SetUp {
            link: bridge.clone(),
        },
        NetOp::SetUp { link: tap },
        NetOp::Nat(NatRules {
            table: masquerade::table_name(pod),
            pod_interface: pod.to_owned(),
            bridge,
            families,
            ports: m.ports.clone(),
        }),
    ]);
    Ok(ops)
}

/// Masquerade's teardown after the links: the forwarding it turned on, as it was.
fn restore_forwarding(facts: &InterfaceFacts, original: OriginalSettings) -> Vec<NetOp> {
    let mut ops = vec![ipv4_conf(
        &facts.interface,
        Ipv4Setting::Forwarding,
        original.ipv4_forwarding,
    )];
    if facts.ipv6().next().is_some() {
        ops.push(NetOp::Ipv6Forwarding {
            value: original.ipv6_forwarding,
        });
    }
    ops
}

/// The bridge binding's teardown after the links: the pod interface gets back its MAC,
/// link-local address, addresses and routes.
fn restore_pod_interface(facts: &InterfaceFacts, original: OriginalSettings) -> Vec<NetOp> {
    let pod = facts.interface.as_str();
    let mut ops = vec![NetOp::SetMac {
        link: pod.to_owned(),
        mac: facts.mac,
    }];
    if !original.ipv6_disabled {
        // The kernel makes a link-local address when a link comes up: down and up again
        // with the original mode and MAC gives back the original one.
        ops.extend([
            addr_gen_mode(pod, original.addr_gen_mode),
            NetOp::SetDown {
                link: pod.to_owned(),
            },
        ]);
    }
    ops.push(NetOp::SetUp {
        link: pod.to_owned(),
    });
    ops.extend(facts.addresses.iter().map(|&address| NetOp::AddAddress {
        link: pod.to_owned(),
        address,
    }));
    ops.extend(
        restore_order(&facts.routes)
            .into_iter()
            .map(|route| NetOp::AddRoute {
                link: pod.to_owned(),
                route: route.clone(),
            }),
    );
    ops
}

/// Routes in an order the kernel accepts: on-link routes (e.g. Calico's
/// `169.254.1.1 dev eth0 scope link`) before routes through a gateway they make
/// reachable; within each group, as discovered.
pub fn restore_order(routes: &[Route]) -> Vec<&Route> {
    let (onlink, via): (Vec<&Route>, Vec<&Route>) =
        routes.iter().partition(|r| r.gateway.is_none());
    onlink.into_iter().chain(via).collect()
}

/// A locally administered unicast MAC derived from the pod's MAC and a purpose: looks
/// random, never equals the original, and is the same on every run (FNV-1a), so a rerun
/// does not churn the MAC.
pub fn derived_mac(original: MacAddr, purpose: &str) -> MacAddr {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in original.0.iter().chain(purpose.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let bytes = h.to_be_bytes();
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&bytes[2..]);
    mac[0] = (mac[0] & 0xfe) | 0x02;
    if mac == original.0 {
        mac[5] ^= 0x01;
    }
    MacAddr(mac)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn route(dst: &str, gw: Option<&str>, metric: Option<u32>) -> Route {
        Route {
            destination: dst.parse::<IpCidr>().unwrap(),
            gateway: gw.map(|g| g.parse().unwrap()),
            metric,
        }
    }

    /// The pod interface the net tests plan for: `eth0` with one IPv4 address, a
    /// default route and one nameserver.
    pub(crate) fn ipv4_only() -> InterfaceFacts {
        InterfaceFacts {
            interface: "eth0".into(),
            mac: "0a:58:0a:f4:00:05".parse().unwrap(),
            mtu: 1500,
            addresses: vec!["10.244.0.5/24".parse::<IpCidr>().unwrap()],
            routes: vec![route("0.0.0.0/0", Some("10.244.0.1"), None)],
            dns: vec!["10.96.0.10".parse().unwrap()],
            search: vec!["default.svc.cluster.local".into()],
            hostname: "vm-a".into(),
        }
    }

    /// [`ipv4_only`] in a dual-stack pod: an IPv6 address and nameserver too.
    pub(crate) fn dual_stack() -> InterfaceFacts {
        let mut f = ipv4_only();
        f.addresses
            .push("fd00:10:244::5/64".parse::<IpCidr>().unwrap());
        f.dns.push("fd00:96::a".parse().unwrap());
        f
    }

    /// The anti-spoofing op of a plan.
    pub(crate) fn anti_spoof_op(ops: &[NetOp]) -> &AntiSpoof {
        ops.iter()
            .find_map(|o| match o {
                NetOp::AntiSpoof(a) => Some(a),
                _ => None,
            })
            .expect("no anti-spoofing op in the plan")
    }

    /// The bridge binding's plan for `facts`, with default options.
    pub(crate) fn ops_of(facts: &InterfaceFacts) -> Vec<NetOp> {
        plan(
            facts,
            Binding::Bridge,
            &PlanOptions::default(),
            OriginalSettings::default(),
        )
        .unwrap()
    }

    fn position(ops: &[NetOp], want: impl Fn(&NetOp) -> bool) -> usize {
        ops.iter().position(want).expect("op missing from plan")
    }

    #[test]
    fn ipv4_only_bridge_plan() {
        let f = ipv4_only();
        let ops = ops_of(&f);
        let bridge_mac = derived_mac(f.mac, "bridge");
        let pod_mac = derived_mac(f.mac, "pod");
        assert_eq!(
            ops,
            vec![
                NetOp::CreateBridge {
                    name: "k6t-eth0".into(),
                    mtu: 1500,
                    mac: bridge_mac
                },
                addr_gen_mode("k6t-eth0", AddrGenMode::None),
                ipv4_conf("k6t-eth0", Ipv4Setting::ArpIgnore, 1),
                ipv4_conf("k6t-eth0", Ipv4Setting::ArpAnnounce, 2),
                NetOp::CreateTap(TapConfig {
                    name: "tap-eth0".into(),
                    mtu: 1500,
                    owner: 107,
                    group: None,
                    multiqueue: false
                }),
                addr_gen_mode("tap-eth0", AddrGenMode::None),
                NetOp::DelAddress {
                    link: "eth0".into(),
                    address: "10.244.0.5/24".parse::<IpCidr>().unwrap()
                },
                addr_gen_mode("eth0", AddrGenMode::None),
                NetOp::DelIpv6LinkLocal {
                    link: "eth0".into()
                },
                NetOp::SetMac {
                    link: "eth0".into(),
                    mac: pod_mac
                },
                NetOp::SetMaster {
                    link: "eth0".into(),
                    master: "k6t-eth0".into()
                },
                NetOp::SetMaster {
                    link: "tap-eth0".into(),
                    master: "k6t-eth0".into()
                },
                NetOp::AntiSpoof(AntiSpoof {
                    table: "vmpod-as-eth0".into(),
                    tap: "tap-eth0".into(),
                    pod: "eth0".into(),
                    mac: f.mac,
                    ipv4: Ipv4Addr::new(10, 244, 0, 5),
                    ipv6: vec![],
                }),
                NetOp::AddAddress {
                    link: "k6t-eth0".into(),
                    address: "169.254.75.10/32".parse::<IpCidr>().unwrap()
                },
                NetOp::SetUp {
                    link: "k6t-eth0".into()
                },
                NetOp::SetUp {
                    link: "tap-eth0".into()
                },
                NetOp::SetUp {
                    link: "eth0".into()
                },
            ]
        );
        // The pod interface's new MAC is local, not the VM's, and not the bridge's.
        assert!(pod_mac.is_local() && pod_mac != f.mac && pod_mac != bridge_mac);
        assert_eq!(pod_mac.0[0] & 1, 0, "unicast");
        // Pure: the same input gives the same plan.
        assert_eq!(ops, ops_of(&f));
    }

    #[test]
    fn dual_stack_removes_both_families_and_restores_them() {
        let mut f = ipv4_only();
        f.addresses
            .push("fd00:10:244::5/64".parse::<IpCidr>().unwrap());
        f.routes.push(route("::/0", Some("fe80::1"), Some(1024)));
        let ops = ops_of(&f);
        for a in &f.addresses {
            assert!(ops.contains(&NetOp::DelAddress {
                link: "eth0".into(),
                address: *a
            }));
        }
        // The pod keeps the IPv6 facts; teardown gives them back after the link-local
        // address: original mode, down, up.
        let original = OriginalSettings {
            addr_gen_mode: AddrGenMode::StablePrivacy,
            ..OriginalSettings::default()
        };
        let down = plan_teardown(&f, Binding::Bridge, original).unwrap();
        let mode = position(&down, |o| {
            *o == addr_gen_mode("eth0", AddrGenMode::StablePrivacy)
        });
        let link_down = position(&down, |o| {
            *o == NetOp::SetDown {
                link: "eth0".into(),
            }
        });
        let enable = position(&down, |o| {
            *o == NetOp::SetUp {
                link: "eth0".into(),
            }
        });
        assert!(mode < link_down && link_down < enable);
        let add6 = position(
            &down,
            |o| matches!(o, NetOp::AddAddress { address, .. } if address.addr.is_ipv6()),
        );
        let route6 = position(
            &down,
            |o| matches!(o, NetOp::AddRoute { route, .. } if route.destination.addr.is_ipv6()),
        );
        assert!(enable < add6 && add6 < route6);
        assert_eq!(f.gateway6(), Some("fe80::1".parse().unwrap()));
    }

    #[test]
    fn ipv6_already_disabled_is_left_alone() {
        let f = ipv4_only();
        let orig = OriginalSettings {
            ipv6_disabled: true,
            ..OriginalSettings::default()
        };
        let touches_eth0_v6 = |o: &NetOp| matches!(o, NetOp::Ipv6AddrGenMode { link, .. } | NetOp::DelIpv6LinkLocal { link } if link == "eth0");
        let ops = plan(&f, Binding::Bridge, &PlanOptions::default(), orig).unwrap();
        assert!(!ops.iter().any(touches_eth0_v6), "{ops:?}");
        let down = plan_teardown(&f, Binding::Bridge, orig).unwrap();
        assert!(!down.iter().any(touches_eth0_v6), "{down:?}");
        assert!(!down.iter().any(|o| matches!(o, NetOp::SetDown { .. })));
    }

    #[test]
    fn extra_routes_are_restored_after_addresses() {
        let mut f = ipv4_only();
        f.routes
            .push(route("10.96.0.0/12", Some("10.244.0.1"), Some(100)));
        f.routes.push(route("192.168.50.0/24", None, None));
        // Setup does not touch routes: they vanish with the addresses and the VM gets
        // them by DHCP.
        assert!(
            !ops_of(&f)
                .iter()
                .any(|o| matches!(o, NetOp::AddRoute { .. }))
        );
        let down = plan_teardown(&f, Binding::Bridge, OriginalSettings::default()).unwrap();
        let routes: Vec<&Route> = down
            .iter()
            .filter_map(|o| match o {
                NetOp::AddRoute { route, .. } => Some(route),
                _ => None,
            })
            .collect();
        assert_eq!(routes, vec![&f.routes[2], &f.routes[0], &f.routes[1]]);
        let last_addr = down
            .iter()
            .rposition(|o| matches!(o, NetOp::AddAddress { .. }))
            .unwrap();
        let first_route = position(&down, |o| matches!(o, NetOp::AddRoute { .. }));
        assert!(last_addr < first_route);
    }

    #[test]
    fn slash32_with_link_local_gateway_restores_onlink_route_first() {
        let mut f = ipv4_only();
        f.addresses = vec!["10.10.3.7/32".parse::<IpCidr>().unwrap()];
        f.routes = vec![
            route("0.0.0.0/0", Some("169.254.1.1"), None),
            route("169.254.1.1/32", None, None),
        ];
        let ops = ops_of(&f);
        assert!(ops.contains(&NetOp::DelAddress {
            link: "eth0".into(),
            address: "10.10.3.7/32".parse::<IpCidr>().unwrap()
        }));
        let down = plan_teardown(&f, Binding::Bridge, OriginalSettings::default()).unwrap();
        let onlink = position(
            &down,
            |o| matches!(o, NetOp::AddRoute { route, .. } if route.gateway.is_none()),
        );
        let default = position(
            &down,
            |o| matches!(o, NetOp::AddRoute { route, .. } if route.destination.is_default()),
        );
        assert!(
            onlink < default,
            "the gateway must be reachable before the default route"
        );
        assert_eq!(f.gateway4(), Some(Ipv4Addr::new(169, 254, 1, 1)));
    }

    #[test]
    fn mtu_is_carried_to_bridge_and_tap() {
        for mtu in [1450, 9000] {
            let mut f = ipv4_only();
            f.mtu = mtu;
            let ops = ops_of(&f);
            let mtus: Vec<u32> =
                ops.iter()
                    .filter_map(|o| match o {
                        NetOp::CreateBridge { mtu, .. }
                        | NetOp::CreateTap(TapConfig { mtu, .. }) => Some(*mtu),
                        _ => None,
                    })
                    .collect();
            assert_eq!(mtus, vec![mtu, mtu]);
        }
    }

    #[test]
    fn no_default_gateway_still_plans() {
        let mut f = ipv4_only();
        f.routes.clear();
        assert_eq!(f.gateway4(), None);
        let ops = ops_of(&f);
        assert!(ops.contains(&NetOp::SetMaster {
            link: "eth0".into(),
            master: "k6t-eth0".into()
        }));
        let down = plan_teardown(&f, Binding::Bridge, OriginalSettings::default()).unwrap();
        assert!(!down.iter().any(|o| matches!(o, NetOp::AddRoute { .. })));
    }

    #[test]
    fn options_reach_the_tap_and_bridge_address() {
        let opts = PlanOptions {
            bridge_address: Ipv4Addr::new(169, 254, 99, 1),
            tap_owner: 107,
            tap_group: Some(107),
            multiqueue: true,
            vm_mac: Some(MacAddr([0x02, 0, 0, 0, 0, 0x42])),
            masquerade: MasqueradeOptions::default(),
        };
        let ops = plan(
            &ipv4_only(),
            Binding::Bridge,
            &opts,
            OriginalSettings::default(),
        )
        .unwrap();
        assert!(ops.contains(&NetOp::CreateTap(TapConfig {
            name: "tap-eth0".into(),
            mtu: 1500,
            owner: 107,
            group: Some(107),
            multiqueue: true
        })));
        assert!(ops.contains(&NetOp::AddAddress {
            link: "k6t-eth0".into(),
            address: "169.254.99.1/32".parse::<IpCidr>().unwrap()
        }));
        // The VMI's macAddress is the only source MAC the tap lets through.
        assert!(ops.iter().any(
            |o| matches!(o, NetOp::AntiSpoof(a) if a.mac == MacAddr([0x02, 0, 0, 0, 0, 0x42]))
        ));
    }

    #[test]
    fn refuses_without_ipv4_or_with_long_names() {
        let mut f = ipv4_only();
        f.addresses = vec!["fd00::5/64".parse::<IpCidr>().unwrap()];
        assert_eq!(
            plan(
                &f,
                Binding::Bridge,
                &PlanOptions::default(),
                OriginalSettings::default()
            ),
            Err(PlanError::NoIpv4(crate::net::NoIpv4 {
                interface: "eth0".into(),
                found: "fd00::5/64".into()
            }))
        );
        let mut f = ipv4_only();
        f.interface = "averylongname".into();
        let err = plan(
            &f,
            Binding::Bridge,
            &PlanOptions::default(),
            OriginalSettings::default(),
        )
        .unwrap_err();
        assert!(
            matches!(err, PlanError::NameTooLong { ref name, .. } if name == "k6t-averylongname")
        );
    }

    #[test]
    fn teardown_undoes_setup() {
        let f = ipv4_only();
        let down = plan_teardown(&f, Binding::Bridge, OriginalSettings::default()).unwrap();
        assert_eq!(
            &down[..4],
            &[
                NetOp::DelNftTable {
                    table: "vmpod-as-eth0".into()
                },
                NetOp::DelLink {
                    name: "tap-eth0".into()
                },
                NetOp::DelLink {
                    name: "k6t-eth0".into()
                },
                NetOp::SetMac {
                    link: "eth0".into(),
                    mac: f.mac
                },
            ]
        );
        assert!(down.contains(&NetOp::AddAddress {
            link: "eth0".into(),
            address: "10.244.0.5/24".parse::<IpCidr>().unwrap()
        }));
    }

    #[test]
    fn ops_serialize_as_tagged_json() {
        let op = NetOp::SetMaster {
            link: "eth0".into(),
            master: "k6t-eth0".into(),
        };
        let j = serde_json::to_value(&op).unwrap();
        assert_eq!(
            j,
            serde_json::json!({"op": "setMaster", "link": "eth0", "master": "k6t-eth0"})
        );
        let all = ops_of(&ipv4_only());
        let back: Vec<NetOp> = serde_json::from_str(&serde_json::to_string(&all).unwrap()).unwrap();
        assert_eq!(back, all);
        assert_eq!(op.to_string(), "enslave eth0 to k6t-eth0");
        assert_eq!(
            serde_json::to_value(ipv4_conf("k6t-eth0", Ipv4Setting::ArpIgnore, 1)).unwrap(),
            serde_json::json!({"op": "ipv4Conf", "link": "k6t-eth0", "setting": "arp_ignore", "value": 1})
        );
        assert_eq!(
            addr_gen_mode("eth0", AddrGenMode::None).to_string(),
            "set ipv6 addrgenmode none on eth0"
        );
        let [tap, _] = create_tap(&ipv4_only(), &PlanOptions::default(), "tap-eth0");
        assert_eq!(
            serde_json::to_value(&tap).unwrap(),
            serde_json::json!({"op": "createTap", "name": "tap-eth0", "mtu": 1500, "owner": 107, "multiqueue": false})
        );
        assert_eq!(
            tap.to_string(),
            "create tap tap-eth0 (mtu 1500, owner uid 107, vnet_hdr)"
        );
    }

    #[test]
    fn kernel_numbers() {
        assert_eq!(Ipv4Setting::ArpIgnore.devconf_id(), 19);
        assert_eq!(Ipv4Setting::ArpAnnounce.devconf_id(), 18);
        assert_eq!(Ipv4Setting::Forwarding.devconf_id(), 1);
        assert_eq!(Ipv4Setting::RouteLocalnet.devconf_id(), 26);
        for n in 0..4 {
            assert_eq!(AddrGenMode::from_kernel(n).unwrap().to_kernel(), n);
        }
        assert_eq!(AddrGenMode::from_kernel(1), Some(AddrGenMode::None));
        assert_eq!(AddrGenMode::from_kernel(9), None);
    }

    #[test]
    fn masquerade_keeps_the_pod_interface_and_nats_behind_it() {
        let f = ipv4_only();
        let mut opts = PlanOptions::default();
        opts.masquerade.ports = vec!["tcp/80".parse().unwrap()];
        let ops = plan(&f, Binding::Masquerade, &opts, OriginalSettings::default()).unwrap();
        // eth0 keeps its IP and MAC: nothing removes or changes them, nothing enslaves it.
        assert!(!ops.iter().any(|o| matches!(o,
            NetOp::DelAddress { link, .. } | NetOp::SetMac { link, .. }
            | NetOp::SetMaster { link, .. } | NetOp::DelIpv6LinkLocal { link } if link == "eth0")));
        assert!(ops.contains(&NetOp::SetMaster {
            link: "tap-eth0".into(),
            master: "k6t-eth0".into()
        }));
        assert!(ops.contains(&NetOp::AddAddress {
            link: "k6t-eth0".into(),
            address: "10.0.2.1/24".parse::<IpCidr>().unwrap()
        }));
        for (link, setting) in [
            ("k6t-eth0", Ipv4Setting::Forwarding),
            ("eth0", Ipv4Setting::Forwarding),
            ("k6t-eth0", Ipv4Setting::RouteLocalnet),
        ] {
            assert!(
                ops.contains(&ipv4_conf(link, setting, 1)),
                "{link} {setting}"
            );
        }
        // The tap's anti-spoofing, the bridge binding's op with the VM's private address
        // and derived MAC, in place before the tap goes up.
        let spoof = position(&ops, |o| {
            *o == NetOp::AntiSpoof(AntiSpoof {
                table: "vmpod-as-eth0".into(),
                tap: "tap-eth0".into(),
                pod: "eth0".into(),
                mac: derived_mac(f.mac, "vm"),
                ipv4: Ipv4Addr::new(10, 0, 2, 2),
                ipv6: Vec::new(),
            })
        });
        let tap_up = position(&ops, |o| {
            *o == NetOp::SetUp {
                link: "tap-eth0".into(),
            }
        });
        assert!(spoof < tap_up, "{ops:?}");
        let NetOp::Nat(rules) = ops.last().unwrap() else {
            panic!("the NAT rules come last, once the links are up: {ops:?}");
        };
        assert_eq!(rules.families.len(), 1, "an IPv4-only pod: {rules:?}");
        assert_eq!(
            (
                rules.families[0].pod_ip,
                rules.families[0].vm_ip,
                rules.families[0].gateway
            ),
            (
                "10.244.0.5".parse().unwrap(),
                "10.0.2.2".parse().unwrap(),
                "10.0.2.1".parse().unwrap()
            )
        );
        assert!(
            !ops.iter()
                .any(|o| matches!(o, NetOp::Ipv6Forwarding { .. }))
        );
        assert_eq!(rules.table, "vmpod_masq_eth0");
        assert_eq!(rules.ports, opts.masquerade.ports);
        assert_eq!(
            ops,
            plan(&f, Binding::Masquerade, &opts, OriginalSettings::default()).unwrap()
        );
        let back: Vec<NetOp> = serde_json::from_str(&serde_json::to_string(&ops).unwrap()).unwrap();
        assert_eq!(back, ops);
    }

    #[test]
    fn masquerade_teardown_drops_table_links_and_forwarding() {
        let f = ipv4_only();
        let original = OriginalSettings {
            ipv4_forwarding: 0,
            ..OriginalSettings::default()
        };
        let down = plan_teardown(&f, Binding::Masquerade, original).unwrap();
        assert_eq!(
            down,
            vec![
                NetOp::DelNftTable {
                    table: "vmpod-as-eth0".into()
                },
                NetOp::DelNatTable {
                    table: "vmpod_masq_eth0".into()
                },
                NetOp::DelLink {
                    name: "tap-eth0".into()
                },
                NetOp::DelLink {
                    name: "k6t-eth0".into()
                },
                ipv4_conf("eth0", Ipv4Setting::Forwarding, 0),
            ]
        );
    }

    /// A dual-stack pod: the bridge holds both gateways and the link-local address the
    /// RAs come from, IPv6 forwarding goes on, the tap lets the VM's private IPv6
    /// address through, the NAT covers both families; teardown restores forwarding.
    #[test]
    fn masquerade_in_a_dual_stack_pod_adds_the_ipv6_side() {
        let f = dual_stack();
        let opts = PlanOptions::default();
        let ops = plan(&f, Binding::Masquerade, &opts, OriginalSettings::default()).unwrap();
        let bridge_addrs: Vec<String> = ops
            .iter()
            .filter_map(|o| match o {
                NetOp::AddAddress { link, address } if link == "k6t-eth0" => {
                    Some(address.to_string())
                }
                _ => None,
            })
            .collect();
        let ll = super::super::ipv6::bridge_link_local(&f);
        assert_eq!(
            bridge_addrs,
            [
                "10.0.2.1/24".to_owned(),
                "fd10:0:2::1/120".to_owned(),
                format!("{ll}/64")
            ]
        );
        let forwarding = position(&ops, |o| *o == NetOp::Ipv6Forwarding { value: 1 });
        let nat = position(&ops, |o| matches!(o, NetOp::Nat(_)));
        assert!(forwarding < nat);
        let spoof = anti_spoof_op(&ops);
        assert_eq!(
            spoof.ipv6,
            ["fd10:0:2::2".parse::<std::net::Ipv6Addr>().unwrap()]
        );
        let NetOp::Nat(rules) = &ops[nat] else {
            unreachable!()
        };
        let pods: Vec<IpAddr> = rules.families.iter().map(|a| a.pod_ip).collect();
        assert_eq!(
            pods,
            [
                "10.244.0.5".parse::<IpAddr>().unwrap(),
                "fd00:10:244::5".parse().unwrap()
            ]
        );
        let original = OriginalSettings {
            ipv6_forwarding: 0,
            ..OriginalSettings::default()
        };
        let down = plan_teardown(&f, Binding::Masquerade, original).unwrap();
        assert_eq!(down.last(), Some(&NetOp::Ipv6Forwarding { value: 0 }));
        // The VMI's vmIPv6NetworkCIDR moves both addresses.
        let mut opts = PlanOptions::default();
        opts.masquerade.vm_network6 = "fd99::/64".parse().unwrap();
        let ops = plan(&f, Binding::Masquerade, &opts, OriginalSettings::default()).unwrap();
        assert!(ops.contains(&NetOp::AddAddress {
            link: "k6t-eth0".into(),
            address: "fd99::1/64".parse::<IpCidr>().unwrap()
        }));
        opts.masquerade.vm_network6 = "fd99::/127".parse().unwrap();
        let err = plan(&f, Binding::Masquerade, &opts, OriginalSettings::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pod interface eth0: vmIPv6NetworkCIDR fd99::/127: a /127 has no room for a \
             gateway and a VM (at most /126)"
        );
    }

    #[test]
    fn masquerade_refuses_a_vm_network_without_room() {
        let mut opts = PlanOptions::default();
        opts.masquerade.vm_network = "10.0.2.0/31".parse::<IpCidr>().unwrap();
        let err = plan(
            &ipv4_only(),
            Binding::Masquerade,
            &opts,
            OriginalSettings::default(),
        )
        .unwrap_err();
        assert!(matches!(err, PlanError::VmNetwork { .. }), "{err}");
    }

    #[test]
    fn derived_macs_are_stable_local_unicast() {
        let m: MacAddr = "02:00:00:00:00:01".parse().unwrap();
        let a = derived_mac(m, "pod");
        assert_eq!(a, derived_mac(m, "pod"));
        assert_ne!(a, derived_mac(m, "bridge"));
        assert!(a.is_local() && a.0[0] & 1 == 0 && a != m);
    }
}
