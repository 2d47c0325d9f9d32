//! The pod fixture for real: namespaces, veth, bridge, addresses and routes as the kernel
//! reports them (read with `ip -j` from inside the pod's namespace), pings to the
//! gateway, and nothing left behind after drop.

mod support;

use serde_json::Value;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use vmpod::net::{IpCidr, MacAddr};
use vmpod::sandbox::{CALICO_GATEWAY, Node, NodeSpec, PodSandbox, PodSpec};

/// `ip -j ARGS` inside namespace `ns` (by its /run/netns name), parsed.
fn ip_json(ns: &Path, args: &[&str]) -> Value {
    let name = ns.file_name().unwrap().to_str().unwrap();
    let out = support::stdout_of(
        Command::new("ip").args(["-n", name, "-j"]).args(args),
        &format!("ip {args:?} in {name}"),
    );
    serde_json::from_slice(&out).unwrap()
}

fn link_exists(ns: Option<&Path>, link: &str) -> bool {
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns.file_name().unwrap().to_str().unwrap()]);
    }
    cmd.args(["link", "show", "dev", link])
        .output()
        .unwrap()
        .status
        .success()
}

fn ping(sb: &PodSandbox, target: IpAddr) -> bool {
    let out = sb
        .command("busybox")
        .unwrap()
        .args(["ping", "-c", "1", "-W", "3", &target.to_string()])
        .output()
        .unwrap();
    if !out.status.success() {
        eprintln!(
            "ping {target}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out.status.success()
}

/// The shared dual-stack pod, with a second search domain.
fn dual_stack_spec() -> (NodeSpec, PodSpec) {
    let (node, mut pod) = support::dual_stack_spec("ds");
    pod.search.push("cluster.local".into());
    (node, pod)
}

#[test]
fn bridge_cni_pod_has_address_mac_mtu_routes_and_reaches_its_gateway() {
    if !support::privileged("bridge_cni_pod_has_address_mac_mtu_routes_and_reaches_its_gateway") {
        return;
    }
    let (node, pod) = dual_stack_spec();
    let sb = PodSandbox::create(&node, &pod).unwrap();
    let ns = sb.netns_path().to_path_buf();
    let node_ns = sb.node_netns_path().unwrap().to_path_buf();
    let veth = sb.node_veth().to_string();

    let link = &ip_json(&ns, &["link", "show", "dev", "eth0"])[0];
    assert_eq!(link["address"], "02:00:0a:4d:00:05");
    assert_eq!(link["mtu"], 1450);
    assert!(
        link["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "{link}"
    );
    let lo = &ip_json(&ns, &["link", "show", "dev", "lo"])[0];
    assert!(
        lo["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "{lo}"
    );

    let addrs = &ip_json(&ns, &["addr", "show", "dev", "eth0"])[0]["addr_info"];
    let has = |ip: &str, len: u64| {
        addrs
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["local"] == ip && a["prefixlen"] == len)
    };
    assert!(has("10.77.0.5", 24) && has("fd77::5", 64), "{addrs}");

    let routes = ip_json(&ns, &["-4", "route", "show"]);
    let route = |dst: &str| {
        routes
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["dst"] == dst)
            .cloned()
    };
    let default = route("default").expect("IPv4 default route");
    assert_eq!(
        (default["gateway"].as_str(), default["dev"].as_str()),
        (Some("10.77.0.1"), Some("eth0"))
    );
    assert_eq!(
        route("192.168.50.0/24").expect("extra route")["gateway"],
        "10.77.0.1"
    );
    let routes6 = ip_json(&ns, &["-6", "route", "show", "default"]);
    assert_eq!(routes6[0]["gateway"], "fd77::1", "{routes6}");

    // The node side: the veth is a port of the bridge, with the pod's MTU.
    let port = &ip_json(&node_ns, &["link", "show", "dev", &veth])[0];
    assert_eq!(port["master"].as_str(), Some(node.bridge.as_str()));
    assert_eq!(port["mtu"], 1450);

    assert_eq!(
        std::fs::read_to_string(sb.resolv_conf_path()).unwrap(),
        "nameserver 10.96.0.10\nsearch default.svc.cluster.local cluster.local\n"
    );
    assert_eq!(
        std::fs::read_to_string(sb.hostname_path()).unwrap(),
        "web-0\n"
    );

    // A pod process sees the pod's resolv.conf and hostname; the host keeps its own.
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap();
    let host_name = nix::unistd::gethostname().unwrap();
    let out = support::stdout_of(
        sb.pod_command("sh").unwrap().args([
            "-c",
            "cat /etc/resolv.conf; hostname; ip -o link show | wc -l",
        ]),
        "a pod process",
    );
    let seen = String::from_utf8(out).unwrap();
    let want = format!("{}web-0\n2\n", pod.resolv_conf());
    assert_eq!(seen, want, "pod process view");
    assert_eq!(
        std::fs::read_to_string("/etc/resolv.conf").unwrap(),
        host_resolv
    );
    assert_eq!(nix::unistd::gethostname().unwrap(), host_name);

    assert!(
        ping(&sb, "10.77.0.1".parse().unwrap()),
        "IPv4 gateway unreachable"
    );
    assert!(
        ping(&sb, "fd77::1".parse().unwrap()),
        "IPv6 gateway unreachable"
    );

    let resolv = sb.resolv_conf_path();
    drop(sb);
    assert!(!ns.exists(), "pod netns {} left behind", ns.display());
    assert!(
        !node_ns.exists(),
        "node netns {} left behind",
        node_ns.display()
    );
    assert!(!resolv.exists(), "{} left behind", resolv.display());
}

#[test]
fn calico_shaped_pod_reaches_169_254_1_1_through_an_onlink_route() {
    if !support::privileged("calico_shaped_pod_reaches_169_254_1_1_through_an_onlink_route") {
        return;
    }
    let node = NodeSpec::isolated(vec!["10.77.0.1/24".parse::<IpCidr>().unwrap()]);
    let pod = PodSpec::new(
        "cal",
        "10.88.1.7/32".parse::<IpCidr>().unwrap(),
        CALICO_GATEWAY,
    );
    let sb = PodSandbox::create(&node, &pod).unwrap();
    let routes = ip_json(sb.netns_path(), &["-4", "route", "show"]);
    let onlink = routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["dst"] == "169.254.1.1")
        .expect("on-link route");
    assert_eq!(onlink["scope"], "link", "{onlink}");
    assert!(
        routes
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == "default" && r["gateway"] == "169.254.1.1")
    );
    assert!(
        ping(&sb, CALICO_GATEWAY.into()),
        "calico gateway unreachable"
    );
}

#[test]
fn two_pods_share_a_node_and_each_cleans_only_its_own_part() {
    if !support::privileged("two_pods_share_a_node_and_each_cleans_only_its_own_part") {
        return;
    }
    let node: Arc<Node> = Node::create(&NodeSpec::isolated(vec![
        "10.77.0.1/24".parse::<IpCidr>().unwrap(),
    ]))
    .unwrap();
    let gw = "10.77.0.1".parse().unwrap();
    let a = PodSandbox::create_on(
        &node,
        &PodSpec::new("a", "10.77.0.10/24".parse::<IpCidr>().unwrap(), gw),
    )
    .unwrap();
    let b = PodSandbox::create_on(
        &node,
        &PodSpec::new("b", "10.77.0.11/24".parse::<IpCidr>().unwrap(), gw),
    )
    .unwrap();
    assert_ne!(a.spec().mac, b.spec().mac);
    assert!(
        ping(&a, "10.77.0.11".parse().unwrap()),
        "pod a cannot reach pod b over the bridge"
    );

    let node_ns = node.netns_path().unwrap().to_path_buf();
    let (a_veth, a_ns) = (a.node_veth().to_string(), a.netns_path().to_path_buf());
    drop(a);
    assert!(!a_ns.exists());
    assert!(
        !link_exists(Some(&node_ns), &a_veth),
        "veth {a_veth} left on the node"
    );
    assert!(link_exists(Some(&node_ns), b.node_veth()));
    assert!(
        ping(&b, gw.into()),
        "pod b lost its gateway when pod a went"
    );
    drop(b);
    drop(node);
    assert!(!node_ns.exists());
}

#[test]
fn a_panicking_test_leaves_nothing_behind() {
    if !support::privileged("a_panicking_test_leaves_nothing_behind") {
        return;
    }
    let (node, pod) = support::own_node_spec("boom", 77);
    let ns = vmpod::net::netns::path(&pod.netns_name());
    let node_ns = match &node.side {
        vmpod::sandbox::NodeSide::Netns(n) => vmpod::net::netns::path(n),
        vmpod::sandbox::NodeSide::Host => unreachable!(),
    };
    let r = std::panic::catch_unwind(|| {
        let _sb = PodSandbox::create(&node, &pod).unwrap();
        assert!(ns.exists());
        panic!("test body failed");
    });
    assert!(r.is_err());
    assert!(
        !ns.exists() && !node_ns.exists(),
        "namespaces left after a panic"
    );
}

#[test]
fn an_invalid_spec_creates_nothing() {
    let (node, mut pod) = support::own_node_spec("bad", 77);
    pod.mac = MacAddr([0x01, 0, 0x5e, 0, 0, 1]);
    let err = PodSandbox::create(&node, &pod).unwrap_err().to_string();
    assert!(
        err.contains("multicast") && err.contains(&pod.name),
        "{err}"
    );
    assert!(!vmpod::net::netns::path(&pod.netns_name()).exists());
}

/// Host mode (local runtime), tested without touching the real host: the test body runs
/// on a thread inside a fresh namespace that plays the host.
fn in_fake_host<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    let host = format!("vmpod-fakehost-{}", vmpod::sandbox::unique_id());
    let path = vmpod::net::netns::create(&host).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        vmpod::net::netns::run_in(Some(&path), f).unwrap()
    }));
    vmpod::net::netns::delete(&host).unwrap();
    r.unwrap_or_else(|p| std::panic::resume_unwind(p))
}

const HOST_BRIDGE: &str = "vmpod0";

/// A pod on a host-mode node `vmpod0` (10.77.0.1/24) that can ping its gateway.
fn host_mode_pod(ip: &str) -> (Arc<Node>, PodSandbox) {
    let spec = NodeSpec {
        side: vmpod::sandbox::NodeSide::Host,
        bridge: HOST_BRIDGE.into(),
        addresses: vec!["10.77.0.1/24".parse::<IpCidr>().unwrap()],
    };
    let node = Node::create(&spec).unwrap();
    assert!(node.netns_path().is_none());
    let gw = "10.77.0.1".parse().unwrap();
    let sb = PodSandbox::create_on(&node, &PodSpec::new("h", ip.parse::<IpCidr>().unwrap(), gw))
        .unwrap();
    assert!(link_exists(None, HOST_BRIDGE) && link_exists(None, sb.node_veth()));
    assert!(
        ping(&sb, gw.into()),
        "host-mode pod cannot reach its gateway"
    );
    (node, sb)
}

#[test]
fn host_mode_creates_the_bridge_and_deletes_it_with_the_node() {
    if !support::privileged("host_mode_creates_the_bridge_and_deletes_it_with_the_node") {
        return;
    }
    in_fake_host(|| {
        let (node, sb) = host_mode_pod("10.77.0.8/24");
        drop(sb);
        drop(node);
        let left = link_exists(None, HOST_BRIDGE);
        assert!(!left, "bridge created by the node was left behind");
    });
}

#[test]
fn host_mode_adopts_an_existing_bridge_and_leaves_it_in_place() {
    if !support::privileged("host_mode_adopts_an_existing_bridge_and_leaves_it_in_place") {
        return;
    }
    in_fake_host(|| {
        let (first, first_pod) = host_mode_pod("10.77.0.8/24");
        // A second node on the same bridge (e.g. a restarted runtime) adopts it.
        let (second, second_pod) = host_mode_pod("10.77.0.9/24");
        drop((second_pod, second));
        assert!(
            link_exists(None, HOST_BRIDGE),
            "an adopted bridge was deleted"
        );
        assert!(ping(&first_pod, "10.77.0.1".parse().unwrap()));
        drop((first_pod, first));
        assert!(!link_exists(None, HOST_BRIDGE));
    });
}
