//! End to end: the real launcher in a pod sandbox boots the test guest through its own
//! libvirtd under QEMU. The guest must lease the pod's IP, prefix, router and MTU from the
//! launcher's DHCP server, ping the gateway and read the cloud-init user-data; SIGTERM
//! must end it within the grace period, leaving no process and no link behind.
mod support;

use std::path::Path;
use std::time::Duration;
use support::launcher::{
    Launcher, control_call, pod_addresses, pod_links, processes_mentioning, testguest_vmi,
};
use vmpod::control::Phase;
use vmpod::net::IpCidr;
use vmpod::sandbox::{NodeSpec, PodSandbox, PodSpec};

fn pod(name: &str) -> PodSandbox {
    let node = NodeSpec::isolated(vec!["10.77.0.1/24".parse::<IpCidr>().unwrap()]);
    let mut spec = PodSpec::new(
        name,
        "10.77.0.5/24".parse::<IpCidr>().unwrap(),
        "10.77.0.1".parse().unwrap(),
    );
    spec.mtu = 1400;
    spec.dns = vec!["10.96.0.10".parse().unwrap()];
    PodSandbox::create(&node, &spec).unwrap()
}

const BOOT: Duration = Duration::from_secs(150);

/// The pid of the pod's process (one mentioning the state dir `state`) whose command line
/// contains `cmdline`.
fn pod_process(state: &Path, cmdline: &str) -> u32 {
    let p = processes_mentioning(&state.to_string_lossy())
        .into_iter()
        .find(|p| p.contains(cmdline))
        .unwrap_or_else(|| panic!("no {cmdline:?} process for this pod"));
    p.split(':').next().unwrap().parse().unwrap()
}

/// `/proc/<pid>/maps`: what process `pid` has mapped.
fn maps_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap()
}

#[test]
fn launcher_boots_guest_with_pod_network_and_stops_on_sigterm() {
    if !support::privileged("launcher_boots_guest_with_pod_network_and_stops_on_sigterm") {
        return;
    }
    let sb = pod("lboot");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let marker = format!("vmpod-user-data-{}", std::process::id());
    let vmi = testguest_vmi("lboot", &format!("#cloud-config\n# {marker}\n"), true, 30);
    let mut l = Launcher::start(&sb, &state, &vmi, &[]);

    let report = l.wait_report(BOOT, |r| r.holding);
    let lease = report.lease.clone().expect("a lease");
    assert_eq!(lease.ip, "10.77.0.5".parse::<std::net::Ipv4Addr>().unwrap());
    assert_eq!(lease.prefix, 24);
    assert_eq!(lease.router(), Some("10.77.0.1".parse().unwrap()));
    assert_eq!(lease.mtu, Some(1400));
    assert_eq!(lease.link_mtu, 1400);
    assert_eq!(
        lease.dns,
        vec!["10.96.0.10".parse::<std::net::IpAddr>().unwrap()]
    );
    // The lease is in the launcher's log at the default level.
    let log = l.log();
    assert!(
        log.lines()
            .any(|line| line.contains("DHCP lease acknowledged") && line.contains("ip=10.77.0.5")),
        "no lease line in the launcher's log:\n{log}"
    );
    let ping = report.ping.clone().expect("a ping report");
    assert!(ping.ok, "guest could not ping the gateway: {ping:?}");
    assert_eq!(
        ping.target,
        "10.77.0.1".parse::<std::net::Ipv4Addr>().unwrap()
    );
    let user_data = report.user_data().expect("cidata user-data on the console");
    assert!(user_data.contains(&marker), "user-data: {user_data}");

    // The control API answers with the VM's phase and address.
    let status = control_call(&state, "status", |c| async move { c.status().await });
    assert_eq!(status.phase, Phase::Running);
    assert_eq!(status.first_ip(), Some("10.77.0.5".parse().unwrap()));
    assert!(status.qemu_pid.is_some(), "{status:?}");
    // The tap's anti-spoofing rules are in place (the guest leased and pinged through
    // them) and their counters readable: this launcher runs as root with NET_ADMIN.
    let anti = support::launcher::anti_spoofing_report(&state);
    assert!(
        anti.dropped
            .as_ref()
            .is_some_and(|d| d.len() == vmpod::net::antispoof::DropKind::ALL.len())
            && anti.unavailable.is_none(),
        "{anti:?}"
    );
    let xml = control_call(
        &state,
        "domain XML",
        |c| async move { c.domain_xml().await },
    );
    assert!(
        xml.contains("<target dev='tap-eth0' managed='no'/>"),
        "{xml}"
    );
    // libvirt stays out of the launcher's process: its client is the vmpod-virt child.
    let launcher_pid = l.child.id();
    let maps = maps_of(launcher_pid);
    assert!(
        !maps.contains("libvirt"),
        "the launcher maps libvirt:\n{maps}"
    );
    let agent_pid = pod_process(&state, "vmpod-virt --socket");
    let agent_stat = std::fs::read_to_string(format!("/proc/{agent_pid}/stat")).unwrap();
    let agent_ppid: u32 = agent_stat[agent_stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        agent_ppid, launcher_pid,
        "vmpod-virt is the launcher's child"
    );
    assert!(
        maps_of(agent_pid).contains("libvirt.so"),
        "vmpod-virt holds libvirt"
    );
    // Both processes that load libvirt get the preload that skips its libcurl init.
    let libvirtd_pid = pod_process(&state, "libvirtd --config");
    for (what, pid) in [("vmpod-virt", agent_pid), ("libvirtd", libvirtd_pid)] {
        assert!(
            maps_of(pid).contains(vmpod::domain::daemons::PRELOAD_LIB),
            "{what} has no {}",
            vmpod::domain::daemons::PRELOAD_LIB
        );
    }
    // libvirtd alone runs its heap trimmer.
    let threads = |pid: u32| -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
            .map(|c| c.trim().to_string())
            .collect()
    };
    assert!(
        threads(libvirtd_pid).iter().any(|t| t == "vmpod-trim"),
        "libvirtd's threads: {:?}",
        threads(libvirtd_pid)
    );
    assert!(!threads(agent_pid).iter().any(|t| t == "vmpod-trim"));

    // The rewired pod: bridge and tap exist while the VM runs.
    let links = pod_links(&sb);
    assert!(
        links.iter().any(|l| l == "k6t-eth0") && links.iter().any(|l| l == "tap-eth0"),
        "{links:?}"
    );

    l.stop_gracefully(Duration::from_secs(30));
    assert!(
        l.console().contains("VMPOD-POWER-BUTTON"),
        "guest saw no power button:\n{}",
        l.console()
    );
    assert!(
        l.console().contains("VMPOD-POWEROFF"),
        "guest did not power off:\n{}",
        l.console()
    );
    let status = vmpod::control::read_status(&state).unwrap();
    assert_eq!(status.phase, Phase::Succeeded, "{status:?}");

    // Nothing left: no daemon or QEMU for this pod, no bridge or tap, eth0 has its IP back.
    let left = processes_mentioning(&state.to_string_lossy());
    assert!(left.is_empty(), "leftover processes: {left:?}");
    let links = pod_links(&sb);
    assert!(
        !links.iter().any(|l| l == "k6t-eth0" || l == "tap-eth0"),
        "{links:?}"
    );
    let tables = sb
        .command("nft")
        .unwrap()
        .args(["list", "tables"])
        .output()
        .unwrap();
    let tables = String::from_utf8_lossy(&tables.stdout);
    assert!(!tables.contains("vmpod-as-eth0"), "table left: {tables}");
    let addrs = pod_addresses(&sb);
    assert!(
        addrs.contains(&"10.77.0.5/24".parse().unwrap()),
        "pod IP not restored: {addrs:?}"
    );
}

#[test]
fn second_launcher_on_rewired_pod_uses_cache_and_exits_when_guest_powers_off() {
    if !support::privileged(
        "second_launcher_on_rewired_pod_uses_cache_and_exits_when_guest_powers_off",
    ) {
        return;
    }
    let sb = pod("lcache");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // A first launcher's network phase already ran for a VMI with its own MAC: the pod IP
    // is gone from eth0, and the cache holds the facts and that MAC.
    let vmi_mac = "02:5a:00:0c:ac:4e";
    support::stdout_of(
        sb.command(support::launcher::launcher_bin())
            .unwrap()
            .args(["net", "setup", "--vm-mac", vmi_mac, "--state-dir"])
            .arg(&state)
            .arg("--resolv-conf")
            .arg(sb.resolv_conf_path()),
        "net setup",
    );

    let vmi = testguest_vmi("lcache", "#cloud-config\n", false, 10).replacen(
        "          bridge: {}\n",
        &format!("          bridge: {{}}\n          macAddress: \"{vmi_mac}\"\n"),
        1,
    );
    assert!(vmi.contains(vmi_mac));
    let mut l = Launcher::start(&sb, &state, &vmi, &["--accel", "emulation"]);
    let report = l.wait_report(BOOT, |r| r.powered_off);
    let lease = report.lease.expect("a lease");
    assert_eq!(lease.ip, "10.77.0.5".parse::<std::net::Ipv4Addr>().unwrap());
    assert_eq!(lease.mac, vmi_mac, "the cached VMI MAC got the lease");
    assert!(report.ping.is_some_and(|p| p.ok));
    let st = l.wait_exit(Duration::from_secs(30));
    assert!(st.success(), "launcher exit {st}\n{}", l.log());
    assert!(
        l.log().contains("from_cache=true"),
        "launcher did not reuse the cache:\n{}",
        l.log()
    );
    let status = vmpod::control::read_status(&state).unwrap();
    assert_eq!(status.phase, Phase::Succeeded);
    assert_eq!(status.reason.as_deref(), Some("guest powered off"));
    assert!(processes_mentioning(&state.to_string_lossy()).is_empty());
}

/// Boot a held guest, SIGKILL the process `victim` picks (given the state dir and QEMU's
/// pid) once the domain runs, and check the launcher fails with a reason containing
/// `reason` and leaves no process and no link behind.
fn launcher_fails_cleanly_when_killed(name: &str, victim: fn(&Path, u32) -> u32, reason: &str) {
    let sb = pod(name);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let vmi = testguest_vmi(name, "#cloud-config\n", true, 30);
    let mut l = Launcher::start(&sb, &state, &vmi, &["--accel", "emulation"]);
    // Wait (bounded) for the domain to run.
    let deadline = std::time::Instant::now() + BOOT;
    let qemu_pid = loop {
        if let Some(pid) = vmpod::control::read_status(&state)
            .ok()
            .filter(|s| s.phase == Phase::Running)
            .and_then(|s| s.qemu_pid)
        {
            break pid;
        }
        assert!(
            l.child.try_wait().unwrap().is_none(),
            "launcher exited early:\n{}",
            l.log()
        );
        assert!(
            std::time::Instant::now() < deadline,
            "domain not running:\n{}",
            l.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let pid = nix::unistd::Pid::from_raw(i32::try_from(victim(&state, qemu_pid)).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let st = l.wait_exit(Duration::from_secs(30));
    assert!(!st.success(), "the launcher must fail\n{}", l.log());
    let status = vmpod::control::read_status(&state).unwrap();
    assert_eq!(status.phase, Phase::Failed, "{status:?}");
    let got = status.reason.unwrap_or_default();
    assert!(got.contains(reason), "reason: {got}");
    assert!(
        l.log().contains(&got),
        "stderr names the reason:\n{}",
        l.log()
    );
    let left = processes_mentioning(&state.to_string_lossy());
    assert!(left.is_empty(), "leftover processes: {left:?}\n{}", l.log());
    assert!(
        !pod_links(&sb)
            .iter()
            .any(|l| l == "k6t-eth0" || l == "tap-eth0")
    );
}

#[test]
fn launcher_exits_nonzero_with_reason_when_qemu_dies() {
    if !support::privileged("launcher_exits_nonzero_with_reason_when_qemu_dies") {
        return;
    }
    launcher_fails_cleanly_when_killed("lcrash", |_, qemu| qemu, "domain stopped");
}

#[test]
fn launcher_ends_qemu_and_exits_nonzero_when_its_libvirt_client_dies() {
    if !support::privileged("launcher_ends_qemu_and_exits_nonzero_when_its_libvirt_client_dies") {
        return;
    }
    launcher_fails_cleanly_when_killed(
        "lagent",
        |state, _| pod_process(state, "vmpod-virt --socket"),
        "vmpod-virt",
    );
}
