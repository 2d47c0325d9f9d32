use super::*;
use crate::dhcp::config::{DhcpExtras, PrivateOption};
use crate::dhcp::describe::wire_order;
use crate::net::{InterfaceFacts, IpCidr, Route};
use dhcproto::v4::{DhcpOption as O, OptionCode as C};

const VM_MAC: &str = "02:00:00:aa:bb:cc";
const SERVER: Ipv4Addr = Ipv4Addr::new(169, 254, 75, 10);

fn route(dest: &str, prefix: u8, gw: Option<&str>) -> Route {
    Route {
        destination: IpCidr::new(dest.parse().unwrap(), prefix),
        gateway: gw.map(|g| g.parse().unwrap()),
        metric: None,
    }
}

pub(crate) fn facts() -> InterfaceFacts {
    InterfaceFacts {
        interface: "eth0".into(),
        mac: VM_MAC.parse().unwrap(),
        mtu: 1450,
        addresses: vec![
            IpCidr::new("10.244.1.5".parse().unwrap(), 24),
            IpCidr::new("fd00::5".parse().unwrap(), 64),
        ],
        routes: vec![
            route("10.244.1.0", 24, None),
            route("10.96.0.0", 12, Some("10.244.1.254")),
            route("0.0.0.0", 0, Some("10.244.1.1")),
        ],
        dns: vec!["10.96.0.10".parse().unwrap(), "fd00::10".parse().unwrap()],
        search: vec![
            "default.svc.cluster.local".into(),
            "svc.cluster.local".into(),
            "cluster.local".into(),
        ],
        hostname: "vm1".into(),
    }
}

fn config() -> DhcpConfig {
    DhcpConfig::from_facts(&facts(), "k6t-eth0", SERVER, &DhcpExtras::default()).unwrap()
}

fn mac() -> MacAddr {
    VM_MAC.parse().unwrap()
}

fn discover() -> Message {
    client_message(mac(), 0x1234, MessageType::Discover)
}

fn request(requested: Option<Ipv4Addr>, server: Option<Ipv4Addr>) -> Message {
    let mut m = client_message(mac(), 0x1234, MessageType::Request);
    if let Some(ip) = requested {
        m.opts_mut().insert(O::RequestedIpAddress(ip));
    }
    if let Some(s) = server {
        m.opts_mut().insert(O::ServerIdentifier(s));
    }
    m
}

fn wire(m: &Message) -> Vec<u8> {
    let mut b = Vec::new();
    m.encode(&mut Encoder::new(&mut b)).unwrap();
    b
}

/// Run a request through the whole handler (bytes in, bytes out) and decode the reply.
fn answer(cfg: &DhcpConfig, m: &Message) -> (Reply, Message) {
    match handle(cfg, &wire(m)).decision {
        Decision::Reply(r) => {
            let decoded = Message::decode(&mut Decoder::new(&r.bytes)).unwrap();
            (r, decoded)
        }
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn dropped(cfg: &DhcpConfig, bytes: &[u8]) -> DropReason {
    match handle(cfg, bytes).decision {
        Decision::Drop(r) => r,
        other => panic!("expected a drop, got {other:?}"),
    }
}

#[test]
fn discover_gets_an_offer_of_the_pod_address_with_every_essential() {
    let (reply, offer) = answer(&config(), &discover());
    assert_eq!(reply.kind, ReplyKind::Offer);
    assert_eq!(
        reply.to,
        Destination::Broadcast,
        "broadcast flag set by the client"
    );
    assert_eq!(offer.opcode(), Opcode::BootReply);
    assert_eq!(offer.xid(), 0x1234);
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 244, 1, 5));
    assert_eq!(offer.chaddr(), &mac().0);
    assert!(offer.flags().broadcast());
    let o = offer.opts();
    assert_eq!(o.msg_type(), Some(MessageType::Offer));
    assert_eq!(
        o.get(C::ServerIdentifier),
        Some(&O::ServerIdentifier(SERVER))
    );
    assert_eq!(
        o.get(C::SubnetMask),
        Some(&O::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
    );
    assert_eq!(
        o.get(C::Router),
        Some(&O::Router(vec![Ipv4Addr::new(10, 244, 1, 1)]))
    );
    assert_eq!(
        o.get(C::DomainNameServer),
        Some(&O::DomainNameServer(vec![Ipv4Addr::new(10, 96, 0, 10)]))
    );
    assert_eq!(o.get(C::InterfaceMtu), Some(&O::InterfaceMtu(1450)));
    assert_eq!(
        o.get(C::AddressLeaseTime),
        Some(&O::AddressLeaseTime(crate::dhcp::DEFAULT_LEASE_SECS))
    );
    assert_eq!(
        o.get(C::Renewal),
        Some(&O::Renewal(crate::dhcp::DEFAULT_LEASE_SECS / 2))
    );
    assert_eq!(
        o.get(C::Rebinding),
        Some(&O::Rebinding(crate::dhcp::DEFAULT_LEASE_SECS / 8 * 7))
    );
    assert_eq!(o.get(C::Hostname), Some(&O::Hostname("vm1".into())));
    assert_eq!(
        o.get(C::DomainName),
        Some(&O::DomainName("default.svc.cluster.local".into()))
    );
    let Some(O::ClasslessStaticRoute(routes)) = o.get(C::ClasslessStaticRoute) else {
        panic!("no option 121")
    };
    let routes: Vec<String> = routes.iter().map(|(n, g)| format!("{n} {g}")).collect();
    assert_eq!(
        routes,
        ["10.96.0.0/12 10.244.1.254", "0.0.0.0/0 10.244.1.1"],
        "default route last"
    );
    let Some(O::DomainSearch(names)) = o.get(C::DomainSearch) else {
        panic!("no option 119")
    };
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    assert_eq!(
        names,
        [
            "default.svc.cluster.local.",
            "svc.cluster.local.",
            "cluster.local."
        ]
    );
    assert!(reply.bytes.len() >= 300 && reply.bytes.len() <= 548);
}

#[test]
fn requested_options_come_first_in_the_clients_order() {
    let mut d = discover();
    d.opts_mut().insert(O::ParameterRequestList(vec![
        C::DomainSearch,
        C::InterfaceMtu,
        C::Router,
        C::SubnetMask,
    ]));
    let (reply, _) = answer(&config(), &d);
    let order = wire_order(&reply.bytes);
    assert_eq!(order[0], 53, "the message type leads");
    assert_eq!(&order[1..5], &[119, 26, 3, 1], "then the client's order");
    assert_eq!(
        &order[5..7],
        &[54, 51],
        "then the protocol options it did not ask for"
    );
    for essential in [1, 3, 6, 26, 121] {
        assert!(
            order.contains(&essential),
            "option {essential} sent although not requested"
        );
    }
}

/// RFC 2132 9.8: requested options go in the order requested, lease time (51) and
/// server identifier (54) included; what the client did not ask for comes after.
#[test]
fn lease_time_and_server_identifier_follow_the_clients_order_too() {
    let mut r = request(Some(config().client_ip), Some(SERVER));
    r.opts_mut().insert(O::ParameterRequestList(vec![
        C::SubnetMask,
        C::Router,
        C::AddressLeaseTime,
        C::DomainNameServer,
        C::ServerIdentifier,
    ]));
    let (reply, ack) = answer(&config(), &r);
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    let order = wire_order(&reply.bytes);
    assert_eq!(&order[..6], &[53, 1, 3, 51, 6, 54], "{order:?}");
    let rest = &order[6..];
    for unrequested in [26, 58, 59, 121] {
        assert!(
            rest.contains(&unrequested),
            "{unrequested} after: {order:?}"
        );
    }
}

#[test]
fn search_list_is_compressed_rfc3397() {
    let (reply, _) = answer(&config(), &discover());
    let i = reply.bytes[240..]
        .windows(1)
        .position(|w| w[0] == 119)
        .unwrap()
        + 240;
    let len = usize::from(reply.bytes[i + 1]);
    let data = &reply.bytes[i + 2..i + 2 + len];
    // "default.svc.cluster.local" in full (27 bytes), then "svc.cluster.local" and
    // "cluster.local" as pointers into it (2 bytes each).
    assert_eq!(len, 27 + 2 + 2);
    assert_eq!(&data[27..], &[0xc0, 8, 0xc0, 12]);
}

#[test]
fn slash_32_with_link_local_gateway_yields_an_on_link_route_then_the_default() {
    let mut f = facts();
    f.addresses = vec![IpCidr::new("10.244.1.5".parse().unwrap(), 32)];
    f.routes = vec![
        route("169.254.1.1", 32, None),
        route("0.0.0.0", 0, Some("169.254.1.1")),
    ];
    let cfg = DhcpConfig::from_facts(&f, "k6t-eth0", SERVER, &DhcpExtras::default()).unwrap();
    let (reply, offer) = answer(&cfg, &discover());
    assert_eq!(
        offer.opts().get(C::SubnetMask),
        Some(&O::SubnetMask(Ipv4Addr::BROADCAST))
    );
    assert_eq!(
        offer.opts().get(C::Router),
        Some(&O::Router(vec![Ipv4Addr::new(169, 254, 1, 1)]))
    );
    // RFC 3442 wire bytes: 169.254.1.1/32 on-link (router 0.0.0.0), then 0/0 via it.
    let i = 240
        + wire_order(&reply.bytes)
            .iter()
            .position(|c| *c == 121)
            .map(|_| 0)
            .unwrap();
    let at = reply.bytes[i..]
        .windows(2)
        .position(|w| w == [121, 14])
        .unwrap()
        + i;
    assert_eq!(
        &reply.bytes[at + 2..at + 16],
        &[32, 169, 254, 1, 1, 0, 0, 0, 0, 0, 169, 254, 1, 1]
    );
}

#[test]
fn request_rules_ack_nak_and_drop() {
    let cfg = config();
    let me = cfg.client_ip;
    let (r, ack) = answer(&cfg, &request(Some(me), Some(SERVER)));
    assert_eq!((r.kind, ack.yiaddr()), (ReplyKind::Ack, me), "SELECTING");
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(
        answer(&cfg, &request(Some(me), None)).0.kind,
        ReplyKind::Ack,
        "INIT-REBOOT"
    );
    let (r, nak) = answer(
        &cfg,
        &request(Some(Ipv4Addr::new(10, 244, 1, 6)), Some(SERVER)),
    );
    assert_eq!(
        (r.kind, r.to),
        (ReplyKind::Nak, Destination::Broadcast),
        "wrong address"
    );
    assert_eq!(nak.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert!(
        nak.opts().get(C::AddressLeaseTime).is_none() && nak.opts().get(C::SubnetMask).is_none()
    );
    // RFC 2131 4.3.2: the client chose another server's offer; no reply, not a NAK.
    for asked in [Some(me), Some(Ipv4Addr::new(10, 244, 1, 6)), None] {
        assert_eq!(
            dropped(
                &cfg,
                &wire(&request(asked, Some(Ipv4Addr::new(10, 0, 0, 1))))
            ),
            DropReason::OtherServerChosen,
            "other server, requested {asked:?}"
        );
    }
    assert_eq!(
        answer(&cfg, &request(Some(Ipv4Addr::new(1, 2, 3, 4)), None))
            .0
            .kind,
        ReplyKind::Nak,
        "INIT-REBOOT elsewhere"
    );
    assert_eq!(
        dropped(&cfg, &wire(&request(None, None))),
        DropReason::RequestWithoutAddress
    );

    // RENEWING: ciaddr set, unicast back to it, ciaddr echoed.
    let mut renew = request(None, None);
    renew.set_ciaddr(me).set_flags(Flags::default());
    let (r, ack) = answer(&cfg, &renew);
    assert_eq!(
        (r.kind, r.to, ack.ciaddr(), ack.yiaddr()),
        (ReplyKind::Ack, Destination::Client(me), me, me)
    );
    renew.set_ciaddr(Ipv4Addr::new(10, 244, 9, 9));
    assert_eq!(answer(&cfg, &renew).0.kind, ReplyKind::Nak);
}

#[test]
fn reply_addressing_follows_rfc2131() {
    let cfg = config();
    let mut d = discover();
    d.set_flags(Flags::default());
    assert_eq!(
        answer(&cfg, &d).0.to,
        Destination::Hardware(cfg.client_ip),
        "no broadcast bit: unicast to chaddr"
    );
    d.set_giaddr(Ipv4Addr::new(10, 0, 0, 1));
    let (r, offer) = answer(&cfg, &d);
    assert_eq!(
        (r.to, offer.giaddr()),
        (Destination::Broadcast, Ipv4Addr::UNSPECIFIED),
        "giaddr is ignored: no relay sits on the tap, and a VM must not pick where we unicast"
    );
    let mut bad = request(Some(Ipv4Addr::new(1, 1, 1, 1)), None);
    bad.set_flags(Flags::default())
        .set_giaddr(Ipv4Addr::new(10, 0, 0, 1));
    let (r, _) = answer(&cfg, &bad);
    assert_eq!(r.to, Destination::Broadcast);
    let mut other = client_message(mac(), 7, MessageType::Inform);
    other.set_flags(Flags::default());
    other.set_ciaddr(Ipv4Addr::new(10, 0, 0, 99));
    let (r, _) = answer(&cfg, &other);
    assert_eq!(
        r.to,
        Destination::Broadcast,
        "a ciaddr other than the VM's own is not unicast to"
    );
}

#[test]
fn inform_gets_configuration_without_lease_data() {
    let cfg = config();
    let mut inform = client_message(mac(), 7, MessageType::Inform);
    inform.set_ciaddr(cfg.client_ip);
    let (r, ack) = answer(&cfg, &inform);
    assert_eq!(
        (r.kind, r.to),
        (ReplyKind::Ack, Destination::Client(cfg.client_ip))
    );
    assert_eq!(ack.yiaddr(), Ipv4Addr::UNSPECIFIED);
    for lease_opt in [C::AddressLeaseTime, C::Renewal, C::Rebinding] {
        assert!(
            ack.opts().get(lease_opt).is_none(),
            "{lease_opt:?} in an INFORM ACK"
        );
    }
    assert!(ack.opts().get(C::DomainNameServer).is_some());
    assert_eq!(
        dropped(&cfg, &wire(&client_message(mac(), 7, MessageType::Inform))),
        DropReason::InformWithoutAddress
    );
}

/// RELEASE and DECLINE are events, never answered. What they do to the lease (and that
/// the address is offered again) is kept by the server: `tests/dhcp_server.rs`
/// `release_decline_and_inform_through_the_socket_are_counted`.
#[test]
fn release_and_decline_are_unanswered_events() {
    let cfg = config();
    for (t, e) in [
        (MessageType::Release, LeaseEvent::Released),
        (MessageType::Decline, LeaseEvent::Declined),
    ] {
        assert_eq!(
            handle(&cfg, &wire(&client_message(mac(), 1, t))).decision,
            Decision::Event(e)
        );
    }
}

#[test]
fn other_clients_and_junk_are_dropped_with_a_reason() {
    let cfg = config();
    let other = client_message(
        "02:00:00:00:00:01".parse().unwrap(),
        1,
        MessageType::Discover,
    );
    let h = handle(&cfg, &wire(&other));
    assert_eq!(h.decision, Decision::Drop(DropReason::ForeignClient));
    assert_eq!(h.client.unwrap().chaddr, "02:00:00:00:00:01");
    assert_eq!(dropped(&cfg, &[]), DropReason::Malformed);
    assert_eq!(
        dropped(&cfg, &wire(&discover())[..239]),
        DropReason::Malformed
    );
    let mut bad_magic = wire(&discover());
    bad_magic[236] = 0;
    assert_eq!(dropped(&cfg, &bad_magic), DropReason::Malformed);
    let mut huge_hlen = wire(&discover());
    huge_hlen[2] = 200; // dhcproto's chaddr() would panic on this
    assert_eq!(dropped(&cfg, &huge_hlen), DropReason::NotEthernet);
    let mut reply = wire(&discover());
    reply[0] = 2;
    assert_eq!(dropped(&cfg, &reply), DropReason::NotBootRequest);
    let mut no_type = discover();
    no_type.opts_mut().remove(C::MessageType);
    no_type.opts_mut().insert(O::Hostname("x".into()));
    assert_eq!(dropped(&cfg, &wire(&no_type)), DropReason::NoMessageType);
    let offer = client_message(mac(), 1, MessageType::Offer);
    assert_eq!(dropped(&cfg, &wire(&offer)), DropReason::UnsupportedType);
}

#[test]
fn junk_never_panics() {
    use rand::{Rng, SeedableRng};
    let cfg = config();
    let base = wire(&discover());
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    for _ in 0..20_000 {
        let mut p = base.clone();
        for _ in 0..rng.random_range(1..8) {
            let i = rng.random_range(0..p.len());
            p[i] = rng.random();
        }
        p.truncate(rng.random_range(0..=p.len()));
        let _ = handle(&cfg, &p);
    }
}

#[test]
fn small_max_message_size_leaves_out_whole_options_least_important_first() {
    let mut f = facts();
    f.search = (0..12).map(|i| format!("zone{i}.example{i}.org")).collect();
    f.routes
        .extend((0..30).map(|i| route(&format!("10.{i}.0.0"), 16, Some("10.244.1.254"))));
    let extras = DhcpExtras {
        boot_file_name: Some("pxelinux.0".into()),
        tftp_server_name: Some("tftp.example.org".into()),
        ntp_servers: vec![Ipv4Addr::new(10, 0, 0, 123)],
        private_options: vec![PrivateOption::new(240, "x".repeat(200)).unwrap()],
    };
    let cfg = DhcpConfig::from_facts(&f, "k6t-eth0", SERVER, &extras).unwrap();
    let (small, offer) = answer(&cfg, &discover());
    assert!(small.bytes.len() <= 576 - 28, "{} bytes", small.bytes.len());
    for essential in [
        C::SubnetMask,
        C::Router,
        C::DomainNameServer,
        C::InterfaceMtu,
        C::ClasslessStaticRoute,
    ] {
        assert!(
            offer.opts().get(essential).is_some(),
            "{essential:?} left out"
        );
    }
    let Some(O::ClasslessStaticRoute(r)) = offer.opts().get(C::ClasslessStaticRoute) else {
        unreachable!()
    };
    assert_eq!(r.len(), 32, "option 121 complete, not truncated");
    assert!(
        offer.opts().get(C::Unknown(240)).is_none(),
        "the private option goes first"
    );

    let mut big = discover();
    big.opts_mut().insert(O::MaxMessageSize(1500));
    let (large, offer) = answer(&cfg, &big);
    assert!(large.bytes.len() > 576 && large.bytes.len() <= 1450 - 28);
    let Some(O::DomainSearch(names)) = offer.opts().get(C::DomainSearch) else {
        panic!("no 119")
    };
    assert_eq!(names.len(), cfg.search.len());
    assert_eq!(
        offer
            .opts()
            .get(C::Unknown(240))
            .map(|o| matches!(o, O::Unknown(_))),
        Some(true)
    );
    assert_eq!(
        offer.opts().get(C::BootfileName),
        Some(&O::BootfileName(b"pxelinux.0".to_vec()))
    );
    assert_eq!(
        offer.opts().get(C::NtpServers),
        Some(&O::NtpServers(vec![Ipv4Addr::new(10, 0, 0, 123)]))
    );
}

#[test]
fn client_identifier_is_echoed() {
    let mut d = discover();
    d.opts_mut()
        .insert(O::ClientIdentifier(vec![1, 2, 0, 0, 0, 0xaa, 0xbb, 0xcc]));
    let (_, offer) = answer(&config(), &d);
    assert_eq!(
        offer.opts().get(C::ClientIdentifier),
        Some(&O::ClientIdentifier(vec![1, 2, 0, 0, 0, 0xaa, 0xbb, 0xcc]))
    );
}

/// A client identifier the reply must echo but that, with the message type, server
/// identifier and lease time, does not fit the client's 576 bytes is not answered (a
/// reply the client cannot take); with room (option 57) it is answered, echo and all.
/// Found by the fuzz target (three option 61s, concatenated per RFC 3396).
#[test]
fn a_client_identifier_too_long_to_echo_within_the_limit_gets_no_reply() {
    let id: Vec<u8> = (0..=255u8).chain(0..45).collect();
    let mut d = discover();
    d.opts_mut().insert(O::ClientIdentifier(id.clone()));
    assert_eq!(dropped(&config(), &wire(&d)), DropReason::ReplyTooLarge);
    d.opts_mut().insert(O::MaxMessageSize(1500));
    let (reply, offer) = answer(&config(), &d);
    assert!(reply.bytes.len() <= 1500 - 28, "{}", reply.bytes.len());
    assert_eq!(
        offer.opts().get(C::ClientIdentifier),
        Some(&O::ClientIdentifier(id))
    );
}
