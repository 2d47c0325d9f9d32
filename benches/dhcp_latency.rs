//! DHCP latency, ours against dnsmasq and busybox udhcpd, in one run.
//!
//! `cargo bench --bench dhcp_latency` (root; builds network namespaces). One client
//! (the `vmpodctl dhcp probe` code) on a veth on the bridge `net setup` built times
//! DISCOVER->OFFER and REQUEST->ACK against each server in turn, each serving the same
//! single static lease with the same options, and prints median and p99.
//! Our server runs on a thread of this process, the others as their own processes;
//! every packet crosses the same veth and bridge. `DHCP_BENCH_ROUNDS` sets the rounds
//! per server (default 2000; udhcpd, far slower, gets a tenth).

#[path = "../tests/dhcp_fixture/mod.rs"]
mod dhcp_fixture;

use dhcp_fixture::*;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use vmpod::dhcp::probe::{ProbeOptions, probe};
use vmpod::net::netns;

/// The lease every server hands out (the fixture's subnet pod).
const VM_IP: &str = "10.244.7.23";
/// dnsmasq and udhcpd only serve a subnet the interface has an address in.
const BRIDGE_IN_SUBNET: Ipv4Addr = Ipv4Addr::new(10, 244, 7, 2);

struct Figures {
    offer: Vec<u64>,
    ack: Vec<u64>,
}

/// `rounds` probes from the VM side (after `warmup` unrecorded ones).
fn measure(t: &Topology, rounds: usize, warmup: usize) -> Figures {
    let opts = ProbeOptions {
        interface: VM_IF.into(),
        mac: t.vm_mac,
        timeout: Duration::from_secs(3),
    };
    netns::block_on_in(Some(&t.vm_path()), || async {
        let mut f = Figures {
            offer: Vec::new(),
            ack: Vec::new(),
        };
        for i in 0..rounds + warmup {
            let r = probe(&opts).await.expect("probe");
            assert_eq!(r.ack.yiaddr.to_string(), VM_IP, "wrong lease");
            if i >= warmup {
                f.offer.push(r.offer.rtt_us);
                f.ack.push(r.ack.rtt_us);
            }
        }
        f
    })
    .unwrap()
}

/// Wait for a peer to answer before timing it.
fn wait_ready(t: &Topology) {
    let opts = ProbeOptions {
        interface: VM_IF.into(),
        mac: t.vm_mac,
        timeout: Duration::from_millis(500),
    };
    let ok = netns::block_on_in(Some(&t.vm_path()), || async {
        for _ in 0..20 {
            if probe(&opts).await.is_ok() {
                return true;
            }
        }
        false
    })
    .unwrap();
    assert!(ok, "server never answered");
}

fn dnsmasq(t: &Topology, dir: &Path) -> Reap {
    let child = dnsmasq_command(t, dir, VM_IP)
        .args([
            "--dhcp-option=3,10.244.7.1",
            "--dhcp-option=6,10.96.0.10,10.96.0.11",
            "--dhcp-option=15,default.svc.cluster.local",
            "--dhcp-option=119,default.svc.cluster.local,svc.cluster.local,cluster.local",
            "--dhcp-option=26,1400",
            "--dhcp-option=121,10.96.0.0/12,10.244.7.254,0.0.0.0/0,10.244.7.1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dnsmasq");
    Reap(child)
}

fn udhcpd(t: &Topology, dir: &Path) -> Reap {
    let conf = dir.join("udhcpd.conf");
    std::fs::write(
        &conf,
        format!(
            "start {VM_IP}\nend {VM_IP}\ninterface {}\nstatic_lease {} {VM_IP}\n\
             lease_file {}/udhcpd.leases\npidfile {}/udhcpd.pid\n\
             option subnet 255.255.255.0\noption router 10.244.7.1\noption dns 10.96.0.10 10.96.0.11\n\
             option domain default.svc.cluster.local\noption search default.svc.cluster.local svc.cluster.local cluster.local\n\
             option mtu 1400\noption staticroutes 10.96.0.0/12 10.244.7.254 0.0.0.0/0 10.244.7.1\noption lease 2592000\n",
            t.bridge(),
            t.vm_mac,
            dir.display(),
            dir.display()
        ),
    )
    .unwrap();
    let child = t
        .in_pod("busybox")
        .args(["udhcpd", "-f"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start udhcpd");
    Reap(child)
}

fn row(name: &str, f: &mut Figures) {
    f.offer.sort_unstable();
    f.ack.sort_unstable();
    println!(
        "{name:<16} {:>8} {:>8}   {:>8} {:>8}   {:>6}",
        percentile(&f.offer, 50),
        percentile(&f.offer, 99),
        percentile(&f.ack, 50),
        percentile(&f.ack, 99),
        f.offer.len()
    );
}

fn main() {
    let Some(rounds) = bench_rounds("dhcp_latency") else {
        return;
    };
    let warmup = 50;
    let t = Topology::new("bench", Shape::Subnet);
    t.add_bridge_address(IpAddr::V4(BRIDGE_IN_SUBNET), 24);
    let dir = tempfile::tempdir().unwrap();

    println!(
        "DHCP latency in µs, one client, {rounds} rounds per server ({} for udhcpd)",
        rounds / 10
    );
    println!(
        "{:<16} {:>8} {:>8}   {:>8} {:>8}   {:>6}",
        "server", "OFFER p50", "p99", "ACK p50", "p99", "rounds"
    );
    let mut ours = {
        let _server = start_server(&t, t.config());
        measure(&t, rounds, warmup)
    };
    row("vmpod", &mut ours);
    let mut theirs = {
        let _peer = dnsmasq(&t, dir.path());
        wait_ready(&t);
        measure(&t, rounds, warmup)
    };
    row("dnsmasq 2.90", &mut theirs);
    let mut bb = {
        let _peer = udhcpd(&t, dir.path());
        wait_ready(&t);
        measure(&t, rounds / 10, 5)
    };
    row("busybox udhcpd", &mut bb);
}
