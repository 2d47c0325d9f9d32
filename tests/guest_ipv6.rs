//! The real test guest (tests/guest/) under QEMU on the tap `net setup` made in a
//! dual-stack pod, with the launcher's DHCPv4 server and its IPv6 side (router
//! advertisements + DHCPv6) running in the pod: the guest's IPv4 lease is the pod's
//! address as before, and its kernel takes our router advertisement (default router:
//! the bridge's link-local address, no SLAAC address from the on-link prefix) and
//! pings that router. The guest's busybox has no DHCPv6 client (Debian's busybox-static
//! is built without udhcpc6), so the DHCPv6 lease itself is proven by the real clients
//! in tests/dhcpv6_clients.rs.

mod dhcp_fixture;
mod support;

use dhcp_fixture::*;
use std::time::Duration;
use support::guest::{GuestNet, GuestOptions, QemuGuest};
use vmpod::dhcp::v6::service::Ipv6Service;
use vmpod::net::netns;

#[test]
fn guest_kernel_takes_the_ra_in_a_dual_stack_pod() {
    if !support::privileged("guest_kernel_takes_the_ra_in_a_dual_stack_pod") {
        return;
    }
    let t = Topology::pod_only("g6", Shape::DualStack, None);
    let v4 = start_server(&t, t.config());
    let ipv6 = netns::run_in(Some(&t.pod_path()), || Ipv6Service::bind_for(&t.cached))
        .unwrap()
        .unwrap()
        .expect("a dual-stack pod runs the IPv6 side");
    let ipv6_stats = ipv6.handle();
    let _ipv6 = serve_on_thread(async move { ipv6.run().await.unwrap() });
    let vm = QemuGuest::boot(&GuestOptions {
        net: GuestNet::Tap {
            ifname: vmpod::net::tap_name("eth0"),
        },
        mac: Some(t.vm_mac.to_string()),
        netns: Some(t.pod_path()),
        ipv6: true,
        ..GuestOptions::default()
    });
    let report = vm
        .wait_for(Duration::from_secs(120), |r| {
            r.ping6.is_some() || r.lease_failed || r.powered_off
        })
        .unwrap();
    let console = vm.console();
    let lease = report
        .lease
        .unwrap_or_else(|| panic!("no IPv4 lease:\n{console}"));
    assert_eq!(
        (lease.ip.to_string(), lease.prefix),
        ("10.244.9.23".to_owned(), 24),
        "{console}"
    );
    assert!(report.ping.is_some_and(|p| p.ok), "IPv4 ping:\n{console}");
    let v6 = report
        .ipv6
        .unwrap_or_else(|| panic!("no IPv6 report:\n{console}"));
    let bridge_ll = vmpod::net::ipv6::bridge_link_local(&t.cached.facts);
    assert_eq!(
        v6.routers,
        [bridge_ll],
        "{:?}\n{console}",
        ipv6_stats.snapshot()
    );
    // The prefix is on-link only (autonomous flag off): no SLAAC address.
    assert!(v6.addresses.is_empty(), "{:?}\n{console}", v6.addresses);
    let ping6 = report.ping6.unwrap();
    assert!(ping6.ok, "ping6 {ping6:?}:\n{console}");
    let s = ipv6_stats.snapshot();
    assert!(
        s.router_advertisements.solicitations >= 1,
        "the guest's kernel solicited: {s:?}"
    );
    assert_eq!(v4.stats.snapshot().replies.ack, 1);
}
