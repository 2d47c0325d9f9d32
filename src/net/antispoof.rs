//! Anti-spoofing on the VM's tap: one nftables **bridge**-family table per bridged pod
//! interface (`vmpod-as-<iface>`), built here as nft JSON (the `nftables` crate's
//! schema, applied by the `nft` binary reading JSON: no rule text is ever assembled as
//! a string), installed by `net setup` before the tap carries a frame, removed by
//! teardown. This module owns the rule set, its counters and reading them back.
//!
//! What the rules allow from the tap (hook `prerouting`, so frames to the bridge itself,
//! the DHCP server's side, are filtered as well as frames forwarded to `eth0`):
//! - only the VM's MAC as Ethernet source;
//! - ARP only with the VM's MAC as sender hardware address and the VM's IPv4 address
//!   (or `0.0.0.0`, an RFC 5227 probe, which poisons no cache) as sender address;
//! - IPv4 only from the VM's address; `0.0.0.0` only as DHCP client traffic
//!   (udp 68 -> 67), which never leaves the bridge (below);
//! - IPv6 only from the VM's EUI-64 link-local address (derived from its MAC), `::`
//!   (duplicate address detection) and the address DHCPv6 leases it (the pod's IPv6
//!   address, [`AntiSpoof::ipv6`]); a guest that makes its link-local address another
//!   way (stable-privacy) gets no IPv6;
//! - no router advertisements from the VM: the bridge is the VM's router, and a VM
//!   advertising itself would become the pod network's;
//! - no other EtherType; VLAN-tagged frames (802.1Q, 802.1ad) are dropped before any
//!   other check: the kernel takes the tag off before the bridge, and the ARP and IP
//!   matches would judge the inner frame, which would leave tagged.
//!
//! DHCP stays between the tap and the launcher: DHCP ports (67, 68 and DHCPv6's 546,
//! 547) never cross the bridge in either direction (hook `forward`); DHCP arriving
//! through the pod interface never reaches the bridge's own stack (hook `input`; a
//! broadcast DISCOVER from the pod network is both forwarded and delivered locally);
//! and the launcher's replies, broadcast from the bridge, never go out through the pod
//! interface (hook `output`). The launcher's router advertisements, meant for the VM,
//! never go out through the pod interface either.
//!
//! Every drop counts in a named counter per kind ([`DropKind`]). Re-applying is
//! idempotent: one nft transaction adds the table, chains and counters (adding what
//! exists is a no-op, so counters keep their values), flushes the chains and adds the
//! rules again. Reading the counters needs CAP_NET_ADMIN in the pod's namespace
//! (nfnetlink checks it even for reads).

use super::facts::MacAddr;
use super::nft::{eq, meta, ne, payload, text};
use nftables::expr::{Expression, MetaKey, NamedExpression, SetItem};
use nftables::schema::{self, Chain, FlushObject, NfCmd, NfListObject, NfObject, Nftables, Table};
use nftables::stmt::{Counter, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// The table of a pod interface's rules: `vmpod-as-<iface>`.
pub fn table_name(interface: &str) -> String {
    format!("vmpod-as-{interface}")
}

/// What one pod interface's rules protect: the tap the VM sends on, the pod interface
/// that leads to the pod network, and the VM's identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AntiSpoof {
    /// The nft table (bridge family).
    pub table: String,
    /// The VM's tap.
    pub tap: String,
    /// The pod interface (bridge port towards the pod network).
    pub pod: String,
    /// The only source MAC the VM may use.
    pub mac: MacAddr,
    /// The only IPv4 source address the VM may use (besides DHCP's `0.0.0.0`).
    pub ipv4: Ipv4Addr,
    /// The IPv6 addresses the VM may use besides its link-local one: what DHCPv6
    /// leases it (none in an IPv4-only pod).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipv6: Vec<Ipv6Addr>,
}

/// One kind of frame the rules drop; each has a named counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DropKind {
    /// From the tap with another source MAC.
    Mac,
    /// ARP from the tap with another sender MAC or address.
    Arp,
    /// IPv4 from the tap with another source address.
    Ipv4,
    /// IPv6 from the tap from anything but the VM's link-local address or `::`.
    Ipv6,
    /// From the tap with an EtherType other than ARP, IPv4, IPv6 (VLAN tags included).
    Ethertype,
    /// DHCP crossing the bridge between the tap and the pod interface.
    DhcpForward,
    /// DHCP from the pod network to the bridge's own stack (the launcher's server).
    DhcpInput,
    /// DHCP from the bridge's own stack (the launcher's server) to the pod network.
    DhcpOutput,
    /// A router advertisement from the tap.
    RouterAdvert,
    /// A router advertisement from the bridge's own stack (the launcher's, for the VM)
    /// towards the pod network.
    RouterAdvertOutput,
}

impl DropKind {
    /// Every kind, in report order.
    pub const ALL: [DropKind; 10] = [
        DropKind::Mac,
        DropKind::Arp,
        DropKind::Ipv4,
        DropKind::Ipv6,
        DropKind::Ethertype,
        DropKind::DhcpForward,
        DropKind::DhcpInput,
        DropKind::DhcpOutput,
        DropKind::RouterAdvert,
        DropKind::RouterAdvertOutput,
    ];

    /// The nft counter's name.
    pub fn counter(self) -> &'static str {
        match self {
            DropKind::Mac => "drop_mac",
            DropKind::Arp => "drop_arp",
            DropKind::Ipv4 => "drop_ipv4",
            DropKind::Ipv6 => "drop_ipv6",
            DropKind::Ethertype => "drop_ethertype",
            DropKind::DhcpForward => "drop_dhcp_forward",
            DropKind::DhcpInput => "drop_dhcp_input",
            DropKind::DhcpOutput => "drop_dhcp_output",
            DropKind::RouterAdvert => "drop_ra",
            DropKind::RouterAdvertOutput => "drop_ra_output",
        }
    }
}

impl fmt::Display for DropKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.counter())
    }
}

/// The EUI-64 link-local address the kernel gives a link with this MAC.
pub fn eui64_link_local(mac: MacAddr) -> Ipv6Addr {
    let m = mac.0;
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        m[0] ^ 0x02,
        m[1],
        m[2],
        0xff,
        0xfe,
        m[3],
        m[4],
        m[5],
    ])
}

const PREROUTING: &str = "prerouting";
const FROM_VM: &str = "from_vm";
const FORWARD: &str = "forward";
const INPUT: &str = "input";
const OUTPUT: &str = "output";
/// UDP ports of DHCP (67, 68) and DHCPv6 (546, 547).
const DHCP_PORTS: [u32; 4] = [67, 68, 546, 547];

impl AntiSpoof {
    /// The nft commands that install (or re-install) the rules, one transaction.
    pub fn ruleset(&self) -> Nftables<'static> {
        let mut cmds = vec![add(NfListObject::Table(self.table_obj()))];
        let chains = [
            self.chain(PREROUTING, Some((NfHook::Prerouting, -200))),
            self.chain(FROM_VM, None),
            self.chain(FORWARD, Some((NfHook::Forward, 0))),
            self.chain(INPUT, Some((NfHook::Input, 0))),
            self.chain(OUTPUT, Some((NfHook::Output, 0))),
        ];
        for chain in &chains {
            cmds.push(add(NfListObject::Chain(chain.clone())));
        }
        for chain in chains {
            cmds.push(NfObject::CmdObject(NfCmd::Flush(FlushObject::Chain(chain))));
        }
        for kind in DropKind::ALL {
            cmds.push(add(NfListObject::Counter(schema::Counter {
                family: NfFamily::Bridge,
                table: self.table.clone().into(),
                name: kind.counter().into(),
                handle: None,
                packets: None,
                bytes: None,
            })));
        }
        let mac = self.mac.to_string();
        let ip = self.ipv4.to_string();
        // The rule that counts what `matches` in `kind` and drops it.
        let drop = |kind: DropKind, matches: Vec<Statement<'static>>| {
            [
                matches,
                vec![
                    Statement::Counter(Counter::Named(kind.counter().into())),
                    Statement::Drop(None),
                ],
            ]
            .concat()
        };
        // DHCP coming in (`Iifname`) or going out (`Oifname`) through the pod interface.
        let dhcp_via_pod = |direction: MetaKey| {
            vec![
                eq(meta(direction), text(&self.pod)),
                eq(payload("udp", "dport"), dhcp_ports()),
            ]
        };
        let rules: Vec<(&str, Vec<Statement<'static>>)> = vec![
            (
                PREROUTING,
                vec![
                    eq(meta(MetaKey::Iifname), text(&self.tap)),
                    Statement::Jump(nftables::stmt::JumpTarget {
                        target: FROM_VM.into(),
                    }),
                ],
            ),
            (
                FROM_VM,
                drop(
                    DropKind::Mac,
                    vec![ne(payload("ether", "saddr"), text(&mac))],
                ),
            ),
            // A VLAN tag first: the kernel strips it before the bridge, so the ARP and IP
            // rules below (whose `meta protocol` dependency sees the inner type) would
            // judge the inner frame, and an allowed one would leave tagged.
            (
                FROM_VM,
                drop(
                    DropKind::Ethertype,
                    vec![eq(payload("ether", "type"), vlan_ethertypes())],
                ),
            ),
            (
                FROM_VM,
                drop(
                    DropKind::Arp,
                    vec![ne(payload("arp", "saddr ether"), text(&mac))],
                ),
            ),
            (
                FROM_VM,
                drop(
                    DropKind::Arp,
                    vec![ne(
                        payload("arp", "saddr ip"),
                        set([ip.clone(), Ipv4Addr::UNSPECIFIED.to_string()]),
                    )],
                ),
            ),
            (
                FROM_VM,
                vec![
                    eq(payload("ether", "type"), text("arp")),
                    Statement::Accept(None),
                ],
            ),
            (
                FROM_VM,
                vec![
                    eq(payload("ip", "saddr"), text(&ip)),
                    Statement::Accept(None),
                ],
            ),
            (
                FROM_VM,
                vec![
                    eq(payload("ip", "saddr"), text("0.0.0.0")),
                    eq(payload("udp", "sport"), Expression::Number(68)),
                    eq(payload("udp", "dport"), Expression::Number(67)),
                    Statement::Accept(None),
                ],
            ),
            (
                FROM_VM,
                drop(
                    DropKind::Ipv4,
                    vec![eq(payload("ether", "type"), text("ip"))],
                ),
            ),
            (
                FROM_VM,
                drop(DropKind::RouterAdvert, vec![router_advertisement()]),
            ),
            (
                FROM_VM,
                vec![
                    eq(
                        payload("ip6", "saddr"),
                        set([eui64_link_local(self.mac), Ipv6Addr::UNSPECIFIED]
                            .into_iter()
                            .chain(self.ipv6.iter().copied())
                            .map(|a| a.to_string())),
                    ),
                    Statement::Accept(None),
                ],
            ),
            (
                FROM_VM,
                drop(
                    DropKind::Ipv6,
                    vec![eq(payload("ether", "type"), text("ip6"))],
                ),
            ),
            (FROM_VM, drop(DropKind::Ethertype, vec![])),
            (
                FORWARD,
                drop(
                    DropKind::DhcpForward,
                    vec![eq(payload("udp", "dport"), dhcp_ports())],
                ),
            ),
            (
                INPUT,
                drop(DropKind::DhcpInput, dhcp_via_pod(MetaKey::Iifname)),
            ),
            (
                OUTPUT,
                drop(DropKind::DhcpOutput, dhcp_via_pod(MetaKey::Oifname)),
            ),
            (
                OUTPUT,
                drop(
                    DropKind::RouterAdvertOutput,
                    vec![
                        eq(meta(MetaKey::Oifname), text(&self.pod)),
                        router_advertisement(),
                    ],
                ),
            ),
        ];
        for (chain, expr) in rules {
            cmds.push(add(NfListObject::Rule(schema::Rule {
                family: NfFamily::Bridge,
                table: self.table.clone().into(),
                chain: chain.into(),
                expr: expr.into(),
                handle: None,
                index: None,
                comment: None,
            })));
        }
        Nftables {
            objects: cmds.into(),
        }
    }

    fn table_obj(&self) -> Table<'static> {
        table(&self.table)
    }

    fn chain(&self, name: &'static str, hook: Option<(NfHook, i32)>) -> Chain<'static> {
        Chain {
            family: NfFamily::Bridge,
            table: self.table.clone().into(),
            name: name.into(),
            newname: None,
            handle: None,
            _type: hook.map(|_| NfChainType::Filter),
            hook: hook.map(|(h, _)| h),
            prio: hook.map(|(_, p)| p),
            dev: None,
            policy: hook.map(|_| NfChainPolicy::Accept),
        }
    }
}

/// The nft commands that remove a table, absent or not (adding it first makes the
/// delete always find one; both in one transaction).
pub fn remove_ruleset(table_name: &str) -> Nftables<'static> {
    Nftables {
        objects: vec![
            add(NfListObject::Table(table(table_name))),
            NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(table(table_name)))),
        ]
        .into(),
    }
}

/// Run `nft -j -f -` with `ruleset` in the calling thread's network namespace.
pub fn apply(ruleset: &Nftables) -> Result<(), nftables::helper::NftablesError> {
    nftables::helper::apply_ruleset(ruleset)
}

/// One drop counter's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DropCount {
    pub kind: DropKind,
    pub packets: u64,
    pub bytes: u64,
}

/// A table's drop counters as reports show them, or why they cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AntiSpoofReport {
    /// The nftables bridge-family table.
    pub table: String,
    /// Packets and bytes dropped, per kind; absent when they could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<Vec<DropCount>>,
    /// Why `dropped` is absent (reading nftables needs CAP_NET_ADMIN, which the
    /// launcher's compute container does not hold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

impl AntiSpoofReport {
    /// Read the counters of `table` now, in the calling thread's network namespace
    /// (runs `nft`: call it off the async runtime).
    pub fn read(table: &str) -> Self {
        match read_counters(table) {
            Ok(dropped) => AntiSpoofReport {
                table: table.to_owned(),
                dropped: Some(dropped),
                unavailable: None,
            },
            Err(e) => Self::unavailable(table, &e),
        }
    }

    fn unavailable(table: &str, e: &CounterError) -> Self {
        AntiSpoofReport {
            table: table.to_owned(),
            dropped: None,
            unavailable: Some(format!(
                "{e} (reading nftables needs CAP_NET_ADMIN in the pod's network namespace; \
                 as root on the node: vmpodctl net inspect --netns <pod netns>)"
            )),
        }
    }

    /// Every anti-spoofing table in the calling thread's network namespace, read now.
    pub fn read_all() -> Vec<Self> {
        let pattern = table_name("*");
        let listed = nftables::helper::get_current_ruleset_raw(
            nftables::helper::DEFAULT_NFT,
            ["list", "tables", "bridge"],
        )
        .map_err(|e| nft_error(&pattern, e))
        .and_then(|raw| table_names(&pattern, &raw));
        match listed {
            Ok(tables) => tables.iter().map(|t| Self::read(t)).collect(),
            Err(e) => vec![Self::unavailable(&pattern, &e)],
        }
    }
}

/// The anti-spoofing tables in `nft -j list tables` output.
fn table_names(pattern: &str, raw: &str) -> Result<Vec<String>, CounterError> {
    let prefix = table_name("");
    let doc: serde_json::Value = serde_json::from_str(raw).map_err(|e| CounterError::Output {
        table: pattern.to_owned(),
        detail: e.to_string(),
    })?;
    Ok(doc["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| o["table"]["family"] == "bridge")
        .filter_map(|o| o["table"]["name"].as_str())
        .filter(|n| n.starts_with(&prefix))
        .map(str::to_owned)
        .collect())
}

fn nft_error(table: &str, e: nftables::helper::NftablesError) -> CounterError {
    CounterError::Nft {
        table: table.to_owned(),
        detail: match e {
            nftables::helper::NftablesError::NftFailed { stderr, .. } => {
                stderr.trim().lines().next().unwrap_or_default().to_owned()
            }
            other => other.to_string(),
        },
    }
}

/// Why the counters could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CounterError {
    /// `nft` failed (no table: the rules are not installed; "Operation not
    /// permitted": no CAP_NET_ADMIN, as in the launcher's compute container).
    #[error("reading nft counters of bridge table {table}: {detail}")]
    Nft { table: String, detail: String },
    /// `nft` printed something that is not its JSON.
    #[error("reading nft counters of bridge table {table}: unexpected output: {detail}")]
    Output { table: String, detail: String },
}

/// Read the drop counters of `table` in the calling thread's network namespace
/// (`nft -j list counters table bridge <table>`). The values are read as u64 from the
/// JSON directly: the `nftables` crate's schema holds them in u32.
pub fn read_counters(table: &str) -> Result<Vec<DropCount>, CounterError> {
    let raw = nftables::helper::get_current_ruleset_raw(
        nftables::helper::DEFAULT_NFT,
        ["list", "counters", "table", "bridge", table],
    )
    .map_err(|e| nft_error(table, e))?;
    parse_counters(table, &raw)
}

/// The drop counters in `nft -j list counters` output, in [`DropKind::ALL`] order;
/// a counter missing from the output is an error.
pub fn parse_counters(table: &str, raw: &str) -> Result<Vec<DropCount>, CounterError> {
    let bad = |detail: String| CounterError::Output {
        table: table.to_owned(),
        detail,
    };
    let doc: serde_json::Value = serde_json::from_str(raw).map_err(|e| bad(e.to_string()))?;
    let objects = doc["nftables"]
        .as_array()
        .ok_or_else(|| bad("no \"nftables\" array".into()))?;
    DropKind::ALL
        .into_iter()
        .map(|kind| {
            let c = objects
                .iter()
                .map(|o| &o["counter"])
                .find(|c| c["name"] == kind.counter() && c["table"] == table)
                .ok_or_else(|| bad(format!("counter {} missing", kind.counter())))?;
            let num = |k: &str| {
                c[k].as_u64()
                    .ok_or_else(|| bad(format!("counter {} has no {k}", kind.counter())))
            };
            Ok(DropCount {
                kind,
                packets: num("packets")?,
                bytes: num("bytes")?,
            })
        })
        .collect()
}

fn table(name: &str) -> Table<'static> {
    Table {
        family: NfFamily::Bridge,
        name: name.to_owned().into(),
        handle: None,
    }
}

fn add(obj: NfListObject<'static>) -> NfObject<'static> {
    NfObject::CmdObject(NfCmd::Add(obj))
}

fn set(items: impl IntoIterator<Item = String>) -> Expression<'static> {
    Expression::Named(NamedExpression::Set(
        items
            .into_iter()
            .map(|s| SetItem::Element(Expression::String(s.into())))
            .collect(),
    ))
}

/// 802.1Q and 802.1ad tags, as `ether type` shows them (the kernel rebuilds the header
/// of a frame whose tag it took off).
fn vlan_ethertypes() -> Expression<'static> {
    Expression::Named(NamedExpression::Set(
        [0x8100, 0x88a8]
            .into_iter()
            .map(|t| SetItem::Element(Expression::Number(t)))
            .collect(),
    ))
}

fn dhcp_ports() -> Expression<'static> {
    Expression::Named(NamedExpression::Set(
        DHCP_PORTS
            .into_iter()
            .map(|p| SetItem::Element(Expression::Number(p)))
            .collect(),
    ))
}

/// Matches an ICMPv6 router advertisement.
fn router_advertisement() -> Statement<'static> {
    eq(payload("icmpv6", "type"), text("nd-router-advert"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> AntiSpoof {
        AntiSpoof {
            table: table_name("eth0"),
            tap: "tap-eth0".into(),
            pod: "eth0".into(),
            mac: MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]),
            ipv4: Ipv4Addr::new(10, 244, 1, 7),
            ipv6: vec!["fd00::7".parse().unwrap()],
        }
    }

    fn rules(doc: &serde_json::Value) -> Vec<(String, String)> {
        doc["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o["add"]["rule"].as_object())
            .map(|r| {
                (
                    r["chain"].as_str().unwrap().to_owned(),
                    r["expr"].to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn eui64_matches_the_kernel() {
        // ip link set dev x address 52:54:00:12:34:56 -> fe80::5054:ff:fe12:3456
        assert_eq!(
            eui64_link_local(spec().mac),
            "fe80::5054:ff:fe12:3456".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn ruleset_pins_mac_ip_arp_and_keeps_dhcp_inside() {
        let doc = serde_json::to_value(spec().ruleset()).unwrap();
        let rules = rules(&doc);
        let in_chain = |chain: &str| -> Vec<&String> {
            rules
                .iter()
                .filter(|(c, _)| c == chain)
                .map(|(_, e)| e)
                .collect()
        };
        let pre = in_chain("prerouting");
        assert_eq!(pre.len(), 1);
        assert!(pre[0].contains(r#""right":"tap-eth0""#), "{}", pre[0]);
        let vm = in_chain("from_vm");
        // Order matters: the MAC first, ARP before the accepts, the catch-all last.
        assert!(vm[0].contains(r#""op":"!=""#) && vm[0].contains("52:54:00:12:34:56"));
        assert!(vm[0].contains("drop_mac"));
        assert!(vm[1].contains("[33024,34984]") && vm[1].contains("drop_ethertype"));
        assert!(vm[2].contains("saddr ether") && vm[2].contains("drop_arp"));
        assert!(vm[3].contains("saddr ip") && vm[3].contains("10.244.1.7"));
        assert!(vm[3].contains("0.0.0.0") && vm[3].contains("drop_arp"));
        assert!(vm[6].contains("0.0.0.0") && vm[6].contains("68") && vm[6].contains("67"));
        assert!(vm[7].contains("drop_ipv4"));
        assert!(vm[8].contains("nd-router-advert") && vm[8].contains("drop_ra"));
        assert!(vm[9].contains("fe80::5054:ff:fe12:3456") && vm[9].contains(r#""::""#));
        assert!(vm[9].contains(r#""fd00::7""#), "{}", vm[9]);
        assert!(vm[10].contains("drop_ipv6"));
        assert_eq!(
            vm.last().unwrap().as_str(),
            r#"[{"counter":"drop_ethertype"},{"drop":null}]"#
        );
        let fwd = in_chain("forward");
        assert!(fwd[0].contains("[67,68,546,547]") && fwd[0].contains("drop_dhcp_forward"));
        let input = in_chain("input");
        assert!(input[0].contains(r#""right":"eth0""#) && input[0].contains("drop_dhcp_input"));
        let output = in_chain("output");
        assert!(output[0].contains("oifname") && output[0].contains("drop_dhcp_output"));
        assert!(output[1].contains("nd-router-advert") && output[1].contains("drop_ra_output"));
        // Every counter a rule names is declared in the same transaction.
        let declared: Vec<&str> = doc["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["add"]["counter"]["table"] == "vmpod-as-eth0")
            .filter_map(|o| o["add"]["counter"]["name"].as_str())
            .collect();
        let kinds: Vec<&str> = DropKind::ALL.iter().map(|k| k.counter()).collect();
        assert_eq!(declared, kinds);
    }

    #[test]
    fn reapply_flushes_before_adding_rules() {
        let doc = serde_json::to_value(spec().ruleset()).unwrap();
        let cmds = doc["nftables"].as_array().unwrap();
        let first_rule = cmds
            .iter()
            .position(|c| c["add"]["rule"].is_object())
            .unwrap();
        let flushes: Vec<usize> = (0..cmds.len())
            .filter(|&i| cmds[i]["flush"]["chain"].is_object())
            .collect();
        assert_eq!(flushes.len(), 5);
        assert!(flushes.iter().all(|&i| i < first_rule));
        assert!(cmds[0]["add"]["table"]["family"] == "bridge");
    }

    #[test]
    fn remove_is_add_then_delete() {
        let doc = serde_json::to_value(remove_ruleset("vmpod-as-eth0")).unwrap();
        assert_eq!(
            doc.to_string(),
            r#"{"nftables":[{"add":{"table":{"family":"bridge","name":"vmpod-as-eth0"}}},{"delete":{"table":{"family":"bridge","name":"vmpod-as-eth0"}}}]}"#
        );
    }

    #[test]
    fn only_our_bridge_tables_are_listed() {
        let raw = r#"{"nftables":[{"metainfo":{}},{"table":{"family":"bridge","name":"vmpod-as-eth0"}},
            {"table":{"family":"bridge","name":"filter"}},{"table":{"family":"bridge","name":"vmpod-as-net1"}}]}"#;
        assert_eq!(
            table_names("vmpod-as-*", raw).unwrap(),
            ["vmpod-as-eth0", "vmpod-as-net1"]
        );
    }

    #[test]
    fn counters_parse_as_u64_and_missing_ones_are_errors() {
        let mut objects = vec![serde_json::json!({"metainfo": {"version": "1.0.6"}})];
        for (i, kind) in DropKind::ALL.iter().enumerate() {
            objects.push(
                serde_json::json!({"counter": {"family": "bridge", "name": kind.counter(),
                "table": "t", "handle": i, "packets": i, "bytes": 5_000_000_000u64 + i as u64}}),
            );
        }
        let raw = serde_json::json!({ "nftables": objects }).to_string();
        let got = parse_counters("t", &raw).unwrap();
        assert_eq!(got.len(), DropKind::ALL.len());
        assert_eq!(got[1].kind, DropKind::Arp);
        assert_eq!(got[1].packets, 1);
        assert_eq!(got[1].bytes, 5_000_000_001);
        let err = parse_counters("other", &raw).unwrap_err().to_string();
        assert!(
            err.contains("other") && err.contains("drop_mac missing"),
            "{err}"
        );
    }
}
