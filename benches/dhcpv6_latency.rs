//! DHCPv6 latency, ours against dnsmasq, in one run.
//!
//! `cargo bench --bench dhcpv6_latency` (root; builds network namespaces). One client
//! (the `vmpodctl dhcp probe --v6` code) on a veth on the bridge `net setup` built for a
//! dual-stack pod times Solicit->Advertise and Request->Reply against each server in
//! turn, each serving the same single address with the same DNS servers and search list,
//! and prints median and p99. Our server runs on a thread of this process, dnsmasq as
//! its own process; every packet crosses the same veth and bridge.
//! `DHCP_BENCH_ROUNDS` sets the rounds per server (default 2000).

#[path = "../tests/dhcp_fixture/mod.rs"]
mod dhcp_fixture;

use dhcp_fixture::*;
use std::net::IpAddr;
use std::process::{Child, Stdio};
use std::time::Duration;
use vmpod::dhcp::probe::ProbeOptions;
use vmpod::dhcp::v6::DhcpV6Config;
use vmpod::dhcp::v6::probe::probe_v6;
use vmpod::dhcp::v6::server::DhcpV6Server;
use vmpod::net::netns;

/// The address every server hands out (the fixture's dual-stack pod).
const VM_IP6: &str = "fd77:9::23";

struct Peer(Child);
impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `rounds` probes from the VM side (after `warmup` unrecorded ones): Solicit->Advertise
/// and Request->Reply round trips in µs. `None` when the server never answered.
fn measure(t: &Topology, rounds: usize, warmup: usize) -> (Vec<u64>, Vec<u64>) {
    let opts = ProbeOptions {
        interface: VM_IF.into(),
        mac: t.vm_mac,
        timeout: Duration::from_secs(3),
    };
    netns::block_on_in(Some(&t.vm_path()), || async {
        // Wait (bounded, 10 s) for the server (dnsmasq takes a moment to bind) and for
        // the VM side's link-local address to pass DAD (until then a probe fails at once).
        let mut ready = false;
        for _ in 0..50 {
            let quick = ProbeOptions {
                timeout: Duration::from_millis(200),
                ..opts.clone()
            };
            if probe_v6(&quick).await.is_ok() {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(ready, "server never answered");
        let (mut adv, mut reply) = (Vec::new(), Vec::new());
        for i in 0..rounds + warmup {
            let r = probe_v6(&opts).await.expect("probe");
            assert_eq!(r.reply.addresses[0].0.to_string(), VM_IP6, "wrong lease");
            if i >= warmup {
                adv.push(r.advertise.rtt_us);
                reply.push(r.reply.rtt_us);
            }
        }
        (adv, reply)
    })
    .unwrap()
}

fn dnsmasq(t: &Topology, dir: &std::path::Path) -> Peer {
    let child = dnsmasq_on_bridge(t, dir, "dnsmasq6")
        .arg(format!("--dhcp-range={VM_IP6},{VM_IP6},64,30d"))
        .arg("--dhcp-option=option6:dns-server,[fd77:9::53]")
        .arg("--dhcp-option=option6:domain-search,default.svc.cluster.local,cluster.local")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dnsmasq");
    Peer(child)
}

fn row(name: &str, (adv, reply): &mut (Vec<u64>, Vec<u64>)) {
    adv.sort_unstable();
    reply.sort_unstable();
    println!(
        "{name:<16} {:>10} {:>8}   {:>8} {:>8}   {:>6}",
        percentile(adv, 50),
        percentile(adv, 99),
        percentile(reply, 50),
        percentile(reply, 99),
        adv.len()
    );
}

fn main() {
    let Some(rounds) = bench_rounds("dhcpv6_latency") else {
        return;
    };
    let warmup = 50;
    let t = Topology::new("bench6", Shape::DualStack);
    // dnsmasq serves DHCPv6 only on a link where it has an address of the range's prefix.
    t.add_bridge_address(IpAddr::V6("fd77:9::2".parse().unwrap()), 64);
    let dir = tempfile::tempdir().unwrap();
    println!("DHCPv6 latency in µs, one client, {rounds} rounds per server");
    println!(
        "{:<16} {:>10} {:>8}   {:>8} {:>8}   {:>6}",
        "server", "ADVERTISE p50", "p99", "REPLY p50", "p99", "rounds"
    );
    let mut ours = {
        let config = DhcpV6Config::for_cached(&t.cached).expect("dual-stack pod");
        let server = netns::run_in(Some(&t.pod_path()), || DhcpV6Server::bind(config))
            .unwrap()
            .unwrap();
        let _serving = serve_on_thread(async move { server.run().await.unwrap() });
        measure(&t, rounds, warmup)
    };
    row("vmpod", &mut ours);
    let mut theirs = {
        let _peer = dnsmasq(&t, dir.path());
        measure(&t, rounds, warmup)
    };
    row("dnsmasq 2.90", &mut theirs);
}
