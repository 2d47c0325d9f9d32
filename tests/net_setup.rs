//! The pod network phase for real, in pod fixtures (network namespaces with a veth `eth0`
//! on a node bridge): setup, a second setup on a rewired pod, setup after a crash
//! halfway, restart from the cache, teardown back to the original pod, and the
//! `vmpod-launcher net` CLI. The kernel's view is read back through netlink.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use vmpod::net::snapshot::{NetSnapshot, snapshot};
use vmpod::net::{
    self, CachedInterface, IpCidr, MacAddr, NetError, NetOp, PlanOptions, Route, SetupOptions,
    cache, discover,
};
use vmpod::sandbox::{CALICO_GATEWAY, NodeSpec, PodSandbox, PodSpec};

/// A dual-stack bridge-CNI pod with an extra route, MTU 1450.
fn dual_stack_pod() -> PodSandbox {
    let (node, pod) = support::dual_stack_spec("net");
    PodSandbox::create(&node, &pod).unwrap()
}

/// A Calico-shaped pod: /32 address, gateway 169.254.1.1 behind an on-link route,
/// jumbo MTU.
fn calico_pod() -> PodSandbox {
    let node = NodeSpec::isolated(vec!["10.77.0.1/24".parse::<IpCidr>().unwrap()]);
    let mut pod = PodSpec::new(
        "cal",
        "10.88.1.7/32".parse::<IpCidr>().unwrap(),
        CALICO_GATEWAY,
    );
    pod.mtu = 9000;
    PodSandbox::create(&node, &pod).unwrap()
}

struct Fixture {
    pod: PodSandbox,
    state: tempfile::TempDir,
    plan: PlanOptions,
}

impl Fixture {
    /// The fixture of a privileged test on the pod `make` builds; `None` where
    /// [`support::privileged_test`] skips the test.
    fn privileged(make: fn() -> PodSandbox) -> Option<Self> {
        support::privileged_test().then(|| Fixture::new(make()))
    }

    fn new(pod: PodSandbox) -> Self {
        Fixture {
            pod,
            state: tempfile::tempdir().unwrap(),
            plan: PlanOptions::default(),
        }
    }

    fn ns(&self) -> &Path {
        self.pod.netns_path()
    }

    fn opts(&self) -> SetupOptions {
        SetupOptions {
            netns: Some(self.ns().to_path_buf()),
            state_dir: self.state.path().to_path_buf(),
            resolv_conf: self.pod.resolv_conf_path(),
            hostname: Some(self.pod.hostname().to_owned()),
            plan: self.plan.clone(),
            ..SetupOptions::new("eth0")
        }
    }

    fn discover(&self) -> Result<net::InterfaceFacts, NetError> {
        discover(
            Some(self.ns()),
            "eth0",
            &self.pod.resolv_conf_path(),
            Some(self.pod.hostname()),
        )
    }

    fn snapshot(&self) -> NetSnapshot {
        net::discover::with_handle(Some(self.ns()), |h| async move { snapshot(&h).await }).unwrap()
    }

    fn sysctl(&self, key: &str) -> String {
        let p = Path::new("/proc/sys").join(key);
        net::netns::run_in(Some(self.ns()), || fs::read_to_string(&p))
            .unwrap()
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .trim()
            .to_owned()
    }

    fn cached(&self) -> CachedInterface {
        cache::load(self.state.path(), "eth0")
            .unwrap()
            .expect("cache written")
    }
}

/// The kernel state that setup decides, comparable across pods and runs: links (the
/// tap's random MAC left out), masters by name, addresses (IPv6 link-local left out: it
/// appears asynchronously) and routes, with link names instead of indexes.
fn observed(s: &NetSnapshot) -> BTreeSet<String> {
    let name = |i: Option<u32>| i.and_then(|i| s.link_name(i)).unwrap_or("-").to_owned();
    let mut out = BTreeSet::new();
    for l in &s.links {
        let mac = if l.kind.as_deref() == Some("tun") {
            None
        } else {
            l.mac
        };
        out.insert(format!(
            "link {} kind={:?} mac={mac:?} mtu={} up={} master={}",
            l.name,
            l.kind,
            l.mtu,
            l.up,
            name(l.master)
        ));
    }
    for a in &s.addresses {
        if !matches!(a.address.addr, IpAddr::V6(v6) if v6.segments()[0] == 0xfe80) {
            out.insert(format!("addr {} {}", name(Some(a.index)), a.address));
        }
    }
    for r in &s.routes {
        if !matches!(r.destination.addr, IpAddr::V6(v6) if v6.segments()[0] == 0xfe80) {
            out.insert(format!(
                "route {} via {:?} dev {} metric {:?}",
                r.destination,
                r.gateway,
                name(r.oif),
                r.metric
            ));
        }
    }
    out
}

/// What a user checks about the pod interface: MAC, MTU, addresses, routes through it.
fn pod_interface(s: &NetSnapshot) -> (String, u32, BTreeSet<IpCidr>, BTreeSet<String>) {
    let eth0 = s.link("eth0").expect("eth0");
    let addrs = s
        .addresses_of(eth0.index)
        .map(|a| a.address)
        .filter(|a| !matches!(a.addr, IpAddr::V6(v6) if v6.segments()[0] == 0xfe80))
        .collect();
    let routes = s
        .routes
        .iter()
        .filter(|r| r.oif == Some(eth0.index))
        .filter(|r| !matches!(r.destination.addr, IpAddr::V6(v6) if v6.segments()[0] == 0xfe80))
        .map(|r| {
            format!(
                "{} via {:?} metric {:?} scope {}",
                r.destination, r.gateway, r.metric, r.scope
            )
        })
        .collect();
    (eth0.mac.unwrap().to_string(), eth0.mtu, addrs, routes)
}

/// Assert the pod is rewired for the bridge binding.
fn assert_rewired(f: &Fixture, facts: &net::InterfaceFacts) {
    let s = f.snapshot();
    let eth0 = s.link("eth0").unwrap();
    let bridge = s.link("k6t-eth0").expect("bridge k6t-eth0");
    let tap = s.link("tap-eth0").expect("tap tap-eth0");
    assert_eq!(bridge.kind.as_deref(), Some("bridge"));
    assert_eq!(tap.kind.as_deref(), Some("tun"));
    assert_eq!((bridge.mtu, tap.mtu), (facts.mtu, facts.mtu));
    assert!(bridge.up && tap.up && eth0.up);
    let ports: BTreeSet<&str> = s.ports_of(bridge.index).map(|l| l.name.as_str()).collect();
    assert_eq!(ports, BTreeSet::from(["eth0", "tap-eth0"]));
    // The VM keeps the pod's MAC; the pod interface has a new local one.
    let mac = eth0.mac.unwrap();
    assert!(mac != facts.mac && mac.is_local(), "eth0 mac {mac}");
    // No pod address is left in the pod: the VM owns them now.
    let all: Vec<IpCidr> = s.addresses.iter().map(|a| a.address).collect();
    for a in &facts.addresses {
        assert!(!all.contains(a), "{a} still in the pod: {all:?}");
    }
    assert_eq!(
        s.addresses_of(eth0.index).count(),
        0,
        "eth0 keeps no address at all"
    );
    let on_bridge: Vec<String> = s
        .addresses_of(bridge.index)
        .filter(|a| a.address.addr.is_ipv4())
        .map(|a| a.address.to_string())
        .collect();
    assert_eq!(on_bridge, vec!["169.254.75.10/32"]);
    // Set through netlink (IFLA_AF_SPEC), read back through /proc/sys.
    assert_eq!(f.sysctl("net/ipv4/conf/k6t-eth0/arp_ignore"), "1");
    assert_eq!(f.sysctl("net/ipv4/conf/k6t-eth0/arp_announce"), "2");
    for link in ["k6t-eth0", "tap-eth0", "eth0"] {
        assert_eq!(
            f.sysctl(&format!("net/ipv6/conf/{link}/addr_gen_mode")),
            "1",
            "{link}: no IPv6 link-local address is made"
        );
    }
    // The bridge's only IPv6 address is its own EUI-64 link-local, in a dual-stack pod
    // (RAs and DHCPv6 for the VM come from it); an IPv4-only pod's bridge has none.
    let v6_on_bridge: Vec<std::net::IpAddr> = s
        .addresses_of(bridge.index)
        .map(|a| a.address.addr)
        .filter(std::net::IpAddr::is_ipv6)
        .collect();
    let want: Vec<std::net::IpAddr> = match facts.ipv6().next() {
        Some(_) => vec![net::ipv6::bridge_link_local(facts).into()],
        None => Vec::new(),
    };
    assert_eq!(v6_on_bridge, want, "IPv6 addresses on the bridge");
    // The tap is what QEMU opens: a persistent tap with vnet headers, owned by root.
    let t = tap.tun.clone().expect("tun attributes of tap-eth0");
    let want = &f.plan;
    assert!(t.tap && t.vnet_hdr && t.persist, "{t:?}");
    assert_eq!(
        (t.owner, t.group, t.multi_queue),
        (Some(want.tap_owner), want.tap_group, want.multiqueue)
    );
}

#[test]
fn setup_rewires_a_dual_stack_pod_and_caches_its_facts_first() {
    let Some(f) = Fixture::privileged(dual_stack_pod) else {
        return;
    };
    let before = f.discover().unwrap();
    assert_eq!(
        before.addresses,
        vec![
            "10.77.0.5/24".parse::<IpCidr>().unwrap(),
            "fd77::5/64".parse::<IpCidr>().unwrap()
        ]
    );
    assert_eq!(before.mtu, 1450);
    assert_eq!(before.gateway4(), Some("10.77.0.1".parse().unwrap()));
    assert_eq!(before.gateway6(), Some("fd77::1".parse().unwrap()));
    assert!(before.routes.iter().any(|r| r.destination
        == "192.168.50.0/24".parse::<IpCidr>().unwrap()
        && r.metric == Some(50)));
    assert_eq!(before.dns, vec!["10.96.0.10".parse::<IpAddr>().unwrap()]);
    assert_eq!(before.search, vec!["default.svc.cluster.local"]);
    assert_eq!(before.hostname, "web-0");

    let out = net::setup(&f.opts()).unwrap();
    assert!(!out.from_cache);
    assert_eq!(
        out.cached.facts, before,
        "cached facts are the pod as it was"
    );
    assert_rewired(&f, &before);
    let cached = f.cached();
    assert_eq!(cached.facts, before);
    assert_eq!(
        cached.applied, out.ops,
        "the cache records what was applied"
    );
    assert_eq!(out.cache_path, f.state.path().join("net/eth0.json"));
}

#[test]
fn second_setup_on_a_rewired_pod_converges_without_change() {
    let Some(f) = Fixture::privileged(dual_stack_pod) else {
        return;
    };
    let first = net::setup(&f.opts()).unwrap();
    let after_first = observed(&f.snapshot());
    let second = net::setup(&f.opts()).unwrap();
    assert!(
        second.from_cache,
        "a rewired pod must be read from the cache"
    );
    assert_eq!(second.ops, first.ops);
    assert_eq!(observed(&f.snapshot()), after_first);
    assert_rewired(&f, &first.cached.facts);
}

#[test]
fn setup_after_a_crash_halfway_converges_to_the_same_state() {
    if !support::privileged("setup_after_a_crash_halfway_converges_to_the_same_state") {
        return;
    }
    // The reference: a clean setup on an identical pod (same MAC, addresses, routes).
    let reference = Fixture::new(dual_stack_pod());
    let ops = net::setup(&reference.opts()).unwrap().ops;
    let want = observed(&reference.snapshot());
    drop(reference);

    // Crash points: after the bridge, mid-sysctls, after the first address removal,
    // after the MAC change, after enslaving eth0, one op before the end.
    let del = ops
        .iter()
        .position(|o| matches!(o, NetOp::DelAddress { .. }))
        .unwrap();
    let mac = ops
        .iter()
        .position(|o| matches!(o, NetOp::SetMac { .. }))
        .unwrap();
    for cut in [1, 3, del + 1, mac + 1, mac + 2, ops.len() - 1] {
        let f = Fixture::new(dual_stack_pod());
        // What setup does up to the crash: facts cached, then a prefix of the ops.
        let dry = net::dry_run(&f.opts()).unwrap();
        assert_eq!(dry.ops, ops);
        cache::store(f.state.path(), &dry.cached).unwrap();
        net::apply(Some(f.ns()), &ops[..cut]).unwrap();

        let out = net::setup(&f.opts()).unwrap_or_else(|e| panic!("rerun after op #{cut}: {e}"));
        assert!(out.from_cache);
        assert_eq!(
            observed(&f.snapshot()),
            want,
            "after a crash following op #{cut}"
        );
        assert_rewired(&f, &out.cached.facts);
    }
}

#[test]
fn restart_reads_the_cache_and_never_discovers_again() {
    let Some(f) = Fixture::privileged(dual_stack_pod) else {
        return;
    };
    let first = net::setup(&f.opts()).unwrap();
    // After the rewire, discovery cannot see the pod IP any more.
    match f.discover() {
        Err(NetError::NoIpv4(e)) => assert_eq!(e.interface, "eth0"),
        other => panic!("discovery on a rewired pod: {other:?}"),
    }
    // A restarted launcher takes everything from the cache: mark it to prove it.
    let mut entry = f.cached();
    entry.facts.hostname = "from-the-cache".into();
    cache::store(f.state.path(), &entry).unwrap();
    let again = net::setup(&f.opts()).unwrap();
    assert!(again.from_cache);
    assert_eq!(again.cached.facts.hostname, "from-the-cache");
    assert_eq!(again.cached.facts.addresses, first.cached.facts.addresses);
    assert_eq!(again.cached.facts.routes, first.cached.facts.routes);
    // Asking for other plan options than the cache was made with is refused.
    let mut other = f.opts();
    other.plan.tap_owner = 4242;
    let e = net::setup(&other).unwrap_err();
    assert!(matches!(e, NetError::CacheMismatch { .. }), "{e}");
}

#[test]
fn a_cache_from_another_network_namespace_is_stale() {
    if !support::privileged("a_cache_from_another_network_namespace_is_stale") {
        return;
    }
    // Pod sandbox recreated (e.g. after a node reboot) with the state directory kept:
    // the old facts must not be served; the new namespace is discovered afresh.
    let old = Fixture::new(calico_pod());
    net::setup(&old.opts()).unwrap();
    let new = Fixture::new(dual_stack_pod());
    let mut opts = new.opts();
    opts.state_dir = old.state.path().to_path_buf();
    let out = net::setup(&opts).unwrap();
    assert!(!out.from_cache);
    assert_eq!(
        out.cached.facts.addresses,
        vec![
            "10.77.0.5/24".parse::<IpCidr>().unwrap(),
            "fd77::5/64".parse::<IpCidr>().unwrap()
        ]
    );
    assert_rewired(&new, &out.cached.facts);
}

#[test]
fn teardown_restores_the_dual_stack_pod_exactly() {
    let Some(f) = Fixture::privileged(dual_stack_pod) else {
        return;
    };
    let before = pod_interface(&f.snapshot());
    net::setup(&f.opts()).unwrap();
    assert_ne!(pod_interface(&f.snapshot()), before);
    let done = net::teardown(Some(f.ns()), f.state.path()).unwrap();
    assert_eq!(done, vec!["eth0"]);
    let s = f.snapshot();
    assert_eq!(
        pod_interface(&s),
        before,
        "MAC, MTU, addresses and routes are back"
    );
    assert!(s.link("k6t-eth0").is_none() && s.link("tap-eth0").is_none());
    assert_eq!(f.sysctl("net/ipv6/conf/eth0/addr_gen_mode"), "0");
    // The link-local address is back, made from the original MAC again.
    let eth0 = s.link("eth0").unwrap();
    let mac = eth0.mac.unwrap().0;
    let want_ll = std::net::Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        u16::from_be_bytes([mac[0] ^ 2, mac[1]]),
        u16::from_be_bytes([mac[2], 0xff]),
        u16::from_be_bytes([0xfe, mac[3]]),
        u16::from_be_bytes([mac[4], mac[5]]),
    );
    assert!(
        s.addresses_of(eth0.index)
            .any(|a| a.address.addr == IpAddr::V6(want_ll)),
        "eth0 has its link-local {want_ll} again"
    );
    assert!(
        cache::load(f.state.path(), "eth0").unwrap().is_none(),
        "cache forgotten"
    );
    // The pod is usable again, both families.
    assert!(ping(&f.pod, "10.77.0.1"), "IPv4 gateway after teardown");
    assert!(ping(&f.pod, "fd77::1"), "IPv6 gateway after teardown");
    // A second teardown has nothing left to do.
    assert!(
        net::teardown(Some(f.ns()), f.state.path())
            .unwrap()
            .is_empty()
    );
}

#[test]
fn calico_slash32_pod_with_jumbo_mtu_and_multiqueue_tap_round_trips() {
    let Some(mut f) = Fixture::privileged(calico_pod) else {
        return;
    };
    // QEMU with a group allowed on the tap and several queues.
    f.plan = PlanOptions {
        tap_owner: 107,
        tap_group: Some(107),
        multiqueue: true,
        ..PlanOptions::default()
    };
    let before = pod_interface(&f.snapshot());
    let out = net::setup(&f.opts()).unwrap();
    let facts = &out.cached.facts;
    assert_eq!(
        facts.addresses,
        vec!["10.88.1.7/32".parse::<IpCidr>().unwrap()]
    );
    assert_eq!(facts.gateway4(), Some(CALICO_GATEWAY));
    assert!(
        facts.routes.contains(&Route {
            destination: "169.254.1.1/32".parse::<IpCidr>().unwrap(),
            gateway: None,
            metric: None
        }),
        "the on-link route to the gateway is a fact: {:?}",
        facts.routes
    );
    assert_eq!(facts.mtu, 9000);
    assert_rewired(&f, facts);
    net::teardown(Some(f.ns()), f.state.path()).unwrap();
    assert_eq!(pod_interface(&f.snapshot()), before);
    assert!(ping(&f.pod, "169.254.1.1"), "Calico gateway after teardown");
}

#[test]
fn discovery_names_a_missing_interface() {
    let Some(f) = Fixture::privileged(calico_pod) else {
        return;
    };
    let e = discover(Some(f.ns()), "eth7", &f.pod.resolv_conf_path(), None).unwrap_err();
    assert!(
        matches!(e, NetError::InterfaceNotFound { ref interface, .. } if interface == "eth7"),
        "{e}"
    );
    assert!(e.to_string().contains(&f.ns().display().to_string()), "{e}");
    let mut o = f.opts();
    o.interface = "eth7".into();
    assert!(net::setup(&o).is_err());
    assert!(
        cache::load(f.state.path(), "eth7").unwrap().is_none(),
        "no cache for a failed discovery"
    );
}

/// `vmpod-launcher`, built (a no-op when fresh) in this test's profile, so
/// `cargo test --test net_setup` never runs a stale one.
fn launcher() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        support::cargo_build::build_bins(&["vmpod-launcher"], &["vmpod-launcher"])
            .join("vmpod-launcher")
    })
    .clone()
}

#[test]
fn launcher_cli_sets_up_and_tears_down() {
    let Some(f) = Fixture::privileged(dual_stack_pod) else {
        return;
    };
    let before = pod_interface(&f.snapshot());
    let facts = f.discover().unwrap();
    let run = |args: &[&str]| {
        support::stdout_of(
            Command::new(launcher())
                .args(args)
                .arg("--netns")
                .arg(f.ns())
                .arg("--state-dir")
                .arg(f.state.path()),
            &format!("vmpod-launcher {args:?}"),
        )
    };
    let resolv = f.pod.resolv_conf_path();
    let setup = [
        "net",
        "setup",
        "--interface",
        "eth0",
        "--binding",
        "bridge",
        "--resolv-conf",
        resolv.to_str().unwrap(),
        "--hostname",
        "web-0",
        "--vm-mac",
        "02:5a:00:00:00:11",
    ];
    run(&setup);
    assert_rewired(&f, &facts);
    // The cache file parses as plain InterfaceFacts too (what DHCP and the domain read).
    let text = fs::read_to_string(f.state.path().join("net/eth0.json")).unwrap();
    let cached: net::InterfaceFacts = serde_json::from_str(&text).unwrap();
    assert_eq!(cached, facts);
    // The VMI's MAC is cached beside the facts: what the DHCP server answers.
    let entry: net::CachedInterface = serde_json::from_str(&text).unwrap();
    assert_eq!(entry.vm_mac().to_string(), "02:5a:00:00:00:11");
    run(&setup);
    // A setup asking for another VM MAC than the cache holds is refused, not mixed.
    let other_mac = Command::new(launcher())
        .args(&setup[..setup.len() - 1])
        .args(["02:5a:00:00:00:12", "--netns", f.ns().to_str().unwrap()])
        .args(["--state-dir", f.state.path().to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&other_mac.stderr);
    assert!(
        !other_mac.status.success() && err.contains("02:5a:00:00:00:11"),
        "{err}"
    );
    run(&["net", "teardown"]);
    assert_eq!(pod_interface(&f.snapshot()), before);
    // Errors name the interface.
    let out = Command::new(launcher())
        .args([
            "net",
            "setup",
            "--interface",
            "eth9",
            "--netns",
            f.ns().to_str().unwrap(),
        ])
        .args([
            "--state-dir",
            f.state.path().to_str().unwrap(),
            "--resolv-conf",
            resolv.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pod interface eth9 not found"), "{err}");
}

/// Be the VM for a moment: send an ARP request for `target` from `mac`/`ip` into the
/// tap (as QEMU would, with a virtio-net header) and wait for the answer to come back
/// through the bridge. Returns the answer's sender MAC and the MAC it was sent to.
fn arp_through_tap(
    tap: &str,
    mac: MacAddr,
    ip: Ipv4Addr,
    target: Ipv4Addr,
) -> Option<(MacAddr, MacAddr)> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    use std::io::{Read, Write};
    let mut q = vmpod::net::tap::attach(tap, false).expect("attach to the tap");
    fcntl(&q, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
    let mut frame = vec![0u8; vmpod::net::tap::VNET_HDR_LEN];
    frame.extend([0xff; 6]);
    frame.extend(mac.0);
    frame.extend([0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    frame.extend(mac.0);
    frame.extend(ip.octets());
    frame.extend([0; 6]);
    frame.extend(target.octets());
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 2048];
    let mut next_send = Instant::now();
    while Instant::now() < deadline {
        if Instant::now() >= next_send {
            q.write_all(&frame).expect("write to the tap");
            next_send = Instant::now() + Duration::from_millis(500);
        }
        let n = match q.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => panic!("read from the tap: {e}"),
        };
        let eth = &buf[vmpod::net::tap::VNET_HDR_LEN..n];
        let is_reply = eth.len() >= 42 && eth[12..14] == [0x08, 0x06] && eth[20..22] == [0, 2];
        if is_reply && eth[28..32] == target.octets() {
            let mac_at = |i: usize| MacAddr(eth[i..i + 6].try_into().unwrap());
            return Some((mac_at(22), mac_at(0)));
        }
    }
    None
}

#[test]
fn the_vm_behind_the_tap_reaches_the_gateway_with_the_pod_identity() {
    let Some(f) = Fixture::privileged(dual_stack_pod) else {
        return;
    };
    let facts = net::setup(&f.opts()).unwrap().cached.facts;
    let IpAddr::V4(ip) = facts.ipv4().unwrap().addr else {
        unreachable!()
    };
    let gw = facts.gateway4().unwrap();
    let answer = net::netns::run_in(Some(f.ns()), || {
        arp_through_tap("tap-eth0", facts.mac, ip, gw)
    })
    .unwrap();
    let (gw_mac, to) = answer.expect("no ARP reply from the gateway through tap -> bridge -> eth0");
    assert_eq!(
        to, facts.mac,
        "the reply goes to the VM's (the pod's original) MAC"
    );
    assert_ne!(gw_mac, facts.mac);
}

fn ping(pod: &PodSandbox, target: &str) -> bool {
    let out = pod
        .command("busybox")
        .unwrap()
        .args(["ping", "-c", "1", "-W", "3", target])
        .output()
        .unwrap();
    out.status.success()
}
