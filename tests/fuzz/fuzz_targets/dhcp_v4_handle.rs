//! The DHCPv4 packet handler on arbitrary bytes: it must never panic, and whatever it
//! answers must itself be a DHCP message that fits the client's size limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use vmpod::dhcp::config::{DhcpConfig, DhcpExtras, PrivateOption};
use vmpod::dhcp::v4::{Decision, decode, handle};
use vmpod::net::{InterfaceFacts, IpCidr, Route};

static CONFIG: LazyLock<DhcpConfig> = LazyLock::new(|| {
    let route = |d: &str, p, g: Option<&str>| Route {
        destination: IpCidr::new(d.parse().unwrap(), p),
        gateway: g.map(|g| g.parse().unwrap()),
        metric: None,
    };
    let facts = InterfaceFacts {
        interface: "eth0".into(),
        // The MAC the seed corpus uses, so the fuzzer reaches the answering paths.
        mac: "02:00:00:aa:bb:cc".parse().unwrap(),
        mtu: 1500,
        addresses: vec![IpCidr::new("10.244.1.5".parse().unwrap(), 32)],
        routes: vec![route("10.96.0.0", 12, Some("169.254.1.1")), route("0.0.0.0", 0, Some("169.254.1.1"))],
        dns: vec!["10.96.0.10".parse().unwrap()],
        search: vec!["default.svc.cluster.local".into(), "svc.cluster.local".into(), "cluster.local".into()],
        hostname: "vm1".into(),
    };
    let extras = DhcpExtras {
        boot_file_name: Some("pxelinux.0".into()),
        private_options: vec![PrivateOption { option: 240, value: "v".repeat(120) }],
        ..Default::default()
    };
    DhcpConfig::from_facts(&facts, "k6t-eth0", "169.254.75.10".parse().unwrap(), &extras).unwrap()
});

fuzz_target!(|data: &[u8]| {
    if let Decision::Reply(reply) = handle(&CONFIG, data).decision {
        assert!(decode(&reply.bytes).is_some(), "our reply does not decode");
        assert!(reply.bytes.len() <= 1500 - 28, "reply of {} bytes", reply.bytes.len());
    }
});
