//! End to end, IPv6 with the bridge binding: the real launcher in a dual-stack pod
//! sandbox (IPv4 + IPv6 on `eth0`, default routes for both) boots the test guest through
//! its own libvirtd under QEMU. The guest's dhcpcd (`vmpod.ipv6=1`) takes the launcher's
//! router advertisement and DHCPv6 lease: exactly the pod's IPv6 address, a default
//! route via the bridge's link-local address and the pod's IPv6 DNS servers; it pings
//! the node's IPv6 gateway, and its IPv4 lease is the pod's address as without IPv6.
mod support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;
use support::guest::{DualStackWant, GuestReport};
use support::launcher::{Launcher, testguest_vmi};
use vmpod::dhcp::stats::LeaseState;
use vmpod::sandbox::PodSandbox;

const BOOT: Duration = Duration::from_secs(150);
/// The node's IPv6 gateway in [`support::dual_stack_spec`].
const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1);
/// The IPv6 nameserver this test adds to the pod's resolv.conf.
const DNS6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x53);

#[test]
fn launcher_gives_the_guest_the_pods_ipv6_by_ra_and_dhcpv6() {
    if !support::privileged("launcher_gives_the_guest_the_pods_ipv6_by_ra_and_dhcpv6") {
        return;
    }
    let (node, mut spec) = support::dual_stack_spec("l6boot");
    spec.dns.push(IpAddr::V6(DNS6));
    let sb = PodSandbox::create(&node, &spec).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let vmi = testguest_vmi("l6boot", "#cloud-config\n", true, 10).replacen(
        "vmpod.hold=1",
        &format!("vmpod.hold=1 vmpod.ipv6=1 vmpod.ping6={GATEWAY6}"),
        1,
    );
    assert!(vmi.contains("vmpod.ipv6=1"), "{vmi}");
    let mut l = Launcher::start(&sb, &state, &vmi, &[]);
    let report = l.wait_report(BOOT, GuestReport::ipv6_settled);

    let network = support::launcher::network_report(&state);
    let eth0 = &network.interfaces[0];
    let want = DualStackWant {
        ipv4: Ipv4Addr::new(10, 77, 0, 5),
        prefix4: 24,
        ipv6: "fd77::5".parse().unwrap(),
        router6: vmpod::net::ipv6::bridge_link_local(&eth0.facts),
        dns6: vec![DNS6],
        ping6: GATEWAY6,
    };
    let got = report
        .dual_stack(&want)
        .unwrap_or_else(|e| panic!("{e}\n{:?}\n{}", eth0.ipv6, l.console()));
    // The IPv4 lease is what the pod gives without IPv6.
    assert_eq!(got.lease.router(), Some(Ipv4Addr::new(10, 77, 0, 1)));
    assert_eq!(got.lease.dns, [IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10))]);
    assert_eq!((got.lease.mtu, got.lease.link_mtu), (Some(1450), 1450));
    assert_eq!(got.ra.mtu, Some(1450));
    assert_eq!(got.ra.prefixes, ["fd77::/64"]);
    assert_eq!(got.dhcp6.search, ["default.svc.cluster.local"]);
    // The launcher's view: the DHCPv6 lease is bound to the server that answered.
    let ipv6 = eth0.ipv6.as_ref().expect("the IPv6 side in /v1/network");
    assert_eq!(ipv6.dhcp.lease.state, LeaseState::Bound, "{ipv6:?}");
    assert_eq!(ipv6.dhcp.lease.address, want.ipv6);
    assert_eq!(
        got.dhcp6.server_id,
        Some(ipv6.dhcp.server_duid.replace(':', ""))
    );
    assert!(ipv6.router_advertisements.solicitations >= 1, "{ipv6:?}");

    l.stop_gracefully(Duration::from_secs(30));
}
