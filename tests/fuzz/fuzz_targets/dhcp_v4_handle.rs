//! The DHCPv4 packet handler on arbitrary bytes: it must never panic, and whatever it
//! answers must itself be a DHCP message that fits the client's size limit: the
//! client's maximum message size (option 57, never taken below 576), or 576 when it
//! sends none, and never more than the link's MTU; both less the IP and UDP headers.
//! The configuration carries more options than 576 bytes hold, so the limit matters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use vmpod::dhcp::config::{DhcpConfig, DhcpExtras, PrivateOption};
use vmpod::dhcp::v4::{Decision, decode, handle};
use dhcproto::v4::{DhcpOption, OptionCode};
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
        private_options: (240..244)
            .filter_map(|option| PrivateOption::new(option, "v".repeat(120)))
            .collect(),
        ..Default::default()
    };
    DhcpConfig::from_facts(&facts, "k6t-eth0", "169.254.75.10".parse().unwrap(), &extras).unwrap()
});

/// The largest DHCP message the client accepts, per RFC 2131/2132, from its request.
fn client_limit(request: &[u8]) -> usize {
    const MTU: usize = 1500;
    const IP_UDP: usize = 28;
    let asked = decode(request).and_then(|m| match m.opts().get(OptionCode::MaxMessageSize) {
        Some(DhcpOption::MaxMessageSize(n)) => Some(usize::from(*n)),
        _ => None,
    });
    asked.unwrap_or(576).max(576).min(MTU) - IP_UDP
}

fuzz_target!(|data: &[u8]| {
    if let Decision::Reply(reply) = handle(&CONFIG, data).decision {
        assert!(decode(&reply.bytes).is_some(), "our reply does not decode");
        let limit = client_limit(data);
        assert!(
            reply.bytes.len() <= limit,
            "reply of {} bytes to a client that takes {limit}",
            reply.bytes.len()
        );
    }
});
