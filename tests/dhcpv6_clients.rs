//! IPv6 for the VM against real clients, after `net setup` rewired a dual-stack pod
//! (the VM side is a veth on the pod's bridge in place of the tap, with the VM's MAC):
//! ISC `dhclient -6` gets the pod's exact IPv6 address, the IPv6 nameserver and the
//! search list from our DHCPv6 server; a client with another MAC gets nothing.

mod dhcp_fixture;
mod support;

use dhcp_fixture::*;
use std::path::Path;
use std::process::{Child, Stdio};
use vmpod::dhcp::v6::server::{DhcpV6Server, V6StatsHandle};
use vmpod::dhcp::v6::{DhcpV6Config, DropReason, ReplyKind};
use vmpod::net::netns;

/// Kills a client left running when the test ends.
struct Reap(Child);
impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A DHCPv6 server serving in the pod namespace on its own thread; stops on drop.
struct RunningV6 {
    stats: V6StatsHandle,
    _serving: Serving,
}

fn v6_config(t: &Topology) -> DhcpV6Config {
    DhcpV6Config::for_cached(&t.cached).expect("a dual-stack pod has a DHCPv6 configuration")
}

fn start_v6(t: &Topology) -> RunningV6 {
    let config = v6_config(t);
    let server = netns::run_in(Some(&t.pod_path()), || DhcpV6Server::bind(config))
        .unwrap()
        .unwrap();
    RunningV6 {
        stats: server.stats(),
        _serving: serve_on_thread(async move { server.run().await.unwrap() }),
    }
}

/// The VM side's IPv6 addresses of `scope` (`global`, `link`) as `addr/prefix`, with
/// the tentative ones (duplicate address detection still running) marked.
fn vm_addresses6(t: &Topology, scope: &str) -> Vec<String> {
    let v = t.ip_json(&["-6", "addr", "show", "dev", VM_IF, "scope", scope]);
    v.as_array()
        .and_then(|a| a.first())
        .and_then(|l| l["addr_info"].as_array())
        .map(|a| {
            // `ip -j` prints `{}` for the addresses the scope filter left out.
            a.iter()
                .filter_map(|a| {
                    let tentative = if a["tentative"].as_bool() == Some(true) {
                        " tentative"
                    } else {
                        ""
                    };
                    Some(format!(
                        "{}/{}{tentative}",
                        a["local"].as_str()?,
                        a["prefixlen"]
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Wait until the VM side has a usable link-local address: a DHCPv6 client speaks from it.
fn wait_link_local(t: &Topology) {
    assert!(
        wait_until(10, || {
            let ll = vm_addresses6(t, "link");
            !ll.is_empty() && ll.iter().all(|a| !a.ends_with("tentative"))
        }),
        "VM side link-local address not ready: {:?}",
        vm_addresses6(t, "link")
    );
}

/// `dhclient -6` in the VM namespace with Debian's dhclient-script behind a recording
/// script (one env file per reason in `out`); the lease file is fresh, so the DUID is
/// a new DUID-LLT of the VM side's MAC.
fn dhclient6(t: &Topology, out: &Path) -> Reap {
    let script = out.join("record.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nenv | sort > \"{}/$reason.env\"\nexec /sbin/dhclient-script \"$@\"\n",
            out.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
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
}
