//! End to end through the kubelet-shaped runner: `vmpod-handler render-pod` prints the
//! launcher Pod and its Secret for the test guest's VMI, podman (runc) runs them exactly as
//! specified (net-setup init container, then the unprivileged compute container), and the
//! guest, booted by kernelBoot.container with the image's disk as a containerDisk, leases
//! the pod IP with its macAddress; the node reaches it; `podman stop` with the Pod's grace
//! period powers it off by ACPI and the pod exits 0; a guest power-off ends the pod
//! Succeeded; nothing of the pod is left on the host. With the controller's boot slots,
//! two pods on one node boot their guests one after the other.
mod cluster;
mod support;

use cluster::launcher::{
    BOOT, GUEST_MAC, LauncherPod, assert_nothing_left, effective_caps, ping_from_node,
    run_to_guest_power_off, testguest_vmi,
};
use cluster::{CLUSTER_DNS6, ClusterNode, NODE_GATEWAY6, parse_documents, privileged_node};
use k8s_openapi::api::core::v1::{Pod, Secret};
use std::net::Ipv4Addr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};
use support::guest::{DualStackWant, GuestReport};
use support::launcher::{network_report, status_and_lease};
use tempfile::TempDir;
use vmpod::control::Phase;

const CAP_NET_ADMIN: u64 = 1 << 12;
const CAP_SYS_ADMIN: u64 = 1 << 21;

/// `vmpod-handler render-pod` for `vmi` (YAML) with `flags`, with the state hostPath at
/// a new state root and `--device-hostpath`: /dev/net/tun as a hostPath (the runner here
/// has no device plugin; the handler's controller-to-runner test gets it from the real
/// one's Allocate).
fn render(vmi: &str, flags: &[&str]) -> Rendered {
    let state_root = tempfile::tempdir().unwrap();
    let dir = support::cargo_build::build_bins(&["vmpod-handler"], &["vmpod-handler"]);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), vmi).unwrap();
    let out = support::stdout_of(
        std::process::Command::new(dir.join("vmpod-handler"))
            .args(["render-pod", "--namespace", "e2e", "--vmi"])
            .arg(file.path())
            .arg("--state-root")
            .arg(state_root.path())
            .arg("--device-hostpath")
            .args(flags),
        "render-pod",
    );
    let (pod, secrets) = parse_documents(&String::from_utf8(out).unwrap()).unwrap();
    Rendered {
        pod,
        secrets,
        state_root,
    }
}

/// What `render-pod` printed, and the state root its hostPath points at (removed when
/// dropped).
struct Rendered {
    pod: Pod,
    secrets: Vec<Secret>,
    state_root: TempDir,
}

impl Rendered {
    /// The Pod and Secrets started on `node`.
    fn start(&self, node: &ClusterNode) -> LauncherPod {
        LauncherPod::start(node, &self.pod, &self.secrets, self.state_root.path())
    }
}

/// Stop the launcher Pod as kubelet does: it must end Succeeded and leave nothing on the
/// node. Returns how long the stop took and the guest's console as it was then.
fn stop_succeeded(node: &ClusterNode, lp: LauncherPod) -> (Duration, String) {
    let pids = lp.pod.pids("compute");
    let (exit, took) = lp.pod.stop().unwrap();
    assert_eq!(exit.phase, "Succeeded", "{exit:?}\n{}", lp.diagnostics());
    let console = lp.console();
    assert_nothing_left(node, lp.remove(pids));
    (took, console)
}

#[test]
fn rendered_launcher_pod_boots_from_images_leases_the_pod_ip_and_stops_gracefully() {
    let Some(node) = privileged_node(ClusterNode::create) else {
        return;
    };
    let marker = format!("vmpod-e2e-{}", std::process::id());
    let vmi = testguest_vmi(
        "e2e-hold",
        &format!("#cloud-config\n# {marker}\n"),
        true,
        20,
        Some(GUEST_MAC),
    );
    let rendered = render(&vmi, &[]);
    let grace = rendered
        .pod
        .spec
        .as_ref()
        .unwrap()
        .termination_grace_period_seconds
        .unwrap();
    let lp = rendered.start(&node);

    let report = lp.wait_report(BOOT, |r| r.holding);
    let lease = report
        .lease
        .clone()
        .unwrap_or_else(|| panic!("no lease\n{}", lp.diagnostics()));
    assert_eq!(lease.ip, lp.pod.pod_ip, "the VM has the pod IP");
    assert_eq!(lease.mac, GUEST_MAC, "the VMI's macAddress");
    assert_eq!(lease.router(), Some(node.gateway));
    assert_eq!(
        lease.hostname.as_deref(),
        Some("e2e-hold"),
        "the VMI's name, never the Pod's ({})",
        lp.pod.name
    );
    assert!(
        report.user_data().is_some_and(|u| u.contains(&marker)),
        "cloud-init user data from the Secret: {:?}",
        report.cidata
    );
    ping_from_node(&node, lp.pod.pod_ip).expect("the node reaches the VM at the pod IP");

    // The compute container's processes: none privileged beyond the Pod's set, no zombie.
    let pids = lp.pod.pids("compute");
    assert!(pids.len() >= 3, "launcher, libvirtd, QEMU: {pids:?}");
    for pid in &pids {
        let caps = effective_caps(*pid);
        assert_eq!(
            caps & (CAP_NET_ADMIN | CAP_SYS_ADMIN),
            0,
            "pid {pid}: {caps:x}"
        );
    }
    assert_eq!(lp.lasting_zombies(), Vec::<String>::new());

    let state_dir = lp.state_dir.clone();
    let (took, console) = stop_succeeded(&node, lp);
    assert!(
        took < Duration::from_secs(u64::try_from(grace).unwrap()),
        "stopped in {took:?}, grace {grace} s"
    );
    assert!(
        console.contains("VMPOD-POWER-BUTTON"),
        "no ACPI power button:\n{console}"
    );
    assert!(
        console.contains("VMPOD-POWEROFF"),
        "no guest power-off:\n{console}"
    );
    let status = vmpod::control::read_status(&state_dir).unwrap();
    assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
    assert_eq!(status.name, "e2e-hold");
    assert_eq!(status.namespace.as_deref(), Some("e2e"));
}

#[test]
fn a_guest_power_off_ends_the_launcher_pod_succeeded() {
    let Some(node) = privileged_node(ClusterNode::create) else {
        return;
    };
    let vmi = testguest_vmi("e2e-off", "#cloud-config\n", false, 20, None);
    let rendered = render(&vmi, &[]);
    let state_root = rendered.state_root.path();
    run_to_guest_power_off(&node, &rendered.pod, &rendered.secrets, state_root);
}

/// The masquerade binding under the kubelet-shaped runner: render-pod passes the
/// binding and the port to the net-setup init container, which sets up the NAT with
/// NET_ADMIN; the compute container (without it) reuses that. The guest leases
/// 10.0.2.2, and the node reaches its page through the pod IP on the listed port only.
#[test]
fn rendered_launcher_pod_with_masquerade_forwards_the_listed_port() {
    let Some(node) = privileged_node(ClusterNode::create) else {
        return;
    };
    let vmi = testguest_vmi("e2e-masq", "#cloud-config\n", true, 20, None)
        .replacen(
            "          bridge: {}\n",
            "          masquerade: {}\n          ports: [{name: http, port: 80}]\n",
            1,
        )
        .replacen("vmpod.hold=1", "vmpod.http=1", 1);
    assert!(vmi.contains("masquerade: {}") && vmi.contains("vmpod.http=1"));
    let rendered = render(&vmi, &[]);
    let lp = rendered.start(&node);
    let report = lp.wait_report(BOOT, |r| r.http.is_some());
    let lease = report
        .lease
        .clone()
        .unwrap_or_else(|| panic!("no lease\n{}", lp.diagnostics()));
    assert_eq!(lease.ip, std::net::Ipv4Addr::new(10, 0, 2, 2));
    assert_eq!(lease.router(), Some(std::net::Ipv4Addr::new(10, 0, 2, 1)));
    let ip = lp.pod.pod_ip.to_string();
    let page = support::http::fetch(node.netns(), &ip, 80)
        .unwrap_or_else(|e| panic!("node -> pod IP:80: {e}\n{}", lp.diagnostics()));
    assert_eq!(page.trim(), "vmpod test guest page");
    assert!(support::http::fetch(node.netns(), &ip, 8080).is_err());
    stop_succeeded(&node, lp);
}

/// IPv6 under the kubelet-shaped runner, on a dual-stack node: the Pod render-pod prints
/// (its compute container adds NET_RAW for the router advertisements) gives the guest
/// the pod's IPv6 address by RA + DHCPv6, a default route via the bridge's link-local
/// address and the pod's IPv6 nameserver; the guest pings the node's IPv6 gateway and
/// keeps the IPv4 lease of the pod IP.
#[test]
fn rendered_launcher_pod_gives_the_guest_the_pods_ipv6_on_a_dual_stack_node() {
    let Some(node) = privileged_node(ClusterNode::create_dual_stack) else {
        return;
    };
    let vmi = testguest_vmi("e2e-ipv6", "#cloud-config\n", true, 20, Some(GUEST_MAC)).replacen(
        "vmpod.hold=1",
        &format!("vmpod.hold=1 vmpod.ipv6=1 vmpod.ping6={NODE_GATEWAY6}"),
        1,
    );
    assert!(vmi.contains("vmpod.ipv6=1"), "{vmi}");
    let rendered = render(&vmi, &[]);
    let lp = rendered.start(&node);
    let report = lp.wait_report(BOOT, GuestReport::ipv6_settled);
    let network = network_report(&lp.state_dir);
    let want = DualStackWant {
        ipv4: lp.pod.pod_ip,
        prefix4: 24,
        ipv6: lp.pod.pod_ip6.expect("a dual-stack pod"),
        router6: vmpod::net::ipv6::bridge_link_local(&network.interfaces[0].facts),
        dns6: vec![CLUSTER_DNS6],
        ping6: NODE_GATEWAY6,
    };
    report
        .dual_stack(&want)
        .unwrap_or_else(|e| panic!("{e}\n{}", lp.diagnostics()));
    stop_succeeded(&node, lp);
}

/// The test guest with the masquerade binding on a dual-stack node, running dhcpcd
/// (`vmpod.ipv6=1`) and pinging the node's gateways (IPv4 and IPv6, both outside the
/// pod: through the NAT), from a Pod rendered with `flags`. `check` sees the guest's
/// report and `/v1/network` before the pod is stopped and checked gone.
fn masquerade_on_a_dual_stack_node(
    node: &ClusterNode,
    name: &str,
    flags: &[&str],
    check: impl FnOnce(&GuestReport, &vmpod::control::NetworkReport, &LauncherPod),
) {
    let vmi = testguest_vmi(name, "#cloud-config\n", true, 20, None)
        .replacen("          bridge: {}\n", "          masquerade: {}\n", 1)
        .replacen(
            "vmpod.hold=1",
            &format!(
                "vmpod.hold=1 vmpod.ping={} vmpod.ipv6=1 vmpod.ping6={NODE_GATEWAY6}",
                node.gateway
            ),
            1,
        );
    assert!(
        vmi.contains("masquerade: {}") && vmi.contains("vmpod.ipv6=1"),
        "{vmi}"
    );
    let rendered = render(&vmi, flags);
    let lp = rendered.start(node);
    let report = lp.wait_report(BOOT, GuestReport::ipv6_settled);
    check(&report, &network_report(&lp.state_dir), &lp);
    stop_succeeded(node, lp);
}

/// Masquerade on a dual-stack node, as a cluster runs it (`/proc/sys` read-only in the
/// containers). Rendered with `--masquerade-ipv6-forwarding-sysctl` (the node's kubelet
/// allowing the sysctl), the Pod asks for IPv6 forwarding and the guest leases
/// `fd10:0:2::2` by DHCPv6, routes by the bridge's RA, gets the cluster's IPv6
/// nameserver and pings the node's IPv6 gateway through NAT66 (the node has no route to
/// `fd10:0:2::/120`: only the pod's address can be answered). Rendered without it, the
/// guest keeps its IPv4 lease and reaches the node, gets no IPv6 address or default
/// route, and `/v1/network` says why, naming the sysctl.
#[test]
fn rendered_masquerade_pod_gives_the_guest_ipv6_only_with_the_forwarding_sysctl() {
    let Some(mut node) = privileged_node(ClusterNode::create_dual_stack) else {
        return;
    };
    node.facts.allowed_unsafe_sysctls = vec!["net.ipv6.conf.all.forwarding".into()];
    let vm_ip = Ipv4Addr::new(10, 0, 2, 2);
    let flag = ["--masquerade-ipv6-forwarding-sysctl"];
    masquerade_on_a_dual_stack_node(&node, "e2e-masq6", &flag, |report, network, lp| {
        let iface = &network.interfaces[0];
        assert_eq!(iface.ipv6_off, None, "{}", lp.diagnostics());
        let want = DualStackWant {
            ipv4: vm_ip,
            prefix4: 24,
            ipv6: "fd10:0:2::2".parse().unwrap(),
            router6: vmpod::net::ipv6::bridge_link_local(&iface.facts),
            dns6: vec![CLUSTER_DNS6],
            ping6: NODE_GATEWAY6,
        };
        let got = report
            .dual_stack(&want)
            .unwrap_or_else(|e| panic!("{e}\n{}", lp.diagnostics()));
        assert_eq!(got.ping.target, node.gateway);
    });
    masquerade_on_a_dual_stack_node(&node, "e2e-masq4", &[], |report, network, lp| {
        let iface = &network.interfaces[0];
        let why = iface.ipv6_off.as_deref().unwrap_or_else(|| {
            panic!(
                "no reason for IPv6 being off: {iface:?}\n{}",
                lp.diagnostics()
            )
        });
        assert!(
            why.contains("net.ipv6.conf.all.forwarding is 0")
                && why.contains("--masquerade-ipv6-forwarding-sysctl"),
            "{why}"
        );
        assert_eq!(iface.ipv6, None, "an IPv6 service runs");
        let lease = report.lease.clone().expect("an IPv4 lease");
        assert_eq!(
            (lease.ip, lease.router()),
            (vm_ip, Some(Ipv4Addr::new(10, 0, 2, 1)))
        );
        let ping = report.ping.clone().expect("a ping report");
        assert!(
            ping.ok && ping.target == node.gateway,
            "the node through the NAT: {ping:?}\n{}",
            lp.diagnostics()
        );
        assert_eq!(report.ra, None, "a router advertisement");
        let ipv6 = report.ipv6.clone().expect("a VMPOD-IPV6 report");
        assert!(
            ipv6.addresses.is_empty() && ipv6.routers.is_empty(),
            "IPv6 without forwarding: {ipv6:?}"
        );
    });
}

/// Boot slots in a cluster (`render-pod --max-concurrent-boots 1`, as the controller's
/// flag): two launcher Pods started at once on one node share the node's slot directory,
/// a hostPath the runner makes as kubelet does (DirectoryOrCreate: root's, 0755), in
/// which the compute container (uid 0, no capability for it) makes and locks the slot
/// file. Both guests lease; the second domain starts only after the first guest's lease
/// (both read through the launchers' control APIs), and the second's status said
/// Pending, "waiting for a boot slot (1 of 1 busy)", meanwhile. Both pods stop Succeeded
/// and leave nothing; the slot is free again.
#[test]
fn two_launcher_pods_with_one_boot_slot_boot_their_guests_one_after_the_other() {
    let Some(node) = privileged_node(ClusterNode::create) else {
        return;
    };
    let slots = tempfile::tempdir().unwrap();
    let slot_dir = slots.path().join("boot-slots");
    let flags = [
        "--max-concurrent-boots",
        "1",
        "--boot-slots-dir",
        slot_dir.to_str().unwrap(),
        // Only the lease gives the slot back here, however slow the machine.
        "--boot-slot-timeout",
        "600",
    ];
    let rendered = ["e2e-slot-a", "e2e-slot-b"].map(|name| {
        render(
            &testguest_vmi(name, "#cloud-config\n", true, 20, None),
            &flags,
        )
    });
    // Both at once, as a kubelet starts the pods bound to its node.
    let pods: Vec<LauncherPod> = std::thread::scope(|s| {
        let starts: Vec<_> = rendered
            .iter()
            .map(|r| s.spawn(|| r.start(&node)))
            .collect();
        starts.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let diagnostics = || {
        pods.iter()
            .map(|lp| format!("=== {} ===\n{}", lp.pod.name, lp.diagnostics()))
            .collect::<String>()
    };

    const WAITING: &str = "waiting for a boot slot (1 of 1 busy)";
    let mut waited: Vec<String> = Vec::new();
    let deadline = Instant::now() + 2 * BOOT;
    let mut both = loop {
        let seen: Vec<_> = pods
            .iter()
            .map(|lp| status_and_lease(&lp.state_dir))
            .collect();
        for (status, _) in seen.iter().flatten() {
            if status.reason.as_deref() == Some(WAITING) && !waited.contains(&status.name) {
                assert_eq!(status.phase, Phase::Pending, "{status:?}");
                waited.push(status.name.clone());
            }
        }
        let leased: Option<Vec<_>> = seen
            .into_iter()
            .map(|s| s.filter(|(st, lease)| st.running_at.is_some() && lease.is_some()))
            .collect();
        if let Some(leased) = leased {
            break leased;
        }
        assert!(
            Instant::now() < deadline,
            "both guests did not run and lease\n{}",
            diagnostics()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // Whole seconds, rounded down: the order holds of them too.
    let running_at =
        |s: &vmpod::control::LauncherStatus| s.running_at.as_ref().unwrap().0.as_second();
    both.sort_by_key(|(s, _)| running_at(s));
    let [(first, first_lease), (second, _)] = &both[..] else {
        unreachable!()
    };
    let first_lease = i64::try_from(first_lease.unwrap()).unwrap();
    assert!(
        running_at(second) >= first_lease,
        "{}'s domain ran at {}, before {}'s lease at {first_lease} (its domain ran at {})\n{}",
        second.name,
        running_at(second),
        first.name,
        running_at(first),
        diagnostics()
    );
    assert_eq!(
        waited,
        std::slice::from_ref(&second.name),
        "the status of the one that waited says so"
    );

    // The slot file the launchers made in the directory the runner made.
    let dir = std::fs::metadata(&slot_dir).unwrap();
    assert_eq!((dir.uid(), dir.permissions().mode() & 0o7777), (0, 0o755));
    let slot_file = slot_dir.join("boot-slot-0.lock");
    assert_eq!(std::fs::metadata(&slot_file).unwrap().uid(), 0);
    for lp in pods {
        stop_succeeded(&node, lp);
    }
    let file = std::fs::File::open(&slot_file).unwrap();
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .expect("the slot is free once both pods are gone");
}
