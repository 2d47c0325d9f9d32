//! The DHCPv6 core, message by message.

use super::*;
use crate::net::MacAddr;

const VM_MAC: &str = "52:54:00:12:34:56";

fn vm_mac() -> MacAddr {
    VM_MAC.parse().unwrap()
}

fn config() -> DhcpV6Config {
    let facts = crate::dhcp::v4::tests::facts();
    DhcpV6Config::from_facts(
        &facts,
        "k6t-eth0",
        "02:00:00:00:00:01".parse().unwrap(),
        vm_mac(),
    )
    .unwrap()
}

fn vm_ll() -> Ipv6Addr {
    eui64_link_local(vm_mac())
}

/// A message from the VM with DUID-LL and one IA_NA (IAID 7) naming `addrs`.
fn message(t: MessageType, server: Option<Vec<u8>>, addrs: &[Ipv6Addr]) -> Message {
    let mut m = Message::new_with_id(t, [1, 2, 3]);
    let o = m.opts_mut();
    o.insert(DhcpOption::ClientId(duid_ll(vm_mac())));
    if let Some(s) = server {
        o.insert(DhcpOption::ServerId(s));
    }
    let mut ia = DhcpOptions::new();
    for a in addrs {
        ia.insert(DhcpOption::IAAddr(IAAddr {
            addr: *a,
            preferred_life: 0,
            valid_life: 0,
            opts: DhcpOptions::new(),
        }));
    }
    o.insert(DhcpOption::IANA(IANA {
        id: 7,
        t1: 0,
        t2: 0,
        opts: ia,
    }));
    m
}

fn bytes(m: &Message) -> Vec<u8> {
    let mut b = Vec::new();
    m.encode(&mut Encoder::new(&mut b)).unwrap();
    b
}

/// Handle `m` from `source` and decode the reply, or return the drop reason.
fn run(m: &Message, source: Ipv6Addr) -> Result<(Message, Option<LeaseEvent>), DropReason> {
    match handle(&config(), source, &bytes(m)).decision {
        Decision::Reply(r, ev) => {
            let msg = Message::decode(&mut Decoder::new(&r.bytes)).unwrap();
            assert_eq!(
                (r.kind == ReplyKind::Advertise),
                (msg.msg_type() == MessageType::Advertise)
            );
            Ok((msg, ev))
        }
        Decision::Drop(d) => Err(d),
    }
}

fn ours() -> Option<Vec<u8>> {
    Some(config().server_duid())
}

/// The address of IA_NA 7 in a reply, with its preferred and valid lifetimes, and T1/T2.
fn ia_addresses(m: &Message) -> (Vec<(Ipv6Addr, u32, u32)>, u32, u32) {
    let Some(DhcpOption::IANA(ia)) = m.opts().get(OptionCode::IANA) else {
        panic!("no IA_NA in {m:?}")
    };
    assert_eq!(ia.id, 7);
    let addrs = ia
        .opts
        .iter()
        .filter_map(|o| match o {
            DhcpOption::IAAddr(a) => Some((a.addr, a.preferred_life, a.valid_life)),
            _ => None,
        })
        .collect();
    (addrs, ia.t1, ia.t2)
}

fn status_of(m: &Message) -> Option<Status> {
    match m.opts().get(OptionCode::StatusCode) {
        Some(DhcpOption::StatusCode(s)) => Some(s.status),
        _ => None,
    }
}

fn pod_v6() -> Ipv6Addr {
    "fd00::5".parse().unwrap()
}

#[test]
fn config_takes_the_pods_ipv6_facts() {
    let c = config();
    assert_eq!((c.address, c.prefix), (pod_v6(), 64));
    assert_eq!(c.dns, ["fd00::10".parse::<Ipv6Addr>().unwrap()]);
    assert_eq!(c.search[0], "default.svc.cluster.local");
    assert_eq!(c.server_duid(), [0, 3, 0, 1, 2, 0, 0, 0, 0, 1]);
    let mut v4_only = crate::dhcp::v4::tests::facts();
    v4_only.addresses.retain(|a| a.addr.is_ipv4());
    let e = DhcpV6Config::from_facts(&v4_only, "k6t-eth0", vm_mac(), vm_mac()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "interface eth0: no global IPv6 address to serve by DHCPv6"
    );
}

#[test]
fn solicit_gets_an_advertise_with_the_address_dns_and_search() {
    let (m, ev) = run(&message(MessageType::Solicit, None, &[]), vm_ll()).unwrap();
    assert_eq!(m.msg_type(), MessageType::Advertise);
    assert_eq!(m.xid(), [1, 2, 3]);
    assert_eq!(ev, Some(LeaseEvent::Offered));
    let lease = DEFAULT_LEASE;
    assert_eq!(
        ia_addresses(&m),
        (vec![(pod_v6(), lease, lease)], lease / 2, lease / 5 * 4)
    );
    assert_eq!(
        m.opts().get(OptionCode::ServerId),
        Some(&DhcpOption::ServerId(config().server_duid()))
    );
    assert_eq!(
        m.opts().get(OptionCode::ClientId),
        Some(&DhcpOption::ClientId(duid_ll(vm_mac())))
    );
    assert_eq!(
        m.opts().get(OptionCode::Preference),
        Some(&DhcpOption::Preference(255))
    );
    assert_eq!(
        m.opts().get(OptionCode::DomainNameServers),
        Some(&DhcpOption::DomainNameServers(vec![
            "fd00::10".parse().unwrap()
        ]))
    );
    let Some(DhcpOption::DomainSearchList(names)) = m.opts().get(OptionCode::DomainSearchList)
    else {
        panic!("no search list")
    };
    let names: Vec<String> = names.iter().map(|n| n.to_ascii()).collect();
    assert_eq!(
        names,
        [
            "default.svc.cluster.local.",
            "svc.cluster.local.",
            "cluster.local."
        ]
    );
}

const DEFAULT_LEASE: u32 = crate::dhcp::DEFAULT_LEASE_SECS;

#[test]
fn rapid_commit_solicit_is_bound_by_a_reply() {
    let mut s = message(MessageType::Solicit, None, &[]);
    s.opts_mut().insert(DhcpOption::RapidCommit);
    let (m, ev) = run(&s, vm_ll()).unwrap();
    assert_eq!(m.msg_type(), MessageType::Reply);
    assert_eq!(ev, Some(LeaseEvent::Bound));
    assert!(m.opts().get(OptionCode::RapidCommit).is_some());
    assert_eq!(ia_addresses(&m).0[0].0, pod_v6());
}

#[test]
fn request_renew_rebind_bind_and_drop_a_stale_address() {
    let stale: Ipv6Addr = "fd00::99".parse().unwrap();
    for (t, server) in [
        (MessageType::Request, ours()),
        (MessageType::Renew, ours()),
        (MessageType::Rebind, None),
    ] {
        let (m, ev) = run(&message(t, server, &[pod_v6(), stale]), vm_ll()).unwrap();
        assert_eq!(
            (m.msg_type(), ev),
            (MessageType::Reply, Some(LeaseEvent::Bound))
        );
        let lease = DEFAULT_LEASE;
        // DhcpOptions keeps options sorted: the stale address (0 lifetimes) may come first.
        let mut got = ia_addresses(&m).0;
        got.sort();
        assert_eq!(got, [(pod_v6(), lease, lease), (stale, 0, 0)], "{t:?}");
    }
}

#[test]
fn server_identifier_rules() {
    let other = Some(duid_ll("02:99:99:99:99:99".parse().unwrap()));
    for (t, server, why) in [
        (MessageType::Request, other.clone(), DropReason::NotForUs),
        (MessageType::Request, None, DropReason::NotForUs),
        (MessageType::Renew, other.clone(), DropReason::NotForUs),
        (MessageType::Release, None, DropReason::NotForUs),
        (MessageType::Solicit, ours(), DropReason::UnexpectedServerId),
        (MessageType::Rebind, ours(), DropReason::UnexpectedServerId),
        (MessageType::Confirm, ours(), DropReason::UnexpectedServerId),
        (MessageType::InformationRequest, other, DropReason::NotForUs),
    ] {
        assert_eq!(
            run(&message(t, server, &[pod_v6()]), vm_ll()).unwrap_err(),
            why,
            "{t:?}"
        );
    }
}

#[test]
fn confirm_says_on_link_or_not() {
    let (m, _) = run(&message(MessageType::Confirm, None, &[pod_v6()]), vm_ll()).unwrap();
    assert_eq!(status_of(&m), Some(Status::Success));
    let elsewhere: Ipv6Addr = "fd99::5".parse().unwrap();
    let (m, _) = run(&message(MessageType::Confirm, None, &[elsewhere]), vm_ll()).unwrap();
    assert_eq!(status_of(&m), Some(Status::NotOnLink));
    assert_eq!(
        run(&message(MessageType::Confirm, None, &[]), vm_ll()).unwrap_err(),
        DropReason::ConfirmWithoutAddress
    );
}

#[test]
fn release_and_decline_are_acknowledged_and_reported() {
    for (t, ev) in [
        (MessageType::Release, LeaseEvent::Released),
        (MessageType::Decline, LeaseEvent::Declined),
    ] {
        let (m, got) = run(&message(t, ours(), &[pod_v6()]), vm_ll()).unwrap();
        assert_eq!((status_of(&m), got), (Some(Status::Success), Some(ev)));
        assert!(m.opts().get(OptionCode::IANA).is_none());
    }
}

#[test]
fn information_request_gets_dns_without_an_address() {
    let mut m = Message::new_with_id(MessageType::InformationRequest, [9, 9, 9]);
    let (r, ev) = run(&m, vm_ll()).unwrap();
    assert_eq!(ev, None);
    assert!(r.opts().get(OptionCode::IANA).is_none());
    assert!(r.opts().get(OptionCode::DomainNameServers).is_some());
    // Without a Client Identifier, only the VM's link-local source is answered.
    assert_eq!(
        run(&m, "fe80::1".parse().unwrap()).unwrap_err(),
        DropReason::NoClientId
    );
    m.opts_mut().insert(DhcpOption::ClientId(duid_ll(vm_mac())));
    assert!(run(&m, "fe80::1".parse().unwrap()).is_ok());
}

#[test]
fn only_the_vm_is_answered() {
    let foreign: MacAddr = "52:54:00:aa:bb:cc".parse().unwrap();
    // A DUID-LL or DUID-LLT of another MAC: foreign, wherever it comes from.
    let mut m = message(MessageType::Solicit, None, &[]);
    m.opts_mut().remove(OptionCode::ClientId);
    m.opts_mut().insert(DhcpOption::ClientId(duid_ll(foreign)));
    assert_eq!(run(&m, vm_ll()).unwrap_err(), DropReason::ForeignClient);
    let mut llt = vec![0, 1, 0, 1, 0x2a, 0, 0, 1];
    llt.extend_from_slice(&foreign.0);
    m.opts_mut().remove(OptionCode::ClientId);
    m.opts_mut().insert(DhcpOption::ClientId(llt.clone()));
    assert_eq!(run(&m, vm_ll()).unwrap_err(), DropReason::ForeignClient);
    // The VM's own DUID-LLT is answered.
    llt[8..].copy_from_slice(&vm_mac().0);
    m.opts_mut().remove(OptionCode::ClientId);
    m.opts_mut().insert(DhcpOption::ClientId(llt));
    assert!(run(&m, "fe80::1".parse().unwrap()).is_ok());
    // A DUID without a MAC (UUID, type 4): only from the VM's link-local address.
    m.opts_mut().remove(OptionCode::ClientId);
    m.opts_mut()
        .insert(DhcpOption::ClientId(vec![0, 4, 1, 2, 3, 4, 5, 6, 7, 8]));
    assert!(run(&m, vm_ll()).is_ok());
    assert_eq!(
        run(&m, eui64_link_local(foreign)).unwrap_err(),
        DropReason::ForeignClient
    );
    // No Client Identifier at all.
    m.opts_mut().remove(OptionCode::ClientId);
    assert_eq!(run(&m, vm_ll()).unwrap_err(), DropReason::NoClientId);
}

#[test]
fn garbage_and_server_messages_are_dropped_not_panics() {
    for junk in [&[][..], &[1][..], &[1, 2, 3, 4, 0, 1, 0, 200, 0][..]] {
        let h = handle(&config(), vm_ll(), junk);
        assert!(matches!(h.decision, Decision::Drop(_)), "{junk:?}");
    }
    for t in [
        MessageType::Advertise,
        MessageType::Reply,
        MessageType::RelayForw,
    ] {
        assert_eq!(
            run(&message(t, None, &[]), vm_ll()).unwrap_err(),
            DropReason::UnsupportedType
        );
    }
}

#[test]
fn no_ia_na_gets_no_addrs_avail() {
    let mut m = message(MessageType::Solicit, None, &[]);
    m.opts_mut().remove(OptionCode::IANA);
    let (r, _) = run(&m, vm_ll()).unwrap();
    assert_eq!(status_of(&r), Some(Status::NoAddrsAvail));
}

#[test]
fn stats_count_and_follow_the_lease() {
    let c = config();
    let mut s = server::DhcpV6Stats::new(&c);
    let solicit = bytes(&message(MessageType::Solicit, None, &[]));
    s.record(&handle(&c, vm_ll(), &solicit), 10);
    assert_eq!(s.lease.state, crate::dhcp::stats::LeaseState::Offered);
    let request = bytes(&message(MessageType::Request, ours(), &[pod_v6()]));
    s.record(&handle(&c, vm_ll(), &request), 11);
    s.record(&handle(&c, vm_ll(), &[0]), 12);
    assert_eq!(s.lease.state, crate::dhcp::stats::LeaseState::Bound);
    assert_eq!(s.lease.bound_at, Some(11));
    assert_eq!(
        s.lease.duid.as_deref(),
        Some("00:03:00:01:52:54:00:12:34:56")
    );
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["requests"]["solicit"], 1);
    assert_eq!(json["requests"]["request"], 1);
    assert_eq!(json["replies"]["advertise"], 1);
    assert_eq!(json["replies"]["reply"], 1);
    assert_eq!(json["drops"]["malformed"], 1);
}
