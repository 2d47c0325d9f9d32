//! The DHCP server on the bridge `net setup` built in a pod, probed by `vmpodctl dhcp
//! probe` from the VM's side: exact answers for the VM's MAC, silence for others.

mod dhcp_fixture;
mod support;

use dhcp_fixture::*;
use std::process::Command;

fn vmpodctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vmpodctl"))
}

#[test]
fn probe_sees_every_option_and_another_mac_gets_no_answer() {
    if !support::privileged("probe_sees_every_option_and_another_mac_gets_no_answer") {
        return;
    }
    let t = Topology::new("probe", Shape::Subnet);
    let server = start_server(&t, t.config());

    let out = vmpodctl()
        .args([
            "dhcp",
            "probe",
            "--interface",
            VM_IF,
            "--netns",
            &t.vm_ns,
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ack = &report["ack"];
    assert_eq!(ack["messageType"], "ACK");
    assert_eq!(ack["yiaddr"], "10.244.7.23");
    let opt = |code: u64| -> String {
        ack["options"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["code"] == code)
            .map(|o| o["value"].as_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(opt(1), "255.255.255.0");
    assert_eq!(opt(3), "10.244.7.1");
    assert_eq!(opt(6), "10.96.0.10, 10.96.0.11");
    assert_eq!(opt(26), "1400");
    assert_eq!(opt(54), "169.254.75.10");
    assert_eq!(
        opt(119),
        "default.svc.cluster.local, svc.cluster.local, cluster.local"
    );
    assert_eq!(
        opt(121),
        "10.96.0.0/12 via 10.244.7.254, 0.0.0.0/0 via 10.244.7.1"
    );
    assert!(report["offer"]["rttUs"].as_u64().unwrap() > 0);

    // The human form names options and shows round-trip times.
    let out = vmpodctl()
        .args(["dhcp", "probe", "--interface", VM_IF, "--netns", &t.vm_ns])
        .output()
        .unwrap();
    let human = text(&out);
    assert!(
        out.status.success()
            && human.contains("OFFER from 169.254.75.10:67 in")
            && human.contains("classless-static-routes"),
        "{human}"
    );

    // Another MAC: no answer at all, and the server counts it.
    let out = vmpodctl()
        .args([
            "dhcp",
            "probe",
            "--interface",
            VM_IF,
            "--netns",
            &t.vm_ns,
            "--mac",
            "02:00:00:00:00:99",
            "--timeout",
            "1",
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success() && text(&out).contains("no OFFER within"),
        "{}",
        text(&out)
    );

    let stats = server.stats.snapshot();
    assert_eq!(stats.requests.discover, 3);
    assert_eq!(stats.requests.request, 2);
    assert_eq!(
        (stats.replies.offer, stats.replies.ack, stats.replies.nak),
        (2, 2, 0)
    );
    assert_eq!(stats.drops.foreign_client, 1);
    assert_eq!(stats.lease.state, vmpod::dhcp::stats::LeaseState::Bound);
    let last = stats.last_client.unwrap();
    assert_eq!(
        (last.seen.chaddr.as_str(), last.answered),
        ("02:00:00:00:00:99", false)
    );
    assert_eq!(
        stats.dropped_search.len(),
        1,
        "192.168.1.1 left out of the search list"
    );
}
