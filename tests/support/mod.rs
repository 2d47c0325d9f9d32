//! Shared support for integration tests. Include with `mod support;`.
//!
//! Privileged tests (namespaces, libvirt, QEMU) call [`privileged`] first: without root
//! they skip loudly, but under CI (see [`ci`]) a skip is a failure.
#![allow(dead_code)]

pub mod cargo_build;
pub mod guest;
pub mod http;
pub mod launcher;

/// A dual-stack bridge-CNI pod spec on its own node: 10.77.0.5/24 and fd77::5/64, an
/// extra route to 192.168.50.0/24 (metric 50), MTU 1450, one search domain.
pub fn dual_stack_spec(name: &str) -> (vmpod::sandbox::NodeSpec, vmpod::sandbox::PodSpec) {
    use vmpod::net::{IpCidr, Route};
    let node = vmpod::sandbox::NodeSpec::isolated(vec![
        "10.77.0.1/24".parse::<IpCidr>().unwrap(),
        "fd77::1/64".parse::<IpCidr>().unwrap(),
    ]);
    let mut pod = vmpod::sandbox::PodSpec::new(
        name,
        "10.77.0.5/24".parse::<IpCidr>().unwrap(),
        "10.77.0.1".parse().unwrap(),
    );
    pod.mac = "02:00:0a:4d:00:05".parse().unwrap();
    pod.mtu = 1450;
    pod.routes.push(Route {
        destination: "192.168.50.0/24".parse::<IpCidr>().unwrap(),
        gateway: Some("10.77.0.1".parse().unwrap()),
        metric: Some(50),
    });
    pod.ipv6 = Some("fd77::5/64".parse::<IpCidr>().unwrap());
    pod.gateway6 = Some("fd77::1".parse().unwrap());
    pod.dns = vec!["10.96.0.10".parse().unwrap()];
    pod.search = vec!["default.svc.cluster.local".into()];
    pod.hostname = "web-0".into();
    (node, pod)
}

/// A pod spec in `10.<net>.0.0/24` on a node of its own (its own namespaces, so addresses
/// may repeat across tests): the pod at .5, its gateway, the node bridge, at .1.
pub fn own_node_spec(name: &str, net: u8) -> (vmpod::sandbox::NodeSpec, vmpod::sandbox::PodSpec) {
    use vmpod::net::IpCidr;
    let node = vmpod::sandbox::NodeSpec::isolated(vec![
        format!("10.{net}.0.1/24").parse::<IpCidr>().unwrap(),
    ]);
    let pod = vmpod::sandbox::PodSpec::new(
        name,
        format!("10.{net}.0.5/24").parse::<IpCidr>().unwrap(),
        format!("10.{net}.0.1").parse().unwrap(),
    );
    (node, pod)
}

/// The pod of [`own_node_spec`], created.
pub fn own_node_pod(name: &str, net: u8) -> vmpod::sandbox::PodSandbox {
    let (node, pod) = own_node_spec(name, net);
    vmpod::sandbox::PodSandbox::create(&node, &pod).unwrap()
}

/// A launcher's place: the pod of [`own_node_pod`] and a state dir, `state` in a temporary
/// directory (removed when the returned guard drops).
pub fn pod_and_state_dir(
    name: &str,
    net: u8,
) -> (
    vmpod::sandbox::PodSandbox,
    tempfile::TempDir,
    std::path::PathBuf,
) {
    let sb = own_node_pod(name, net);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    (sb, dir, state)
}

/// Run `cmd` to its end; fail naming `what` and showing its stderr unless it succeeded.
/// Returns its stdout.
pub fn stdout_of(cmd: &mut std::process::Command, what: &str) -> Vec<u8> {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// True when the test may go on. Not root: prints why and returns false, or panics in CI.
pub fn privileged(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        !ci(),
        "{test}: needs root, and under CI=true a privileged test must not skip"
    );
    eprintln!("SKIPPED {test}: needs root (run as root, or under CI=true to make this fail)");
    false
}

/// [`privileged`] for the running test, named by its thread (the test harness names each
/// test's thread after the test).
pub fn privileged_test() -> bool {
    privileged(std::thread::current().name().unwrap_or("this test"))
}

/// True under CI: `CI` set to anything but empty, `false` or `0` (CI systems set `true`,
/// `1`, `yes` or their own name).
pub fn ci() -> bool {
    is_ci_value(std::env::var("CI").ok().as_deref())
}

/// [`ci`] for a given value of `CI`.
pub fn is_ci_value(v: Option<&str>) -> bool {
    v.map(str::trim)
        .is_some_and(|v| !(v.is_empty() || v == "0" || v.eq_ignore_ascii_case("false")))
}
