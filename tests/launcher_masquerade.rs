//! End to end, masquerade binding: the real launcher in a pod sandbox boots the test
//! guest serving HTTP (`vmpod.http=1`, ports 80 and 8080) behind NAT. The guest must
//! lease the private address by DHCP and ping the node's gateway through the NAT; the
//! node reaches the guest's page through the pod IP on a listed port only (every port
//! when none is listed), the pod itself through 127.0.0.1; teardown leaves no nft table,
//! link or forwarding setting behind.
mod support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::guest::{DualStackWant, GuestReport};
use support::http::{fetch, get};
use support::launcher::{Launcher, pod_addresses, pod_links, processes_mentioning, testguest_vmi};
use vmpod::dhcp::stats::LeaseState;
use vmpod::net::IpCidr;
use vmpod::sandbox::{NodeSpec, PodSandbox, PodSpec, command_in};

const PAGE: &str = "vmpod test guest page";
const BOOT: Duration = Duration::from_secs(150);
const GATEWAY: &str = "10.79.0.1";
const POD_IP: &str = "10.79.0.5";

fn pod(name: &str) -> PodSandbox {
    let node = NodeSpec::isolated(vec![format!("{GATEWAY}/24").parse::<IpCidr>().unwrap()]);
    let mut spec = PodSpec::new(
        name,
        format!("{POD_IP}/24").parse::<IpCidr>().unwrap(),
        GATEWAY.parse().unwrap(),
    );
    spec.mtu = 1400;
    spec.dns = vec!["10.96.0.10".parse().unwrap()];
    spec.search = vec!["default.svc.cluster.local".into()];
    PodSandbox::create(&node, &spec).unwrap()
}

/// A test's pod on a node of its own, the node's namespace, the launcher's state dir (in
/// a temporary directory, removed when dropped) and eth0's forwarding before the test.
struct Site {
    sb: PodSandbox,
    node_ns: PathBuf,
    state: PathBuf,
    forwarding_before: String,
    _dir: tempfile::TempDir,
}

impl Site {
    /// The site of a privileged test around the pod `make` creates; `None` where
    /// [`support::privileged_test`] skips the test.
    fn privileged(make: impl FnOnce() -> PodSandbox) -> Option<Site> {
        support::privileged_test().then(|| Site::new(make()))
    }

    fn new(sb: PodSandbox) -> Site {
        let node_ns = sb
            .node_netns_path()
            .expect("an isolated node")
            .to_path_buf();
        let dir = tempfile::tempdir().unwrap();
        Site {
            forwarding_before: eth0_forwarding(&sb),
            state: dir.path().join("state"),
            sb,
            node_ns,
            _dir: dir,
        }
    }

    /// `vmpodctl net inspect` of the pod (with the cache in the state dir) shows each of
    /// `wants`.
    fn assert_inspect_shows(&self, wants: &[&str]) {
        let out = support::stdout_of(
            std::process::Command::new(env!("CARGO_BIN_EXE_vmpodctl"))
                .args(["net", "inspect", "--netns"])
                .arg(self.sb.netns_path())
                .arg("--state-dir")
                .arg(&self.state),
            "vmpodctl net inspect",
        );
        let text = String::from_utf8_lossy(&out);
        for want in wants {
            assert!(text.contains(want), "no {want:?} in net inspect:\n{text}");
        }
    }
}

/// The test guest's VMI with the masquerade binding, `ports` as a YAML flow list (empty:
/// none listed), serving HTTP and pinging the node's gateway.
fn masquerade_vmi(name: &str, ports: &str) -> String {
    let ports = if ports.is_empty() {
        String::new()
    } else {
        format!("          ports: {ports}\n")
    };
    let vmi = testguest_vmi(name, "#cloud-config\n", true, 10)
        .replacen(
            "          bridge: {}\n",
            &format!("          masquerade: {{}}\n{ports}"),
            1,
        )
        .replacen(
            "vmpod.hold=1",
            &format!("vmpod.http=1 vmpod.ping={GATEWAY}"),
            1,
        );
    assert!(vmi.contains("masquerade: {}") && vmi.contains("vmpod.http=1"));
    vmi
}

/// `nft -j list tables` in `netns`: `<family> <name>` of each table.
fn nft_tables(netns: &Path) -> Vec<String> {
    let out = support::stdout_of(
        command_in(netns, "nft")
            .unwrap()
            .args(["-j", "list", "tables"]),
        "nft list tables",
    );
    nft_objects(&out, "table")
        .iter()
        .map(|t| {
            format!(
                "{} {}",
                t["family"].as_str().unwrap(),
                t["name"].as_str().unwrap()
            )
        })
        .collect()
}

/// The `kind` objects (`table`, `rule`, ...) of `nft -j` output `out`.
fn nft_objects(out: &[u8], kind: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_slice(out).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get(kind).cloned())
        .collect()
}

/// `nft list ruleset` in `netns`, as text.
fn nft_ruleset(netns: &Path) -> String {
    let out = command_in(netns, "nft")
        .unwrap()
        .args(["list", "ruleset"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The guest is up with its private lease, pinged the node through the NAT and serves.
fn wait_serving(l: &mut Launcher) {
    let report = l.wait_report(BOOT, |r| r.http.is_some() && r.ping.is_some());
    let lease = report.lease.clone().expect("a lease");
    assert_eq!(lease.ip, Ipv4Addr::new(10, 0, 2, 2));
    assert_eq!(lease.prefix, 24);
    assert_eq!(lease.router(), Some(Ipv4Addr::new(10, 0, 2, 1)));
    assert_eq!(lease.mtu, Some(1400));
    assert_eq!(
        lease.dns,
        vec!["10.96.0.10".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(lease.search, ["default.svc.cluster.local"]);
    let ping = report.ping.expect("a ping report");
    assert_eq!(ping.target, GATEWAY.parse::<Ipv4Addr>().unwrap());
    assert!(
        ping.ok,
        "guest could not ping the node through the NAT: {ping:?}"
    );
    let http = report.http.expect("VMPOD-HTTP");
    assert_eq!(http.ports, [80, 8080], "guest httpd did not start");
}

/// `net/ipv4/conf/eth0/forwarding` in the pod.
fn eth0_forwarding(sb: &PodSandbox) -> String {
    let out = sb
        .command("cat")
        .unwrap()
        .arg("/proc/sys/net/ipv4/conf/eth0/forwarding")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// No vmpod nft table in the pod.
fn assert_no_vmpod_table(sb: &PodSandbox) {
    assert!(
        !nft_tables(sb.netns_path())
            .iter()
            .any(|t| t.contains("vmpod")),
        "nft ruleset left behind:\n{}",
        nft_ruleset(sb.netns_path())
    );
}

/// No nft table, bridge, tap or process left, and eth0's forwarding as it was before.
fn nothing_left(sb: &PodSandbox, state: &Path, forwarding_before: &str) {
    assert_no_vmpod_table(sb);
    let links = pod_links(sb);
    assert!(
        !links.iter().any(|l| l == "k6t-eth0" || l == "tap-eth0"),
        "{links:?}"
    );
    assert_eq!(eth0_forwarding(sb), forwarding_before);
    assert!(processes_mentioning(&state.to_string_lossy()).is_empty());
}

#[test]
fn masquerade_forwards_listed_ports_to_the_guest_and_nats_it_out() {
    let Some(site) = Site::privileged(|| pod("lmasq")) else {
        return;
    };
    let vmi = masquerade_vmi("lmasq", "[{name: http, port: 80}]");
    let mut l = Launcher::start(&site.sb, &site.state, &vmi, &[]);
    wait_serving(&mut l);

    // The pod keeps its IP; the bridge holds the gateway.
    let addrs = pod_addresses(&site.sb);
    assert!(
        addrs.contains(&format!("{POD_IP}/24").parse::<IpCidr>().unwrap()),
        "{addrs:?}"
    );
    assert!(
        addrs.contains(&"10.0.2.1/24".parse::<IpCidr>().unwrap()),
        "{addrs:?}"
    );
    assert!(nft_tables(site.sb.netns_path()).contains(&"inet vmpod_masq_eth0".to_string()));
    assert_eq!(eth0_forwarding(&site.sb), "1");

    // From inside the pod, through 127.0.0.1.
    let page = fetch(site.sb.netns_path(), "127.0.0.1", 80).unwrap_or_else(|e| {
        panic!(
            "pod -> 127.0.0.1:80: {e}\n{}",
            nft_ruleset(site.sb.netns_path())
        )
    });
    assert_eq!(page.trim(), PAGE);
    // From the guest's own address inside the pod (the bridge route).
    let page = fetch(site.sb.netns_path(), "10.0.2.2", 80)
        .unwrap_or_else(|e| panic!("pod -> 10.0.2.2:80: {e}"));
    assert_eq!(page.trim(), PAGE);
    // From the node, through the pod IP, on the listed port.
    let page = fetch(&site.node_ns, POD_IP, 80).unwrap_or_else(|e| {
        panic!(
            "node -> pod IP:80: {e}\n{}",
            nft_ruleset(site.sb.netns_path())
        )
    });
    assert_eq!(page.trim(), PAGE);
    // A port not listed is not forwarded (the guest listens on 8080 too).
    let closed = fetch(&site.node_ns, POD_IP, 8080);
    assert!(closed.is_err(), "8080 was forwarded: {closed:?}");

    // `vmpodctl net inspect` shows the binding, the VM's address and the live rules,
    // counted.
    site.assert_inspect_shows(&[
        "MASQUERADE eth0",
        "vm 10.0.2.2/24",
        "gateway 10.0.2.1; forwarded: tcp/80",
        &format!(
            "prerouting: iifname eth0, ip daddr {POD_IP}, tcp dport 80 -> dnat to 10.0.2.2 [1 packets]"
        ),
        "output: ip daddr 127.0.0.1, tcp dport 80 -> dnat to 10.0.2.2 [1 packets]",
        "postrouting: oifname eth0, ip saddr 10.0.2.0/24 -> masquerade",
    ]);

    l.stop_gracefully(Duration::from_secs(30));
    nothing_left(&site.sb, &site.state, &site.forwarding_before);
    let addrs = pod_addresses(&site.sb);
    assert!(
        addrs.contains(&format!("{POD_IP}/24").parse::<IpCidr>().unwrap()),
        "{addrs:?}"
    );
}

/// The launcher Pod's shape: the init container `net setup` (NET_ADMIN) sets the pod up
/// for masquerade with no port listed; the launcher reuses it untouched; every port of
/// the pod IP reaches the guest; `net teardown` leaves nothing behind.
#[test]
fn masquerade_set_up_by_init_container_forwards_every_port_when_none_listed() {
    let Some(site) = Site::privileged(|| pod("lmasqall")) else {
        return;
    };
    let net = |args: &[&str]| {
        support::stdout_of(
            site.sb
                .command(support::launcher::launcher_bin())
                .unwrap()
                .arg("net")
                .args(args)
                .arg("--state-dir")
                .arg(&site.state),
            &format!("net {args:?}"),
        );
    };
    let resolv = site.sb.resolv_conf_path();
    // `vmpodctl net plan` shows the NAT op with the ports asked for, changing nothing.
    let mut plan = std::process::Command::new(env!("CARGO_BIN_EXE_vmpodctl"));
    plan.args([
        "net",
        "plan",
        "--binding",
        "masquerade",
        "--port",
        "tcp/80",
        "--json",
    ])
    .args(["--resolv-conf", resolv.to_str().unwrap(), "--netns"])
    .arg(site.sb.netns_path())
    .arg("--state-dir")
    .arg(&site.state);
    let plan: serde_json::Value =
        serde_json::from_slice(&support::stdout_of(&mut plan, "vmpodctl net plan")).unwrap();
    let nat = plan["ops"].as_array().unwrap().last().unwrap();
    assert_eq!(nat["op"], "nat");
    assert_eq!(nat["families"][0]["vmIp"], "10.0.2.2");
    assert_eq!(
        nat["families"].as_array().unwrap().len(),
        1,
        "an IPv4-only pod: {nat}"
    );
    assert_eq!(
        nat["ports"],
        serde_json::json!([{"protocol": "tcp", "port": 80}])
    );
    assert!(
        nft_tables(site.sb.netns_path()).is_empty(),
        "plan changed nothing"
    );
    let setup = [
        "setup",
        "--binding",
        "masquerade",
        "--resolv-conf",
        resolv.to_str().unwrap(),
    ];
    net(&setup);
    // Setup again converges (idempotent) instead of failing on what exists.
    net(&setup);

    let vmi = masquerade_vmi("lmasqall", "");
    let mut l = Launcher::start(&site.sb, &site.state, &vmi, &[]);
    wait_serving(&mut l);
    assert!(
        l.log().contains("already rewired"),
        "the launcher did not reuse the init container's setup:\n{}",
        l.log()
    );
    for port in [80, 8080] {
        let page = fetch(&site.node_ns, POD_IP, port)
            .unwrap_or_else(|e| panic!("node -> pod IP:{port}: {e}"));
        assert_eq!(page.trim(), PAGE);
    }

    l.stop_gracefully(Duration::from_secs(30));
    // The launcher leaves the init container's setup alone; `net teardown` undoes it.
    assert!(nft_tables(site.sb.netns_path()).contains(&"inet vmpod_masq_eth0".to_string()));
    net(&["teardown"]);
    nothing_left(&site.sb, &site.state, &site.forwarding_before);
}

/// The node's IPv6 gateway in [`support::dual_stack_spec`]: outside the pod, so the
/// guest's ping6 to it goes through NAT66.
const NODE6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1);
/// The IPv6 nameserver the dual-stack test adds to the pod's resolv.conf.
const DNS6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x53);

/// A counter in the node's namespace of the ICMPv6 echo requests reaching it from
/// `source`; read back by [`node_echo_requests`].
fn count_node_echo_requests(node_ns: &Path, sources: &[(&str, &str)]) {
    let mut rules = String::from(
        "table inet vmpodtest_node6 {\n chain input {\n  type filter hook input priority 0;\n",
    );
    for (name, source) in sources {
        rules.push_str(&format!(
            "  ip6 saddr {source} icmpv6 type echo-request counter comment \"{name}\"\n"
        ));
    }
    rules.push_str(" }\n}\n");
    let mut nft = command_in(node_ns, "nft").unwrap();
    nft.args(["-f", "-"]).stdin(std::process::Stdio::piped());
    let mut child = nft.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "nft -f in the node:\n{rules}"
    );
}

/// The packets counted by the rule `name` of [`count_node_echo_requests`].
fn node_echo_requests(node_ns: &Path, name: &str) -> u64 {
    let out = support::stdout_of(
        command_in(node_ns, "nft").unwrap().args([
            "-j",
            "list",
            "table",
            "inet",
            "vmpodtest_node6",
        ]),
        "nft list table in the node",
    );
    let rules = nft_objects(&out, "rule");
    rules
        .iter()
        .find(|r| r["comment"] == name)
        .and_then(|r| {
            r["expr"]
                .as_array()?
                .iter()
                .find_map(|e| e["counter"]["packets"].as_u64())
        })
        .unwrap_or_else(|| panic!("no counter {name:?} in the node's table: {rules:?}"))
}

/// The real launcher, masquerade, in a dual-stack pod, the guest running dhcpcd
/// (`vmpod.ipv6=1`): it leases `fd10:0:2::2` by DHCPv6, takes the default route from
/// the bridge's router advertisement and the pod's IPv6 DNS servers, and pings the node
/// through NAT66 (the node sees the pod's IPv6 address as the source, never the VM's);
/// its IPv4 lease is as in an IPv4-only pod. `/v1/network` shows the IPv6 side (the
/// lease bound, router advertisements sent, the NAT op with both families); `net
/// inspect` shows the IPv6 rules; SIGTERM restores IPv6 forwarding.
#[test]
fn masquerade_in_a_dual_stack_pod_reports_its_ipv6_side() {
    let Some(site) = Site::privileged(|| {
        let (node, mut spec) = support::dual_stack_spec("lmasq6");
        spec.dns.push(IpAddr::V6(DNS6));
        PodSandbox::create(&node, &spec).unwrap()
    }) else {
        return;
    };
    count_node_echo_requests(
        &site.node_ns,
        &[("pod", "fd77::5"), ("vm", "fd10:0:2::/120")],
    );
    let ipv6_forwarding = || {
        let out = site
            .sb
            .command("cat")
            .unwrap()
            .arg("/proc/sys/net/ipv6/conf/all/forwarding")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let before = ipv6_forwarding();
    let vmi = masquerade_vmi("lmasq6", "[{name: http, port: 80}]").replacen(
        &format!("vmpod.ping={GATEWAY}"),
        &format!("vmpod.ping=10.77.0.1 vmpod.ipv6=1 vmpod.ping6={NODE6}"),
        1,
    );
    assert!(vmi.contains("vmpod.ipv6=1"), "{vmi}");
    let mut l = Launcher::start(&site.sb, &site.state, &vmi, &[]);
    let report = l.wait_report(BOOT, GuestReport::ipv6_settled);

    let network = support::launcher::network_report(&site.state);
    let iface = &network.interfaces[0];
    let want = DualStackWant {
        ipv4: Ipv4Addr::new(10, 0, 2, 2),
        prefix4: 24,
        ipv6: "fd10:0:2::2".parse().unwrap(),
        router6: vmpod::net::ipv6::bridge_link_local(&iface.facts),
        dns6: vec![DNS6],
        ping6: NODE6,
    };
    let got = report.dual_stack(&want).unwrap_or_else(|e| {
        panic!(
            "{e}\n{:?}\n{}\n{}",
            iface.ipv6,
            nft_ruleset(site.sb.netns_path()),
            l.console()
        )
    });
    // The IPv4 lease is what an IPv4-only pod gives.
    assert_eq!(got.lease.router(), Some(Ipv4Addr::new(10, 0, 2, 1)));
    assert_eq!(got.lease.dns, [IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10))]);
    assert_eq!(got.ping.target, Ipv4Addr::new(10, 77, 0, 1));
    assert_eq!(got.ra.prefixes, ["fd10:0:2::/120"]);
    // The node saw the echo requests from the pod's address: NAT66, not routed.
    assert!(
        node_echo_requests(&site.node_ns, "pod") >= 1,
        "the node saw no echo request from fd77::5"
    );
    assert_eq!(
        node_echo_requests(&site.node_ns, "vm"),
        0,
        "the VM's address leaked"
    );

    let ipv6 = iface.ipv6.as_ref().expect("the IPv6 side in /v1/network");
    assert_eq!(
        (ipv6.dhcp.lease.address, ipv6.dhcp.lease.prefix),
        (want.ipv6, 120)
    );
    assert_eq!(ipv6.dhcp.lease.state, LeaseState::Bound, "{ipv6:?}");
    assert_eq!(ipv6.router_advertisements.bridge, "k6t-eth0");
    let nat = iface
        .plan
        .iter()
        .find_map(|op| match op {
            vmpod::net::NetOp::Nat(rules) => Some(rules),
            _ => None,
        })
        .expect("the NAT op in the applied plan");
    let vm_ips: Vec<String> = nat.families.iter().map(|a| a.vm_ip.to_string()).collect();
    assert_eq!(vm_ips, ["10.0.2.2", "fd10:0:2::2"]);
    assert_eq!(ipv6_forwarding(), "1");

    site.assert_inspect_shows(&[
        "vm fd10:0:2::2/120 gateway fd10:0:2::1 (NAT66 behind fd77::5)",
        "prerouting: iifname eth0, ip6 daddr fd77::5, tcp dport 80 -> dnat to fd10:0:2::2",
        "postrouting: oifname eth0, ip6 saddr fd10:0:2::/120 -> masquerade",
        "IPV6 eth0\nvm fd10:0:2::2/120",
    ]);

    l.stop_gracefully(Duration::from_secs(30));
    assert_no_vmpod_table(&site.sb);
    assert_eq!(ipv6_forwarding(), before);
}

/// Bridge versus masquerade, one run each, from the node's namespace to the guest's
/// httpd through the pod IP: TCP connect time (median of 50) and one 10 MiB GET.
/// `cargo test --test launcher_masquerade -- --ignored --nocapture bench_`
#[test]
#[ignore = "benchmark"]
fn bench_bridge_vs_masquerade_connect_and_10mib_from_the_node() {
    if !support::privileged("bench_bridge_vs_masquerade_connect_and_10mib_from_the_node") {
        return;
    }
    for binding in ["bridge", "masquerade"] {
        let name = format!("lbench{}", &binding[..1]);
        let site = Site::new(pod(&name));
        let mut vmi = masquerade_vmi(&name, "");
        if binding == "bridge" {
            vmi = vmi.replacen("masquerade: {}", "bridge: {}", 1);
        }
        let mut l = Launcher::start(&site.sb, &site.state, &vmi, &[]);
        l.wait_report(BOOT, |r| r.http.is_some());
        let target: std::net::SocketAddr = format!("{POD_IP}:80").parse().unwrap();
        let mut connects: Vec<Duration> = vmpod::net::netns::run_in(Some(&site.node_ns), || {
            (0..50)
                .map(|_| {
                    let t = std::time::Instant::now();
                    let s = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5))
                        .expect("connect");
                    let d = t.elapsed();
                    drop(s);
                    d
                })
                .collect()
        })
        .unwrap();
        connects.sort();
        let t = std::time::Instant::now();
        let body = get(&site.node_ns, POD_IP, 80, "/10m").unwrap();
        let transfer = t.elapsed();
        assert_eq!(body.len(), 10 << 20);
        println!(
            "BENCH {binding}: connect median {:?} (p90 {:?}), 10 MiB GET {:?} ({:.1} MiB/s)",
            connects[connects.len() / 2],
            connects[connects.len() * 9 / 10],
            transfer,
            10.0 / transfer.as_secs_f64()
        );
        l.sigterm();
        l.wait_exit(Duration::from_secs(30));
    }
}
