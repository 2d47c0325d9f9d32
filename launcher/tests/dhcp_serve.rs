//! `vmpod-launcher dhcp serve` for real: after `net setup` cached a pod's facts, the
//! server process in the pod namespace, a probe from the VM side, SIGTERM to stop.

#[path = "../../tests/dhcp_fixture/mod.rs"]
mod dhcp_fixture;
#[path = "../../tests/support/mod.rs"]
mod support;

use dhcp_fixture::*;
use std::process::{Command, Stdio};
use std::time::Duration;
use vmpod::dhcp::probe::{ProbeOptions, probe};
use vmpod::net::netns;

const LAUNCHER: &str = env!("CARGO_BIN_EXE_vmpod-launcher");

#[test]
fn dhcp_serve_answers_from_the_cached_facts_and_stops_on_sigterm() {
    if !support::privileged("dhcp_serve_answers_from_the_cached_facts_and_stops_on_sigterm") {
        return;
    }
    // `net setup` has rewired the pod and cached its facts in the state directory.
    let t = Topology::new("serve", Shape::Subnet);
    let mac = t.vm_mac;

    let child = t
        .in_pod(LAUNCHER)
        .args(["dhcp", "serve", "--state-dir"])
        .arg(t.state_dir())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let opts = ProbeOptions {
        interface: VM_IF.into(),
        mac,
        timeout: Duration::from_millis(500),
    };
    let report = netns::block_on_in(Some(&t.vm_path()), || async {
        for _ in 0..20 {
            if let Ok(r) = probe(&opts).await {
                return Some(r);
            }
        }
        None
    })
    .unwrap()
    .expect("no answer from vmpod-launcher dhcp serve");
    assert_eq!(report.ack.message_type, "ACK");
    assert_eq!(report.ack.yiaddr.to_string(), "10.244.7.23");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("DHCP server listening") && log.contains("search domain left out"),
        "{log}"
    );
}

#[test]
fn dhcp_serve_without_cached_facts_says_what_is_missing() {
    let state = tempfile::tempdir().unwrap();
    let out = Command::new(LAUNCHER)
        .args(["dhcp", "serve", "--state-dir"])
        .arg(state.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no cached interfaces in") && err.contains("net setup"),
        "{err}"
    );
}
