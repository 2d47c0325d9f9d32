//! The DHCP server on the bridge `net setup` built in a pod, probed by `vmpodctl dhcp
//! probe` from the VM's side: exact answers for the VM's MAC, silence for others; and
//! hand-built requests from the VM's side for what the probe does not send (RELEASE,
//! DECLINE, INFORM, option 57), checked on the wire and in the server's counters.

mod dhcp_fixture;
mod support;

use dhcp_fixture::*;
use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode};
use dhcproto::{Encodable, Encoder};
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};
use vmpod::dhcp::DhcpStats;
use vmpod::dhcp::stats::LeaseState;

/// A privileged test's topology with a plain subnet; `None` where
/// [`support::privileged_test`] skips the test.
fn privileged_subnet(tag: &str) -> Option<Topology> {
    support::privileged_test().then(|| Topology::new(tag, Shape::Subnet))
}

fn vmpodctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vmpodctl"))
}

#[test]
fn probe_sees_every_option_and_another_mac_gets_no_answer() {
    let Some(t) = privileged_subnet("probe") else {
        return;
    };
    let server = start_server(&t, t.config());

    let probe = |extra: &[&str]| {
        vmpodctl()
            .args(["dhcp", "probe", "--interface", VM_IF, "--netns", &t.vm_ns])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = probe(&["--json"]);
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
    let out = probe(&[]);
    let human = text(&out);
    assert!(
        out.status.success()
            && human.contains("OFFER from 169.254.75.10:67 in")
            && human.contains("classless-static-routes"),
        "{human}"
    );

    // Another MAC: no answer at all, and the server counts it.
    let out = probe(&["--mac", "02:00:00:00:00:99", "--timeout", "1"]);
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

/// The VM's side of the wire, without a DHCP client program: a UDP socket on the VM's
/// `eth0` port 68 that sends hand-built requests and reads the server's replies.
struct VmWire {
    socket: std::net::UdpSocket,
    mac: vmpod::net::MacAddr,
}

impl VmWire {
    fn open(t: &Topology) -> VmWire {
        let socket = vmpod::net::netns::run_in(Some(&t.vm_path()), || {
            vmpod::dhcp::socket::udp_on_device(VM_IF, 68)
        })
        .unwrap()
        .unwrap();
        socket.set_nonblocking(false).unwrap();
        VmWire {
            socket,
            mac: t.vm_mac,
        }
    }

    fn request(&self, xid: u32, kind: MessageType) -> Message {
        vmpod::dhcp::v4::client_message(self.mac, xid, kind)
    }

    fn send(&self, msg: &Message) {
        let mut out = Vec::new();
        msg.encode(&mut Encoder::new(&mut out)).unwrap();
        self.socket
            .send_to(&out, (Ipv4Addr::BROADCAST, 67))
            .unwrap();
    }

    /// The next reply, which must answer `xid` (a reply to an earlier request that
    /// should have gone unanswered fails here), with its size on the wire.
    fn reply_to(&self, xid: u32) -> (Message, usize) {
        let mut buf = vec![0u8; 65536];
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no reply to xid {xid:#x} within 10 s");
            self.socket.set_read_timeout(Some(left)).unwrap();
            let n = match self.socket.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
                Err(e) => panic!("receiving on the VM's {VM_IF}: {e}"),
            };
            // Our own broadcasts come back on this socket: skip requests.
            let Some(msg) = vmpod::dhcp::v4::decode(&buf[..n]) else {
                continue;
            };
            if msg.opcode() != Opcode::BootReply {
                continue;
            }
            assert_eq!(
                msg.xid(),
                xid,
                "a reply to another request ({:?})",
                msg.opts().msg_type()
            );
            return (msg, n);
        }
    }

    /// Send `msg` and return the reply to it.
    fn exchange(&self, msg: &Message) -> (Message, usize) {
        self.send(msg);
        self.reply_to(msg.xid())
    }
}

/// Wait until the server's counters satisfy `done`; fails with them after 10 s.
fn wait_stats(server: &RunningServer, what: &str, done: impl Fn(&DhcpStats) -> bool) -> DhcpStats {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = server.stats.snapshot();
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: not within 10 s: {s:#?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn codes(msg: &Message) -> Vec<u8> {
    msg.opts().iter().map(|(c, _)| u8::from(*c)).collect()
}

/// RELEASE, DECLINE and INFORM through the server's socket: RELEASE and DECLINE get no
/// answer and move the lease (counted), the address is offered again afterwards, and
/// INFORM gets an ACK without lease data sent to the client's own address.
#[test]
fn release_decline_and_inform_through_the_socket_are_counted() {
    let Some(t) = privileged_subnet("rdi") else {
        return;
    };
    let server = start_server(&t, t.config());
    let vm = VmWire::open(&t);
    let ip: Ipv4Addr = "10.244.7.23".parse().unwrap();
    let server_id: Ipv4Addr = "169.254.75.10".parse().unwrap();
    let lease = |xid| {
        let (offer, _) = vm.exchange(&vm.request(xid, MessageType::Discover));
        assert_eq!(
            (offer.opts().msg_type(), offer.yiaddr()),
            (Some(MessageType::Offer), ip)
        );
        let mut request = vm.request(xid, MessageType::Request);
        request
            .opts_mut()
            .insert(DhcpOption::RequestedIpAddress(ip));
        request
            .opts_mut()
            .insert(DhcpOption::ServerIdentifier(server_id));
        let (ack, _) = vm.exchange(&request);
        assert_eq!(
            (ack.opts().msg_type(), ack.yiaddr()),
            (Some(MessageType::Ack), ip)
        );
    };

    lease(1);
    wait_stats(&server, "bound", |s| s.lease.state == LeaseState::Bound);

    // RELEASE from the bound client: no answer, lease Released.
    let mut release = vm.request(2, MessageType::Release);
    release.set_ciaddr(ip).set_flags(Flags::default());
    release
        .opts_mut()
        .insert(DhcpOption::ServerIdentifier(server_id));
    vm.send(&release);
    let s = wait_stats(&server, "RELEASE counted", |s| s.requests.release == 1);
    assert_eq!(s.lease.state, LeaseState::Released);
    // Offered and acknowledged again (a reply to the RELEASE would fail `reply_to` here).
    lease(3);
    wait_stats(&server, "bound again", |s| {
        s.lease.state == LeaseState::Bound && s.replies.ack == 2
    });

    // DECLINE: the address is in use elsewhere. No answer, lease Declined.
    let mut decline = vm.request(4, MessageType::Decline);
    decline
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress(ip));
    decline
        .opts_mut()
        .insert(DhcpOption::ServerIdentifier(server_id));
    vm.send(&decline);
    let s = wait_stats(&server, "DECLINE counted", |s| s.requests.decline == 1);
    assert_eq!(s.lease.state, LeaseState::Declined);

    // INFORM from a client that configured the address itself: an ACK unicast to it,
    // configuration without lease data, and the lease state untouched.
    let out = t
        .in_vm("ip")
        .args(["addr", "add", "10.244.7.23/24", "dev", VM_IF])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let mut inform = vm.request(5, MessageType::Inform);
    inform.set_ciaddr(ip).set_flags(Flags::default());
    let (ack, _) = vm.exchange(&inform);
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!((ack.yiaddr(), ack.ciaddr()), (Ipv4Addr::UNSPECIFIED, ip));
    let got = codes(&ack);
    assert!(
        got.contains(&1) && got.contains(&3) && got.contains(&6),
        "{got:?}"
    );
    for lease_option in [51, 58, 59] {
        assert!(
            !got.contains(&lease_option),
            "option {lease_option} in an INFORM ACK: {got:?}"
        );
    }

    let s = wait_stats(&server, "INFORM answered", |s| s.replies.ack == 3);
    assert_eq!(
        (
            s.requests.discover,
            s.requests.request,
            s.requests.release,
            s.requests.decline
        ),
        (2, 2, 1, 1)
    );
    assert_eq!((s.replies.offer, s.replies.ack, s.replies.nak), (2, 3, 0));
    assert_eq!(
        s.lease.state,
        LeaseState::Declined,
        "INFORM changes no lease"
    );
    assert_eq!(s.replies.send_errors, 0);
    let last = s.last_client.unwrap();
    assert_eq!((last.seen.xid, last.answered), (5, true));
}

/// The client's maximum message size (option 57) through the socket, with a reply that
/// needs more than 576 bytes: no option 57 and a value below 576 both get at most 576
/// (IP datagram); a value between 576 and the MTU gets more, within it; a value above
/// the MTU (1400) gets everything, within the MTU. Options left out are whole ones,
/// the least important (the private options) first.
#[test]
fn replies_fit_the_clients_max_message_size_between_576_and_the_mtu() {
    let Some(t) = privileged_subnet("mms") else {
        return;
    };
    let extras = vmpod::dhcp::DhcpExtras {
        private_options: (224..230)
            .map(|option| {
                // 120 bytes each
                vmpod::dhcp::config::PrivateOption::new(option, format!("{option}").repeat(40))
                    .unwrap()
            })
            .collect(),
        ..Default::default()
    };
    let server = start_server(
        &t,
        vmpod::dhcp::DhcpConfig::for_cached(&t.cached, &extras).unwrap(),
    );
    let vm = VmWire::open(&t);
    let offer = |xid: u32, mms: Option<u16>| {
        let mut discover = vm.request(xid, MessageType::Discover);
        if let Some(n) = mms {
            discover.opts_mut().insert(DhcpOption::MaxMessageSize(n));
        }
        let (offer, size) = vm.exchange(&discover);
        assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
        let private = codes(&offer)
            .iter()
            .filter(|c| (224..230).contains(*c))
            .count();
        (size, codes(&offer), private)
    };
    // IP + UDP headers are counted in option 57 and the MTU, not in what we receive.
    let payload = |datagram: usize| datagram - 28;

    let (default_size, default_codes, default_private) = offer(1, None);
    assert!(
        default_size <= payload(576),
        "{default_size} bytes without option 57"
    );
    for must in [1, 3, 6, 26, 51, 53, 54, 121] {
        assert!(
            default_codes.contains(&must),
            "option {must} left out: {default_codes:?}"
        );
    }
    assert!(
        default_private < 6,
        "all private options fit in 576? {default_codes:?}"
    );

    let (small_size, small_codes, _) = offer(2, Some(400));
    assert!(
        small_size <= payload(576),
        "option 57 = 400: {small_size} bytes"
    );
    assert_eq!(small_codes, default_codes, "below 576 counts as 576");

    let (mid_size, _, mid_private) = offer(3, Some(1000));
    assert!(
        mid_size > payload(576) && mid_size <= payload(1000),
        "option 57 = 1000: {mid_size} bytes"
    );
    assert!(
        mid_private > default_private && mid_private < 6,
        "{mid_private}"
    );

    let (big_size, big_codes, big_private) = offer(4, Some(9000));
    assert!(
        big_size <= payload(1400),
        "option 57 above the MTU: {big_size} bytes"
    );
    assert_eq!(big_private, 6, "everything fits the MTU: {big_codes:?}");

    // The server counts a reply after sending it.
    let s = wait_stats(&server, "4 OFFERs counted", |s| s.replies.offer == 4);
    assert_eq!((s.requests.discover, s.replies.send_errors), (4, 0));
}
