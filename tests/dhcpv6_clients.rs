//! IPv6 for the VM against real clients, after `net setup` rewired a dual-stack pod
//! (the VM side is a veth on the pod's bridge in place of the tap, with the VM's MAC):
//! ISC `dhclient -6` gets the pod's exact IPv6 address, the IPv6 nameserver and the
//! search list from our DHCPv6 server; a client with another MAC gets nothing; the VM
//! side's kernel takes our router advertisement (default route via the bridge's
//! link-local address, the on-link prefix, the MTU) and then reaches the node's IPv6
//! gateway from the leased address; dhcpcd takes the RA's DNS options and the lease.

mod dhcp_fixture;
mod support;

use dhcp_fixture::*;
use std::path::Path;
use std::process::Stdio;
use vmpod::dhcp::ra::{RaSender, RaStats};
use vmpod::dhcp::v6::server::{DhcpV6Server, DhcpV6Stats};
use vmpod::dhcp::v6::{DhcpV6Config, DropReason, ReplyKind};
use vmpod::net::netns;

fn v6_config(t: &Topology) -> DhcpV6Config {
    DhcpV6Config::for_cached(&t.cached).expect("a dual-stack pod has a DHCPv6 configuration")
}

/// The DHCPv6 server of the pod.
fn start_v6(t: &Topology) -> Running<DhcpV6Stats> {
    let config = v6_config(t);
    let server = netns::run_in(Some(&t.pod_path()), || DhcpV6Server::bind(config))
        .unwrap()
        .unwrap();
    Running::new(server.stats(), async move { server.run().await.unwrap() })
}

/// The RA sender on the pod's bridge.
fn start_ra(t: &Topology) -> Running<RaStats> {
    let config = v6_config(t);
    let sender = netns::run_in(Some(&t.pod_path()), || RaSender::bind(&config))
        .unwrap()
        .unwrap();
    Running::new(sender.stats(), async move { sender.run().await.unwrap() })
}

fn vm_sysctl(t: &Topology, key: &str) -> String {
    proc_sys(t.in_vm("cat"), key)
}

/// `dhclient -6` in the VM namespace with Debian's dhclient-script behind a recording
/// script (one env file per reason in `out`); the lease file is fresh, so the DUID is
/// a new DUID-LLT of the VM side's MAC.
fn dhclient6(t: &Topology, out: &Path) -> Reap {
    let script = record_script(out, "exec /sbin/dhclient-script \"$@\"");
    let child = t
        .in_vm("dhclient")
        .args(["-6", "-d", "-v", "-lf"])
        .arg(out.join("leases"))
        .arg("-pf")
        .arg(out.join("pid"))
        .arg("-sf")
        .arg(&script)
        .arg(VM_IF)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Reap(child)
}

fn dhclient_gets_the_pods_ipv6_address() {
    let t = Topology::new("d6cl", Shape::DualStack);
    let server = start_v6(&t);
    wait_link_local(&t);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let _client = dhclient6(&t, out);
    assert!(
        wait_until(20, || out.join("BOUND6.env").exists()),
        "dhclient -6 got no lease: {:?}",
        server.stats.snapshot()
    );
    let env = read_env(&out.join("BOUND6.env"));
    assert_eq!(
        env.get("new_ip6_address").map(String::as_str),
        Some("fd77:9::23"),
        "{env:?}"
    );
    assert_eq!(
        env.get("new_dhcp6_name_servers").map(String::as_str),
        Some("fd77:9::53")
    );
    assert_eq!(
        env.get("new_dhcp6_domain_search").map(String::as_str),
        Some("default.svc.cluster.local. cluster.local.")
    );
    assert_eq!(
        env.get("new_max_life").map(String::as_str),
        Some(vmpod::dhcp::DEFAULT_LEASE_SECS.to_string().as_str())
    );
    // dhclient-script put it on the VM's link (a /128: the prefix comes from the RA).
    assert!(
        wait_until(5, || vm_addresses6(&t, "global")
            .iter()
            .any(|a| a.starts_with("fd77:9::23/"))),
        "{:?}",
        vm_addresses6(&t, "global")
    );
    let stats = server.stats.snapshot();
    assert_eq!(
        stats.replies.get(&ReplyKind::Advertise),
        Some(&1),
        "{stats:?}"
    );
    assert_eq!(stats.replies.get(&ReplyKind::Reply), Some(&1), "{stats:?}");
    assert_eq!(stats.lease.state, vmpod::dhcp::stats::LeaseState::Bound);
}

fn a_foreign_client_gets_nothing() {
    let t = Topology::new("d6fo", Shape::DualStack);
    let server = start_v6(&t);
    // Another MAC on the VM side: down and up again, so the link-local address (and
    // dhclient's DUID-LLT) derive from it.
    for args in [
        vec!["link", "set", VM_IF, "down"],
        vec!["link", "set", VM_IF, "address", "52:54:00:0f:0f:0f"],
        vec!["link", "set", VM_IF, "up"],
    ] {
        let o = t.in_vm("ip").args(&args).output().unwrap();
        assert!(o.status.success(), "ip {args:?}: {}", text(&o));
    }
    wait_link_local(&t);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let _client = dhclient6(&t, out);
    // Two Solicits heard and dropped (the first and a retransmission): the client is
    // alive and talking, and was refused.
    let foreign = || {
        server
            .stats
            .snapshot()
            .drops
            .get(&DropReason::ForeignClient)
            .copied()
            .unwrap_or(0)
    };
    assert!(
        wait_until(20, || foreign() >= 2),
        "{:?}",
        server.stats.snapshot()
    );
    let stats = server.stats.snapshot();
    assert!(stats.replies.is_empty(), "{stats:?}");
    assert!(!out.join("BOUND6.env").exists());
    assert!(vm_addresses6(&t, "global").is_empty());
}

fn the_kernel_takes_the_ra_and_reaches_the_gateway() {
    let t = Topology::new("d6ra", Shape::DualStack);
    assert_eq!(vm_sysctl(&t, "net/ipv6/conf/eth0/accept_ra"), "1");
    let bridge_ll = vmpod::net::ipv6::bridge_link_local(&t.cached.facts).to_string();
    let ra = start_ra(&t);
    let server = start_v6(&t);
    wait_link_local(&t);
    // The kernel sends Router Solicitations once its link-local address is usable; the
    // answer (or the first periodic advertisement) gives it the routes.
    let want_default = format!("default via {bridge_ll} ra");
    assert!(
        wait_until(15, || vm_routes6(&t).contains(&want_default)),
        "no default route from the RA: {:?}, sender {:?}",
        vm_routes6(&t),
        ra.stats.snapshot()
    );
    // The on-link prefix (the kernel marks prefix routes "kernel"; with no global
    // address yet, it can only come from the RA).
    assert!(
        vm_routes6(&t).contains(&"fd77:9::/64 kernel".to_owned()),
        "{:?}",
        vm_routes6(&t)
    );
    assert_eq!(vm_sysctl(&t, "net/ipv6/conf/eth0/mtu"), "1400");
    // No SLAAC address from the prefix: the VM takes exactly the pod's address.
    assert!(vm_addresses6(&t, "global").is_empty());
    let dir = tempfile::tempdir().unwrap();
    let _client = dhclient6(&t, dir.path());
    assert!(
        wait_until(20, || vm_addresses6(&t, "global")
            .iter()
            .any(|a| a.starts_with("fd77:9::23/") && !a.ends_with("tentative"))),
        "no lease: {:?}",
        server.stats.snapshot()
    );
    let ping = t
        .in_vm("busybox")
        .args(["ping", "-6", "-c", "1", "-W", "2", "fd77:9::1"])
        .output()
        .unwrap();
    assert!(
        ping.status.success(),
        "the node's IPv6 gateway does not answer the VM: {}",
        text(&ping)
    );
    let stats = ra.stats.snapshot();
    assert!(stats.periodic + stats.solicited >= 1, "{stats:?}");
}

/// dhcpcd, IPv6 only: it solicits the RA, reads its DNS options (RFC 8106), follows
/// the managed flag to DHCPv6 and installs the lease and the default route itself.
fn dhcpcd_takes_the_ra_and_the_lease() {
    let t = Topology::new("d6dc", Shape::DualStack);
    let ra = start_ra(&t);
    let server = start_v6(&t);
    let (dir, _client) = dhcpcd(
        &t,
        "ipv6only\nipv6rs\nia_na\noption dhcp6_name_servers, dhcp6_domain_search\npersistent\n",
        "-6",
    );
    let out = dir.path();
    wait_recorded(out, &["BOUND6", "ROUTERADVERT"], 25, || {
        format!(
            "dhcpcd: RA {:?}, DHCPv6 {:?}",
            ra.stats.snapshot(),
            server.stats.snapshot()
        )
    });
    assert_dhcpcd_ipv6(&t, out, "fd77:9::23");
}

/// `vmpodctl dhcp probe --v6` from the VM side shows what the server leases; it asks as
/// the VM's MAC (the VM side's own), so it is answered.
fn vmpodctl_probes_dhcpv6() {
    let t = Topology::new("d6pr", Shape::DualStack);
    let server = start_v6(&t);
    wait_link_local(&t);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vmpodctl"))
        .args([
            "dhcp",
            "probe",
            "--v6",
            "--json",
            "--interface",
            VM_IF,
            "--netns",
        ])
        .arg(&t.vm_ns)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (answer, kind) in [("advertise", "Advertise"), ("reply", "Reply")] {
        assert_eq!(r[answer]["messageType"], kind, "{r}");
        assert_eq!(r[answer]["addresses"][0][0], "fd77:9::23", "{r}");
        assert_eq!(r[answer]["dns"][0], "fd77:9::53", "{r}");
        assert_eq!(r[answer]["serverDuid"], server.stats.snapshot().server_duid);
    }
    let stats = server.stats.snapshot();
    assert_eq!(stats.lease.state, vmpod::dhcp::stats::LeaseState::Bound);
    // `vmpodctl net inspect` shows the same IPv6 side, from the cache and the kernel.
    let shown = net_inspect(&t, env!("CARGO_BIN_EXE_vmpodctl"));
    let router = vmpod::net::ipv6::bridge_link_local(&t.cached.facts);
    let want = format!(
        "IPV6 eth0\nvm fd77:9::23/64 (mac {}) by DHCPv6 from server DUID {}; router {router}",
        t.vm_mac, stats.server_duid
    );
    assert!(shown.contains(&want), "no {want:?} in:\n{shown}");
    // The bridge holds that link-local address, and no other IPv6 address.
    assert!(shown.contains(&format!("{router}/64")), "{shown}");
}

macro_rules! privileged_tests {
    ($($name:ident: $body:ident;)*) => {$(
        #[test]
        fn $name() {
            if support::privileged(stringify!($name)) {
                $body();
            }
        }
    )*};
}

privileged_tests! {
    dhclient6_gets_the_pods_ipv6_address_dns_and_search: dhclient_gets_the_pods_ipv6_address;
    dhcpv6_answers_no_foreign_client: a_foreign_client_gets_nothing;
    kernel_takes_the_ra_and_pings_the_ipv6_gateway: the_kernel_takes_the_ra_and_reaches_the_gateway;
    dhcpcd_takes_the_ra_dns_options_and_the_lease: dhcpcd_takes_the_ra_and_the_lease;
    vmpodctl_dhcp_probe_v6_shows_the_lease: vmpodctl_probes_dhcpv6;
}
