//! The masquerade binding in a dual-stack pod, with real parts: `net setup` rewires the
//! pod for masquerade, the launcher's DHCPv4 server and IPv6 service (DHCPv6 + router
//! advertisements, `Ipv6Service::bind_for` as the launcher calls it) serve the bridge,
//! and dhcpcd in the VM's place (a veth on the bridge with the VM's MAC) gets
//! `fd10:0:2::2`, the default route from the RA via the bridge's link-local address, the
//! DNS servers, and its IPv4 lease unchanged. Through NAT66 it reaches the node, which
//! sees the pod's IPv6 address; a listed port on the pod's IPv6 address reaches a
//! listener in the VM's place, an unlisted one does not. `net teardown` leaves no nft
//! table and IPv6 forwarding as it was. With `/proc/sys` read-only, as in a container,
//! and IPv6 forwarding off, setup gives the VM IPv4 alone and records why.

mod dhcp_fixture;
mod support;

use dhcp_fixture::*;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;
use vmpod::dhcp::v6::service::Ipv6Service;
use vmpod::net::masquerade::MasqueradeOptions;
use vmpod::net::netns;
use vmpod::sandbox::PodSandbox;

const POD_IP6: &str = "fd77:9::23";
const NODE_IP6: &str = "fd77:9::1";
const POD_IP4: &str = "10.244.9.23";
const NODE_IP4: &str = "10.244.9.1";

/// Listen on `addr` inside `netns`; the source address of the first connection
/// accepted comes back on the channel, once the listener is closed (so the port is free
/// again).
fn listen_in(netns: &Path, addr: SocketAddr) -> mpsc::Receiver<IpAddr> {
    let listener = netns::run_in(Some(netns), || TcpListener::bind(addr))
        .unwrap()
        .unwrap_or_else(|e| panic!("listen on {addr} in {}: {e}", netns.display()));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let accepted = listener.accept();
        drop(listener);
        if let Ok((_conn, peer)) = accepted {
            let _ = tx.send(peer.ip().to_canonical());
        }
    });
    rx
}

/// A TCP connection from inside `netns` to `to`.
fn connect_from(netns: &Path, to: SocketAddr) -> std::io::Result<TcpStream> {
    netns::run_in(Some(netns), || {
        TcpStream::connect_timeout(&to, Duration::from_secs(3))
    })
    .unwrap()
}

/// Connect from `from` to a listener on `listen` in `to_ns` and return the source the
/// listener saw.
fn source_seen(from: &Path, to_ns: &Path, listen: SocketAddr, dial: SocketAddr) -> IpAddr {
    let seen = listen_in(to_ns, listen);
    let _conn = connect_from(from, dial).unwrap_or_else(|e| panic!("connect to {dial}: {e}"));
    seen.recv_timeout(Duration::from_secs(5))
        .unwrap_or_else(|_| panic!("the listener on {listen} accepted nothing"))
}

fn pod_sysctl(t: &Topology, key: &str) -> String {
    proc_sys(t.in_pod("cat"), key)
}

/// `nft list tables` run by `nft` (in the pod's namespace), as text.
fn nft_tables(mut nft: std::process::Command) -> String {
    succeeds(nft.args(["list", "tables"]).output().unwrap())
}

/// The stdout of a command that must have succeeded.
fn succeeds(o: std::process::Output) -> String {
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn dual_stack_masquerade_gives_the_vm_ipv6_behind_nat66() {
    let opts = MasqueradeOptions {
        ports: vec!["tcp/80".parse().unwrap()],
        ..MasqueradeOptions::default()
    };
    let t = Topology::masquerade("m6", Shape::DualStack, opts);
    let pod = t.pod_path();
    let node = t
        .pod
        .node_netns_path()
        .expect("an isolated node")
        .to_path_buf();
    let vm = t.vm_path();
    // Before setup IPv6 forwarding was off; setup turned it on.
    assert_eq!(t.cached.original.ipv6_forwarding, 0);
    assert_eq!(pod_sysctl(&t, "net/ipv6/conf/all/forwarding"), "1");
    assert!(nft_tables(t.in_pod("nft")).contains("table inet vmpod_masq_eth0"));

    // The launcher's servers, from the cache, as `network_phase` starts them.
    let _v4 = start_server(&t, t.config());
    let service = netns::run_in(Some(&pod), || Ipv6Service::bind_for(&t.cached))
        .unwrap()
        .unwrap()
        .expect("a dual-stack pod runs the IPv6 service with masquerade");
    let v6 = service.handle();
    let _serving = serve_on_thread(async move { service.run().await.unwrap() });

    let (dir, _client) = dhcpcd(
        &t,
        "option domain_name_servers, routers\noption dhcp6_name_servers, dhcp6_domain_search\n\
         noipv4ll\nnoarp\nipv6rs\nia_na\npersistent\n",
        "",
    );
    let out = dir.path();
    wait_recorded(out, &["BOUND", "BOUND6", "ROUTERADVERT"], 30, || {
        format!("dhcpcd, both leases and the RA: {:?}", v6.snapshot())
    });
    // IPv4 as before: the private address, the gateway on the bridge.
    let v4 = read_env(&out.join("BOUND.env"));
    for (key, want) in [("new_ip_address", "10.0.2.2"), ("new_routers", "10.0.2.1")] {
        assert_eq!(v4.get(key).map(String::as_str), Some(want), "{v4:?}");
    }
    // IPv6: fd10:0:2::2 by DHCPv6 with the pod's IPv6 nameserver, the RA from the
    // bridge's link-local address with the DNS options and the default route.
    assert_dhcpcd_ipv6(&t, out, "fd10:0:2::2");
    let bridge_ll = vmpod::net::ipv6::bridge_link_local(&t.cached.facts);

    // Out through NAT66 (and NAT44): the node sees the pod's addresses.
    let sock = |ip: &str, port: u16| SocketAddr::new(ip.parse().unwrap(), port);
    let seen = source_seen(&vm, &node, sock(NODE_IP6, 7006), sock(NODE_IP6, 7006));
    assert_eq!(seen, POD_IP6.parse::<IpAddr>().unwrap(), "NAT66 source");
    let seen = source_seen(&vm, &node, sock(NODE_IP4, 7004), sock(NODE_IP4, 7004));
    assert_eq!(seen, POD_IP4.parse::<IpAddr>().unwrap(), "NAT44 source");

    // In: the listed port on the pod's IPv6 (and IPv4) address reaches the VM, from
    // the node's own address (DNAT only).
    let seen = source_seen(&node, &vm, sock("::", 80), sock(POD_IP6, 80));
    assert_eq!(seen, NODE_IP6.parse::<IpAddr>().unwrap());
    let seen = source_seen(&node, &vm, sock("0.0.0.0", 80), sock(POD_IP4, 80));
    assert_eq!(seen, NODE_IP4.parse::<IpAddr>().unwrap());
    // A port not listed is not forwarded.
    let _unlisted = listen_in(&vm, sock("::", 8080));
    let closed = connect_from(&node, sock(POD_IP6, 8080));
    assert!(closed.is_err(), "8080 was forwarded: {closed:?}");

    // `vmpodctl net inspect` shows the IPv6 side of the masquerade binding.
    let shown = net_inspect(&t, env!("CARGO_BIN_EXE_vmpodctl"));
    let snap = v6.snapshot();
    for want in [
        "MASQUERADE eth0\nvm 10.0.2.2/24".to_owned(),
        format!("vm fd10:0:2::2/120 gateway fd10:0:2::1 (NAT66 behind {POD_IP6})"),
        format!(
            "prerouting: iifname eth0, ip6 daddr {POD_IP6}, tcp dport 80 -> dnat to fd10:0:2::2 [1 packets]"
        ),
        "postrouting: oifname eth0, ip6 saddr fd10:0:2::/120 -> masquerade [1 packets]".to_owned(),
        format!(
            "IPV6 eth0\nvm fd10:0:2::2/120 (mac {}) by DHCPv6 from server DUID {}; router {bridge_ll}",
            t.vm_mac, snap.dhcp.server_duid
        ),
    ] {
        assert!(
            shown.contains(&want),
            "no {want:?} in net inspect:\n{shown}"
        );
    }
    assert_eq!(snap.dhcp.lease.state, vmpod::dhcp::stats::LeaseState::Bound);
    assert!(snap.router_advertisements.periodic + snap.router_advertisements.solicited >= 1);

    drop(_client);
    vmpod::net::teardown(Some(&pod), t.state_dir()).expect("net teardown");
    assert!(
        !nft_tables(t.in_pod("nft")).contains("vmpod"),
        "{}",
        nft_tables(t.in_pod("nft"))
    );
    assert_eq!(pod_sysctl(&t, "net/ipv6/conf/all/forwarding"), "0");
    assert_eq!(
        pod_sysctl(&t, "net/ipv4/conf/eth0/forwarding"),
        t.cached.original.ipv4_forwarding.to_string()
    );
}

/// The cluster path: `vmpod-launcher net setup` as a container runs it, with
/// `/proc/sys` read-only (here a read-only bind mount in a mount namespace of its own).
/// With IPv6 forwarding off, setup succeeds with IPv4 alone, exactly as in an IPv4-only
/// pod: no IPv6 gateway or link-local address on the bridge, no IPv6 NAT rule, no
/// DHCPv6 lease or router advertisement to serve; the cache, `net inspect` and the
/// log say why, naming the sysctl. With it on already (a runtime applying the pod's
/// `securityContext.sysctls`), setup gives the VM IPv6 and writes nothing.
fn net_setup_with_read_only_proc_sys() {
    let (node, spec) = support::dual_stack_spec("m6ro");
    let sb = PodSandbox::create(&node, &spec).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let resolv = sb.resolv_conf_path();
    let launcher = support::launcher::launcher_bin();
    let read_only = |cmd: String| {
        let script = format!("mount -o bind,ro /proc/sys /proc/sys && exec {cmd}");
        sb.command("unshare")
            .unwrap()
            .args(["-m", "sh", "-c", &script])
            .output()
            .unwrap()
    };
    let net = |args: &str| {
        read_only(format!(
            "{} net {args} --state-dir {}",
            launcher.display(),
            state.display()
        ))
    };
    let setup = format!(
        "setup --binding masquerade --resolv-conf {}",
        resolv.display()
    );
    let forwarding = || proc_sys(sb.command("cat").unwrap(), "net/ipv6/conf/all/forwarding");
    let bridge_addresses = || {
        succeeds(
            sb.command("ip")
                .unwrap()
                .args(["-o", "addr", "show", "dev", "k6t-eth0"])
                .output()
                .unwrap(),
        )
    };
    let ruleset = || {
        succeeds(
            sb.command("nft")
                .unwrap()
                .args(["list", "table", "inet", "vmpod_masq_eth0"])
                .output()
                .unwrap(),
        )
    };
    assert_eq!(forwarding(), "0");
    let o = net(&setup);
    let log = succeeds(o.clone()) + &String::from_utf8_lossy(&o.stderr);
    assert!(
        log.contains("net.ipv6.conf.all.forwarding is 0 and /proc/sys is read-only"),
        "no warning naming the sysctl:\n{log}"
    );
    assert_eq!(forwarding(), "0");
    let addrs = bridge_addresses();
    assert!(addrs.contains("inet 10.0.2.1/24"), "{addrs}");
    assert!(!addrs.contains("inet6"), "IPv6 on the bridge: {addrs}");
    let rules = ruleset();
    assert!(rules.contains("ip saddr 10.0.2.0/24"), "{rules}");
    assert!(!rules.contains("ip6"), "IPv6 NAT rules: {rules}");
    let entry = vmpod::net::cache::load(&state, "eth0").unwrap().unwrap();
    let why = entry.ipv6_off.clone().expect("the reason in the cache");
    assert!(
        why.contains("securityContext.sysctls net.ipv6.conf.all.forwarding=1"),
        "{why}"
    );
    // Nothing to serve over IPv6: no DHCPv6 lease, no router advertisement.
    assert!(vmpod::dhcp::v6::DhcpV6Config::for_cached(&entry).is_none());
    let inspect = read_only(format!(
        "{} net inspect --netns {} --state-dir {}",
        env!("CARGO_BIN_EXE_vmpodctl"),
        sb.netns_path().display(),
        state.display()
    ));
    let inspect = succeeds(inspect);
    assert!(
        inspect.contains(&format!("IPv6 off: {why}")) && !inspect.contains("NAT66"),
        "{inspect}"
    );
    // Teardown undoes it, writing nothing (forwarding is as it was).
    succeeds(net("teardown"));
    assert_eq!(forwarding(), "0");

    let on = "echo 1 > /proc/sys/net/ipv6/conf/all/forwarding";
    succeeds(sb.command("sh").unwrap().args(["-c", on]).output().unwrap());
    succeeds(net(&setup));
    let entry = vmpod::net::cache::load(&state, "eth0").unwrap().unwrap();
    assert_eq!(entry.ipv6_off, None);
    assert!(bridge_addresses().contains("inet6 fd10:0:2::1/120"));
    assert!(ruleset().contains("ip6 saddr fd10:0:2::/120"));
    succeeds(net("teardown"));
    assert_eq!(forwarding(), "1");
    let tables = nft_tables(sb.command("nft").unwrap());
    assert!(!tables.contains("vmpod"), "{tables}");
}

#[test]
fn masquerade_net_setup_leaves_ipv6_off_when_forwarding_is_off_and_proc_sys_read_only() {
    if support::privileged(
        "masquerade_net_setup_leaves_ipv6_off_when_forwarding_is_off_and_proc_sys_read_only",
    ) {
        net_setup_with_read_only_proc_sys();
    }
}

#[test]
fn masquerade_in_a_dual_stack_pod_serves_fd10_0_2_2_behind_nat66() {
    if support::privileged("masquerade_in_a_dual_stack_pod_serves_fd10_0_2_2_behind_nat66") {
        dual_stack_masquerade_gives_the_vm_ipv6_behind_nat66();
    }
}
