//! `vmpodctl net inspect | plan`: look at a pod's network and at what setup would do.
//! Read-only: nothing here changes the namespace or writes the cache.

use anyhow::Context;
use clap::{Args, Subcommand};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use vmpod::net::inspect::{Inspection, inspect};
use vmpod::net::{self, Binding, SetupOptions, SetupOutcome};

#[derive(Subcommand)]
pub enum NetCommand {
    /// Show the pod's links, addresses, routes, bridges, taps and cached facts.
    Inspect(InspectArgs),
    /// Show what `vmpod-launcher net setup` would do, changing nothing.
    Plan(PlanArgs),
}

#[derive(Args)]
pub struct Where {
    /// The pod's network namespace: a name under /run/netns or a path. Default: ours.
    #[arg(long)]
    netns: Option<String>,
    /// The pod's state directory (for the cached facts).
    #[arg(long, default_value = vmpod::statedir::DEFAULT_STATE_DIR, env = "VMPOD_STATE_DIR")]
    state_dir: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct InspectArgs {
    #[command(flatten)]
    at: Where,
}

#[derive(Args)]
pub struct PlanArgs {
    #[command(flatten)]
    at: Where,
    /// The pod interface.
    #[arg(long, default_value = "eth0")]
    interface: String,
    #[arg(long, default_value_t = Binding::Bridge)]
    binding: Binding,
    /// The pod's resolv.conf.
    #[arg(long, default_value = net::discover::DEFAULT_RESOLV_CONF)]
    resolv_conf: PathBuf,
    /// The VMI's `macAddress`, as given to `net setup --vm-mac` (a cache made with another
    /// is reported as a mismatch).
    #[arg(long)]
    vm_mac: Option<net::MacAddr>,
    #[command(flatten)]
    masquerade: net::masquerade::MasqueradeArgs,
}

pub fn run(cmd: NetCommand) -> anyhow::Result<ExitCode> {
    let out = match cmd {
        NetCommand::Inspect(a) => {
            let ns = a.at.netns.as_deref().map(net::netns::resolve);
            let view =
                inspect(ns.as_deref(), &a.at.state_dir).context("inspecting the pod network")?;
            if a.at.json {
                serde_json::to_string_pretty(&view)?
            } else {
                render_inspection(&view)
            }
        }
        NetCommand::Plan(a) => {
            let opts = SetupOptions {
                netns: a.at.netns.as_deref().map(net::netns::resolve),
                binding: a.binding,
                state_dir: a.at.state_dir,
                resolv_conf: a.resolv_conf,
                plan: net::PlanOptions {
                    vm_mac: a.vm_mac,
                    masquerade: a.masquerade.into(),
                    ..net::PlanOptions::default()
                },
                ..SetupOptions::new(a.interface)
            };
            let plan = net::dry_run(&opts)
                .with_context(|| format!("planning pod interface {}", opts.interface))?;
            if a.at.json {
                serde_json::to_string_pretty(&plan)?
            } else {
                render_plan(&plan)
            }
        }
    };
    println!("{}", out.trim_end());
    Ok(ExitCode::SUCCESS)
}

/// The readable form of `net inspect`.
fn render_inspection(v: &Inspection) -> String {
    let mut s = format!("network namespace: {}\n\nLINKS\n", v.netns);
    let _ = writeln!(
        s,
        "{:<16} {:<8} {:<18} {:>6} {:<5} {:<16} ADDRESSES",
        "NAME", "KIND", "MAC", "MTU", "STATE", "MASTER"
    );
    for l in &v.links {
        let addrs: Vec<String> = l.addresses.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            s,
            "{:<16} {:<8} {:<18} {:>6} {:<5} {:<16} {}",
            l.link.name,
            l.link.kind.as_deref().unwrap_or("-"),
            l.link.mac.map_or_else(|| "-".to_owned(), |m| m.to_string()),
            l.link.mtu,
            if l.link.up { "up" } else { "down" },
            l.master_name.as_deref().unwrap_or("-"),
            addrs.join(" "),
        );
    }
    s.push_str("\nROUTES (main table)\n");
    for r in &v.routes {
        let _ = write!(s, "{}", r.route.destination);
        if let Some(gw) = r.route.gateway {
            let _ = write!(s, " via {gw}");
        }
        let _ = write!(
            s,
            " dev {} proto {} scope {}",
            r.dev.as_deref().unwrap_or("-"),
            r.route.protocol,
            r.route.scope
        );
        if let Some(m) = r.route.metric {
            let _ = write!(s, " metric {m}");
        }
        s.push('\n');
    }
    s.push_str("\nBRIDGES\n");
    for b in &v.bridges {
        let _ = writeln!(
            s,
            "{}: {}",
            b.name,
            if b.ports.is_empty() {
                "(no ports)".to_owned()
            } else {
                b.ports.join(", ")
            }
        );
    }
    s.push_str("\nTAPS\n");
    for t in &v.taps {
        let id = |i: Option<u32>| i.map_or_else(|| "-".to_owned(), |i| i.to_string());
        let _ = writeln!(
            s,
            "{}: {} owner {} group {} vnet_hdr {} multiqueue {} persist {}",
            t.name,
            if t.tun.tap { "tap" } else { "tun" },
            id(t.tun.owner),
            id(t.tun.group),
            t.tun.vnet_hdr,
            t.tun.multi_queue,
            t.tun.persist
        );
    }
    s.push_str("\nANTI-SPOOFING (packets dropped)\n");
    if v.anti_spoofing.is_empty() {
        s.push_str("(no table)\n");
    }
    for a in &v.anti_spoofing {
        let _ = write!(s, "table bridge {}:", a.table);
        for d in a.dropped.iter().flatten() {
            let _ = write!(s, " {} {}", d.kind, d.packets);
        }
        if let Some(why) = &a.unavailable {
            let _ = write!(s, " unavailable: {why}");
        }
        s.push('\n');
    }
    for m in &v.masquerade {
        let _ = writeln!(
            s,
            "\nMASQUERADE {}\nvm {} (mac {}) gateway {}; forwarded: {}",
            m.interface,
            m.vm_address,
            m.vm_mac,
            m.gateway,
            m.forwarded.join(", "),
        );
        if let Some(a) = &m.ipv6 {
            let _ = writeln!(
                s,
                "vm {}/{} gateway {} (NAT66 behind {})",
                a.vm_ip, a.vm_network.prefix, a.gateway, a.pod_ip
            );
        }
        if let Some(why) = &m.ipv6_off {
            let _ = writeln!(s, "IPv6 off: {why}");
        }
        let _ = writeln!(s, "nft table inet {}:", m.table);
        if m.rules.is_empty() {
            s.push_str("  (missing)\n");
        }
        for r in &m.rules {
            let _ = writeln!(s, "  {r}");
        }
    }
    for v6 in &v.ipv6 {
        let _ = writeln!(
            s,
            "\nIPV6 {}\nvm {} (mac {}) by DHCPv6 from server DUID {}; router {} (advertised on the bridge)",
            v6.interface, v6.vm_address, v6.vm_mac, v6.server_duid, v6.router
        );
    }
    s.push_str("\nCACHED FACTS\n");
    if v.cached.is_empty() {
        s.push_str("(none)\n");
    }
    for c in &v.cached {
        s.push_str(&render_facts(c));
        let _ = writeln!(s, "  applied: {} ops", c.applied.len());
    }
    s
}

fn render_facts(c: &net::CachedInterface) -> String {
    let f = &c.facts;
    let list = |v: Vec<String>| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            v.join(", ")
        }
    };
    let mut s = format!(
        "{} (binding {}): mac {} mtu {}\n",
        f.interface, c.binding, f.mac, f.mtu
    );
    let _ = writeln!(
        s,
        "  addresses: {}",
        list(f.addresses.iter().map(ToString::to_string).collect())
    );
    let routes = f.routes.iter().map(|r| {
        let via = r
            .gateway
            .map_or_else(|| "on-link".to_owned(), |g| format!("via {g}"));
        format!("{} {via}", r.destination)
    });
    let _ = writeln!(s, "  routes: {}", list(routes.collect()));
    let _ = writeln!(
        s,
        "  dns: {}  search: {}",
        list(f.dns.iter().map(ToString::to_string).collect()),
        list(f.search.clone())
    );
    let _ = writeln!(s, "  hostname: {}", f.hostname);
    s
}

/// The readable form of `net plan`.
fn render_plan(p: &SetupOutcome) -> String {
    let source = if p.from_cache {
        format!("from the cache {}", p.cache_path.display())
    } else {
        "discovered now (setup would cache them first)".to_owned()
    };
    let mut s = format!(
        "facts {source}:\n{}\nplan ({} ops):\n",
        render_facts(&p.cached),
        p.ops.len()
    );
    for (i, op) in p.ops.iter().enumerate() {
        let _ = writeln!(s, "{:>3}. {op}", i + 1);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmpod::net::inspect::inspection;
    use vmpod::net::snapshot::{AddressState, LinkState, NetSnapshot, TunState};

    #[test]
    fn inspection_table_shows_bridge_ports_and_taps() {
        let link = |index, name: &str, kind: &str, master| LinkState {
            index,
            name: name.into(),
            kind: Some(kind.into()),
            mac: Some("02:00:00:00:00:01".parse().unwrap()),
            mtu: 1450,
            up: true,
            master,
            tun: (kind == "tun").then(|| TunState {
                tap: true,
                owner: Some(0),
                vnet_hdr: true,
                persist: true,
                ..TunState::default()
            }),
        };
        let snap = NetSnapshot {
            links: vec![
                link(2, "eth0", "veth", Some(3)),
                link(3, "k6t-eth0", "bridge", None),
                link(4, "tap-eth0", "tun", Some(3)),
            ],
            addresses: vec![AddressState {
                index: 3,
                address: vmpod::net::IpCidr::new("169.254.75.10".parse().unwrap(), 32),
                scope: "global".into(),
            }],
            routes: vec![],
        };
        let t = render_inspection(&inspection("pod1".into(), &snap, vec![], vec![]));
        assert!(t.contains("k6t-eth0: eth0, tap-eth0"), "{t}");
        assert!(
            t.contains("tap-eth0: tap owner 0 group - vnet_hdr true multiqueue false persist true"),
            "{t}"
        );
        assert!(t.contains("169.254.75.10/32"), "{t}");
        assert!(t.contains("CACHED FACTS\n(none)"), "{t}");
    }
}
