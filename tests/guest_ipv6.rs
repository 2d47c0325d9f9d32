//! The real test guest (tests/guest/) under QEMU on the tap `net setup` made in a
//! dual-stack pod, with the launcher's DHCPv4 server and its IPv6 side (router
//! advertisements + DHCPv6, [`Ipv6Service`]) running in the pod. The guest's dhcpcd
//! (`vmpod.ipv6=1`) takes our router advertisement, follows its managed flag to DHCPv6
//! and gets exactly the pod's IPv6 address, a default route via the bridge's link-local
//! address and the pod's IPv6 DNS servers, then pings the node's IPv6 gateway; its IPv4
//! lease is the pod's address as before. The same through the real launcher:
//! tests/launcher_ipv6.rs.

mod dhcp_fixture;
mod support;

use dhcp_fixture::*;
use std::net::Ipv6Addr;
use std::time::Duration;
use support::guest::{DualStackWant, GuestNet, GuestOptions, QemuGuest};
use vmpod::dhcp::stats::LeaseState;
use vmpod::dhcp::v6::service::Ipv6Service;
use vmpod::net::netns;

/// The node's IPv6 gateway in [`Shape::DualStack`].
const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd77, 9, 0, 0, 0, 0, 0, 1);

#[test]
fn guest_takes_the_pods_ipv6_by_ra_and_dhcpv6_in_a_dual_stack_pod() {
    if !support::privileged("guest_takes_the_pods_ipv6_by_ra_and_dhcpv6_in_a_dual_stack_pod") {
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
        ping6: Some(GATEWAY6),
        ..GuestOptions::default()
    });
    let report = vm
        .wait_for(Duration::from_secs(150), |r| r.ipv6_settled())
        .unwrap();
    let console = vm.console();
    let want = DualStackWant {
        ipv4: "10.244.9.23".parse().unwrap(),
        prefix4: 24,
        ipv6: "fd77:9::23".parse().unwrap(),
        router6: vmpod::net::ipv6::bridge_link_local(&t.cached.facts),
        dns6: vec!["fd77:9::53".parse().unwrap()],
        ping6: GATEWAY6,
    };
    let got = report
        .dual_stack(&want)
        .unwrap_or_else(|e| panic!("{e}\n{:?}\n{console}", ipv6_stats.snapshot()));
    // The rest of what the RA and the DHCPv6 reply carry, as dhcpcd took it.
    assert_eq!(got.ra.prefixes, ["fd77:9::/64"], "{console}");
    assert_eq!(got.ra.mtu, Some(1400), "{console}");
    assert_eq!(
        got.ra.dnssl,
        ["default.svc.cluster.local", "cluster.local"],
        "{console}"
    );
    assert_eq!(
        got.dhcp6.search,
        ["default.svc.cluster.local", "cluster.local"],
        "{console}"
    );
    assert_eq!(got.dhcp6.event, "BOUND6", "{console}");
    let s = ipv6_stats.snapshot();
    // dhcpcd prints the DUID as plain hex, the server's stats with colons.
    assert_eq!(
        got.dhcp6.server_id,
        Some(s.dhcp.server_duid.replace(':', "")),
        "{console}"
    );
    assert_eq!(s.dhcp.lease.state, LeaseState::Bound, "{s:?}");
    assert!(
        s.router_advertisements.solicitations >= 1,
        "the guest's dhcpcd solicited: {s:?}"
    );
    assert_eq!(v4.stats.snapshot().replies.ack, 1);
}
