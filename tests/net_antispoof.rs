//! Anti-spoofing on the tap, for real: a pod fixture rewired by `net setup`, a stand-in
//! VM attached to the tap (as QEMU is, with vnet headers) that sends forged frames, and
//! a capture (AF_PACKET) on the node end of the pod's veth, where anything the bridge
//! lets out arrives. Also: DHCP from the pod network never reaches the launcher's
//! server, re-applying keeps rules and counters, and teardown removes the table.

mod support;

use dhcproto::{Encodable, Encoder, v4};
use std::fs::File;
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use vmpod::net::antispoof::{DropKind, read_counters, table_name};
use vmpod::net::tap::VNET_HDR_LEN;
use vmpod::net::{self, Binding, IpCidr, MacAddr, NetOp, PlanOptions, SetupOptions};
use vmpod::sandbox::{NodeSpec, PodSandbox, PodSpec};

const FOREIGN_MAC: MacAddr = MacAddr([0x02, 0x66, 0x66, 0x66, 0x66, 0x66]);
const BROADCAST: [u8; 6] = [0xff; 6];

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap()
}

fn eth(dst: [u8; 6], src: MacAddr, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend(src.0);
    f.extend(ethertype.to_be_bytes());
    f.extend(payload);
    f
}

fn udp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let total = u16::try_from(20 + 8 + payload.len()).unwrap();
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend(src.octets());
    ip.extend(dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend(sport.to_be_bytes());
    ip.extend(dport.to_be_bytes());
    ip.extend((total - 20).to_be_bytes());
    ip.extend([0, 0]); // no UDP checksum
    ip.extend(payload);
    ip
}

/// An IPv6 UDP datagram with its checksum (IPv6 requires one).
fn udp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(8 + payload.len()).unwrap();
    let mut udp = sport.to_be_bytes().to_vec();
    udp.extend(dport.to_be_bytes());
    udp.extend(len.to_be_bytes());
    udp.extend([0, 0]);
    udp.extend(payload);
    let mut pseudo = src.octets().to_vec();
    pseudo.extend(dst.octets());
    pseudo.extend(u32::from(len).to_be_bytes());
    pseudo.extend([0, 0, 0, 17]);
    pseudo.extend(&udp);
    let c = match checksum(&pseudo) {
        0 => 0xffff,
        c => c,
    };
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend(len.to_be_bytes());
    ip.extend([17, 64]);
    ip.extend(src.octets());
    ip.extend(dst.octets());
    ip.extend(udp);
    ip
}

fn arp(sha: MacAddr, spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 0x08, 0, 6, 4, 0, 1];
    a.extend(sha.0);
    a.extend(spa.octets());
    a.extend([0; 6]);
    a.extend(tpa.octets());
    a
}

/// A VLAN tag (VLAN 5) in front of an IPv4 `packet`: the VM's own addresses inside, only
/// the tag is wrong.
fn vlan_tagged(packet: Vec<u8>) -> Vec<u8> {
    let mut vlan = vec![0x00, 0x05, 0x08, 0x00];
    vlan.extend(packet);
    vlan
}

/// A UDP-over-IPv6 packet from fd81::66, an address the VM does not have, to ff02::1.
fn foreign_ipv6() -> Vec<u8> {
    let mut ipv6 = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
    ipv6.extend("fd81::66".parse::<std::net::Ipv6Addr>().unwrap().octets());
    ipv6.extend("ff02::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    ipv6.extend(b"BAD-IPV6");
    ipv6
}

fn dhcp_discover(xid: u32, chaddr: MacAddr, giaddr: Ipv4Addr) -> Vec<u8> {
    let mut m = v4::Message::new_with_id(
        xid,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        giaddr,
        &chaddr.0,
    );
    m.set_flags(v4::Flags::default().set_broadcast());
    m.opts_mut()
        .insert(v4::DhcpOption::MessageType(v4::MessageType::Discover));
    let mut out = Vec::new();
    m.encode(&mut Encoder::new(&mut out)).unwrap();
    out
}

/// A DHCP reply (BOOTREPLY, udp 67 -> 68) in an Ethernet frame: its xid.
fn dhcp_reply_xid(frame: &[u8]) -> Option<u32> {
    let ip = frame.get(14..)?;
    let is_reply = frame.get(12..14)? == [0x08, 0x00]
        && ip.get(9) == Some(&17)
        && ip.get(20..24)? == [0, 67, 0, 68];
    let bootp = ip.get(28..)?;
    if !is_reply || bootp.first() != Some(&2) {
        return None;
    }
    Some(u32::from_be_bytes(bootp.get(4..8)?.try_into().ok()?))
}

/// An AF_PACKET socket on `link` in namespace `ns`, seeing every frame.
fn packet_socket(ns: &Path, link: &str) -> OwnedFd {
    let link = link.to_owned();
    net::netns::run_in(Some(ns), move || {
        let proto = u16::try_from(libc::ETH_P_ALL).unwrap().to_be();
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fd is a fresh socket we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let index = nix::net::if_::if_nametoindex(link.as_str()).expect("link index");
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = u16::try_from(libc::AF_PACKET).unwrap();
        sll.sll_protocol = proto;
        sll.sll_ifindex = i32::try_from(index).unwrap();
        // SAFETY: sll is a valid sockaddr_ll of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const sll).cast(),
                u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap(),
            )
        };
        assert_eq!(rc, 0, "bind to {link}: {}", std::io::Error::last_os_error());
        fd
    })
    .unwrap()
}

/// Frames readable on a non-blocking fd until `done` says so or `timeout` passes
/// (waiting in poll(2), not sleeping). Returns every frame read and whether `done` held.
fn read_until(
    fd: &impl AsRawFd,
    skip: usize,
    timeout: Duration,
    mut done: impl FnMut(&[u8]) -> bool,
) -> (Vec<Vec<u8>>, bool) {
    let deadline = Instant::now() + timeout;
    let mut frames = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if let Ok(n) = usize::try_from(n) {
            let frame = buf[skip.min(n)..n].to_vec();
            let hit = done(&frame);
            frames.push(frame);
            if hit {
                return (frames, true);
            }
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (frames, false);
        }
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(left.as_millis().min(1000)).unwrap();
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&raw mut p, 1, ms) };
    }
}

struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Fixture {
    pod: PodSandbox,
    state: tempfile::TempDir,
    binding: Binding,
    vm_mac: MacAddr,
    vm_ip: Ipv4Addr,
    /// The pod network's gateway (on the node).
    gateway: Ipv4Addr,
    /// Where the VM's frames go: the bridge's MAC (masquerade routes them), else broadcast.
    next_hop: [u8; 6],
}

impl Fixture {
    /// A pod on an isolated node, rewired for the bridge binding (the VM takes `ip`).
    fn new(base: &str, ip: &str, gw: &str) -> Fixture {
        Self::with_binding(base, ip, gw, Binding::Bridge)
    }

    fn with_binding(base: &str, ip: &str, gw: &str, binding: Binding) -> Fixture {
        let node = NodeSpec::isolated(vec![format!("{gw}/24").parse::<IpCidr>().unwrap()]);
        let pod = PodSpec::new(
            base,
            format!("{ip}/24").parse::<IpCidr>().unwrap(),
            gw.parse().unwrap(),
        );
        Self::from_specs(&node, &pod, binding)
    }

    /// The pod of `pod` on `node`, rewired for `binding`.
    fn from_specs(node: &NodeSpec, pod: &PodSpec, binding: Binding) -> Fixture {
        let std::net::IpAddr::V4(ip) = pod.ipv4.addr else {
            panic!("an IPv4 pod address: {}", pod.ipv4);
        };
        let f = Fixture {
            pod: PodSandbox::create(node, pod).unwrap(),
            state: tempfile::tempdir().unwrap(),
            binding,
            vm_mac: MacAddr([0; 6]),
            vm_ip: match binding {
                Binding::Bridge => ip,
                // The default VM network 10.0.2.0/24: the VM is .2.
                Binding::Masquerade => Ipv4Addr::new(10, 0, 2, 2),
            },
            gateway: pod.gateway4.expect("an IPv4 gateway"),
            next_hop: BROADCAST,
        };
        let out = net::setup(&f.opts()).unwrap();
        let bridge_mac = out.cached.applied.iter().find_map(|op| match op {
            NetOp::CreateBridge { mac, .. } => Some(mac.0),
            _ => None,
        });
        Fixture {
            vm_mac: out.cached.vm_mac(),
            next_hop: match binding {
                Binding::Bridge => BROADCAST,
                Binding::Masquerade => bridge_mac.expect("masquerade creates a bridge"),
            },
            ..f
        }
    }

    fn opts(&self) -> SetupOptions {
        SetupOptions {
            netns: Some(self.pod.netns_path().to_path_buf()),
            state_dir: self.state.path().to_path_buf(),
            resolv_conf: self.pod.resolv_conf_path(),
            hostname: Some(self.pod.hostname().to_owned()),
            binding: self.binding,
            plan: PlanOptions::default(),
            ..SetupOptions::new("eth0")
        }
    }

    fn ns(&self) -> &Path {
        self.pod.netns_path()
    }

    fn node_capture(&self) -> OwnedFd {
        packet_socket(
            self.pod.node_netns_path().expect("isolated node"),
            self.pod.node_veth(),
        )
    }

    /// The stand-in VM: the tap, attached as QEMU attaches it.
    fn vm(&self) -> File {
        let tap = vmpod::net::tap_name("eth0");
        let file = net::netns::run_in(Some(self.ns()), || {
            vmpod::net::tap::attach(&tap, false).expect("attach to the tap")
        })
        .unwrap();
        // Non-blocking: read_until polls with a deadline instead of waiting forever.
        // SAFETY: fcntl on a descriptor this File owns.
        unsafe {
            let fl = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(file.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        file
    }

    fn counters(&self) -> Vec<(DropKind, u64)> {
        let table = table_name("eth0");
        net::netns::run_in(Some(self.ns()), || read_counters(&table))
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|c| (c.kind, c.packets))
            .collect()
    }

    fn count(&self, kind: DropKind) -> u64 {
        self.counters()
            .into_iter()
            .find(|(k, _)| *k == kind)
            .unwrap()
            .1
    }

    /// Each counter has counted at least so many packets.
    fn assert_dropped(&self, want: &[(DropKind, u64)]) {
        let c = self.counters();
        for &(kind, n) in want {
            let got = c.iter().find(|(k, _)| *k == kind).unwrap().1;
            assert!(got >= n, "counter {kind}: {got} < {n} ({c:?})");
        }
    }

    /// Teardown removes the table.
    fn teardown_leaves_no_table(&self) {
        net::teardown(Some(self.ns()), self.state.path()).unwrap();
        let tables = self.nft(&["list", "tables"]);
        assert!(
            !tables.contains(&table_name("eth0")),
            "table left after teardown: {tables}"
        );
    }

    fn nft(&self, args: &[&str]) -> String {
        let out = self
            .pod
            .command("nft")
            .unwrap()
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nft {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

fn send(vm: &mut File, frame: &[u8]) {
    let mut buf = vec![0u8; VNET_HDR_LEN];
    buf.extend(frame);
    vm.write_all(&buf).expect("write to the tap");
}

fn has(frame: &[u8], needle: &[u8]) -> bool {
    frame.windows(needle.len()).any(|w| w == needle)
}

/// Send `forged` from the VM between correct frames (`correct(tag)`, the tag in the
/// payload) and return every frame the node saw up to the last correct one, none of them
/// carrying a `BAD-` payload. First a correct frame, again until the node sees it: a new
/// bridge port may not forward yet, and a forged frame lost to that would prove nothing.
/// The correct frame last: one tap's frames are handled in order, so once it is out, any
/// forged frame that got through is out before it.
fn forged_between_correct(
    vm: &mut File,
    capture: &OwnedFd,
    forged: &[Vec<u8>],
    correct: impl Fn(&str) -> Vec<u8>,
) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        send(vm, &correct("READY"));
        let (_, seen) = read_until(capture, 0, Duration::from_millis(300), |fr| {
            has(fr, b"READY")
        });
        if seen {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no frame from the tap reached the node end of the veth within 10 s"
        );
    }
    for frame in forged {
        send(vm, frame);
    }
    send(vm, &correct("GOOD"));
    let (frames, good) = read_until(capture, 0, Duration::from_secs(5), |fr| has(fr, b"GOOD"));
    assert!(
        good,
        "the correct frame did not reach the node end of the veth"
    );
    for frame in &frames {
        assert!(!has(frame, b"BAD-"), "a forged frame got out: {frame:02x?}");
    }
    frames
}

#[test]
fn forged_frames_from_the_vm_never_leave_the_bridge() {
    if !support::privileged("forged_frames_from_the_vm_never_leave_the_bridge") {
        return;
    }
    let f = Fixture::new("aspoof", "10.81.0.5", "10.81.0.1");
    let capture = f.node_capture();
    let mut vm = f.vm();
    let (mac, ip, gw) = (f.vm_mac, f.vm_ip, f.gateway);
    let marked = |tag: &str, src: Ipv4Addr| udp4(src, gw, 4000, 9, tag.as_bytes());
    let (vlan, ipv6) = (vlan_tagged(marked("BAD-VLAN", ip)), foreign_ipv6());
    let forged: Vec<(&str, Vec<u8>)> = vec![
        (
            "foreign MAC",
            eth(BROADCAST, FOREIGN_MAC, 0x0800, &marked("BAD-MAC", ip)),
        ),
        (
            "foreign IPv4",
            eth(
                BROADCAST,
                mac,
                0x0800,
                &marked("BAD-IP", Ipv4Addr::new(10, 81, 0, 99)),
            ),
        ),
        (
            "ARP claiming the gateway",
            eth(BROADCAST, mac, 0x0806, &arp(mac, gw, gw)),
        ),
        (
            "ARP with a foreign sender MAC",
            eth(BROADCAST, mac, 0x0806, &arp(FOREIGN_MAC, ip, gw)),
        ),
        (
            "DHCP with giaddr",
            eth(
                BROADCAST,
                mac,
                0x0800,
                &udp4(
                    Ipv4Addr::UNSPECIFIED,
                    Ipv4Addr::BROADCAST,
                    68,
                    67,
                    &dhcp_discover(0x5eed, mac, gw),
                ),
            ),
        ),
        ("VLAN-tagged", eth(BROADCAST, mac, 0x8100, &vlan)),
        ("foreign IPv6", eth(BROADCAST, mac, 0x86dd, &ipv6)),
    ];
    let forged: Vec<Vec<u8>> = forged.into_iter().map(|(_, f)| f).collect();
    let frames = forged_between_correct(&mut vm, &capture, &forged, |tag| {
        eth(BROADCAST, mac, 0x0800, &marked(tag, ip))
    });
    for frame in &frames {
        if frame.get(12..14) == Some(&[0x08, 0x06]) {
            let (sha, spa) = (frame.get(22..28), frame.get(28..32));
            assert!(
                !(sha == Some(&mac.0[..]) && spa == Some(&gw.octets()[..])),
                "an ARP from the VM claiming the gateway got out: {frame:02x?}"
            );
            assert!(
                sha != Some(&FOREIGN_MAC.0[..]),
                "an ARP with a foreign sender MAC got out: {frame:02x?}"
            );
        }
        assert!(
            !has(frame, &0x5eed_u32.to_be_bytes()),
            "the DHCP request crossed the bridge: {frame:02x?}"
        );
    }
    f.assert_dropped(&[
        (DropKind::Mac, 1),
        (DropKind::Ipv4, 1),
        (DropKind::Arp, 2),
        (DropKind::DhcpForward, 1),
        (DropKind::Ethertype, 1),
        (DropKind::Ipv6, 1),
    ]);

    // Re-applying converges: same rules, counters kept.
    let rules = f.nft(&["list", "table", "bridge", &table_name("eth0")]);
    let before = f.count(DropKind::Mac);
    net::setup(&f.opts()).unwrap();
    let shape = |listing: &str| -> Vec<String> {
        listing
            .lines()
            .filter(|l| !l.contains("packets"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        shape(&f.nft(&["list", "table", "bridge", &table_name("eth0")])),
        shape(&rules),
        "re-apply changed the rules"
    );
    assert_eq!(
        f.count(DropKind::Mac),
        before,
        "re-apply reset the counters"
    );

    drop(vm);
    f.teardown_leaves_no_table();
}

/// Masquerade: the VM's frames are routed by the pod and NATed out of `eth0`, so a forged
/// source would leave as the pod's address (a source in the VM network is masqueraded) or
/// as itself (any other). The tap has the bridge binding's rules with the VM's private
/// address and derived MAC: nothing forged reaches the node, each kind is counted, and
/// teardown removes the table.
#[test]
fn forged_frames_from_a_masqueraded_vm_never_leave_the_pod() {
    if !support::privileged("forged_frames_from_a_masqueraded_vm_never_leave_the_pod") {
        return;
    }
    let f = Fixture::with_binding("amasq", "10.81.2.5", "10.81.2.1", Binding::Masquerade);
    let capture = f.node_capture();
    let mut vm = f.vm();
    let (mac, ip, gw, to) = (f.vm_mac, f.vm_ip, f.gateway, f.next_hop);
    let marked = |tag: &str, src: Ipv4Addr| udp4(src, gw, 4000, 9, tag.as_bytes());
    let (vlan, ipv6) = (vlan_tagged(marked("BAD-VLAN", ip)), foreign_ipv6());
    let vm_gateway = Ipv4Addr::new(10, 0, 2, 1);
    let forged: Vec<Vec<u8>> = vec![
        eth(to, FOREIGN_MAC, 0x0800, &marked("BAD-MAC", ip)),
        // Another address of the VM network: masqueraded like the VM's own.
        eth(
            to,
            mac,
            0x0800,
            &marked("BAD-VMNET", Ipv4Addr::new(10, 0, 2, 99)),
        ),
        // Another pod's address: not NATed, it would leave as that pod.
        eth(
            to,
            mac,
            0x0800,
            &marked("BAD-POD", Ipv4Addr::new(10, 81, 2, 99)),
        ),
        eth(BROADCAST, mac, 0x0806, &arp(mac, vm_gateway, vm_gateway)),
        eth(BROADCAST, mac, 0x0806, &arp(FOREIGN_MAC, ip, vm_gateway)),
        eth(BROADCAST, mac, 0x8100, &vlan),
        eth(BROADCAST, mac, 0x86dd, &ipv6),
    ];
    // The correct datagrams reach the node NATed: the pod resolved the gateway and forwards.
    forged_between_correct(&mut vm, &capture, &forged, |tag| {
        eth(to, mac, 0x0800, &marked(tag, ip))
    });
    f.assert_dropped(&[
        (DropKind::Mac, 1),
        (DropKind::Ipv4, 2),
        (DropKind::Arp, 2),
        (DropKind::Ethertype, 1),
        (DropKind::Ipv6, 1),
    ]);
    drop(vm);
    f.teardown_leaves_no_table();
}

/// Masquerade in a dual-stack pod: the VM's private IPv6 address (`fd10:0:2::2`) leaves
/// the tap and, NAT66ed, the pod; another address of the VM's IPv6 network (it would be
/// masqueraded too) and the pod's own IPv6 address do not, each counted.
#[test]
fn a_masqueraded_vm_sends_ipv6_from_its_private_address_only() {
    if !support::privileged("a_masqueraded_vm_sends_ipv6_from_its_private_address_only") {
        return;
    }
    let node = NodeSpec::isolated(vec![
        "10.81.3.1/24".parse::<IpCidr>().unwrap(),
        "fd81:3::1/64".parse::<IpCidr>().unwrap(),
    ]);
    let mut pod = PodSpec::new(
        "amasq6",
        "10.81.3.5/24".parse::<IpCidr>().unwrap(),
        "10.81.3.1".parse().unwrap(),
    );
    pod.ipv6 = Some("fd81:3::5/64".parse::<IpCidr>().unwrap());
    pod.gateway6 = Some("fd81:3::1".parse().unwrap());
    let f = Fixture::from_specs(&node, &pod, Binding::Masquerade);
    let capture = f.node_capture();
    let mut vm = f.vm();
    let (mac, to) = (f.vm_mac, f.next_hop);
    let node_ip: Ipv6Addr = "fd81:3::1".parse().unwrap();
    let from = |tag: &str, src: &str| {
        let src: Ipv6Addr = src.parse().unwrap();
        eth(
            to,
            mac,
            0x86dd,
            &udp6(src, node_ip, 4000, 9, tag.as_bytes()),
        )
    };
    let forged = vec![
        from("BAD-VMNET6", "fd10:0:2::99"),
        from("BAD-POD6", "fd81:3::5"),
    ];
    let before = f.count(DropKind::Ipv6);
    let frames = forged_between_correct(&mut vm, &capture, &forged, |tag| from(tag, "fd10:0:2::2"));
    // The correct datagram left NAT66ed: from the pod's IPv6 address.
    let pod_ip: Ipv6Addr = "fd81:3::5".parse().unwrap();
    let good = frames.iter().find(|fr| has(fr, b"GOOD")).unwrap();
    assert_eq!(&good[12..14], &[0x86, 0xdd], "{good:02x?}");
    assert_eq!(
        &good[22..38],
        &pod_ip.octets(),
        "source after NAT66: {good:02x?}"
    );
    assert!(f.count(DropKind::Ipv6) >= before + 2, "{:?}", f.counters());
    drop(vm);
    f.teardown_leaves_no_table();
}

#[test]
fn dhcp_from_the_pod_network_gets_no_answer_from_the_launcher() {
    if !support::privileged("dhcp_from_the_pod_network_gets_no_answer_from_the_launcher") {
        return;
    }
    let f = Fixture::new("adhcp", "10.81.1.5", "10.81.1.1");
    let launcher = support::launcher::launcher_bin();
    let serve = f
        .pod
        .command(&launcher)
        .unwrap()
        .args(["dhcp", "serve", "--state-dir"])
        .arg(f.state.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _serve = Reap(serve);
    let node_ns = f.pod.node_netns_path().unwrap().to_path_buf();
    let node = f.node_capture();
    let mut vm = f.vm();
    let discover = |xid: u32, src: MacAddr| {
        eth(
            BROADCAST,
            src,
            0x0800,
            &udp4(
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::BROADCAST,
                68,
                67,
                &dhcp_discover(xid, f.vm_mac, Ipv4Addr::UNSPECIFIED),
            ),
        )
    };
    // The server is up once the VM's own DISCOVER gets an OFFER (retried: it may still
    // be binding).
    let mut up = false;
    for _ in 0..20 {
        send(&mut vm, &discover(0x1001, f.vm_mac));
        let (_, got) = read_until(&vm, VNET_HDR_LEN, Duration::from_millis(500), |fr| {
            dhcp_reply_xid(fr) == Some(0x1001)
        });
        if got {
            up = true;
            break;
        }
    }
    assert!(up, "the launcher's DHCP server never answered the VM");
    assert!(
        f.count(DropKind::DhcpOutput) > 0,
        "the OFFER broadcast was not kept off eth0"
    );
    let before = f.count(DropKind::DhcpInput);
    // A host on the pod network asks for the VM's lease (the VM's MAC as chaddr).
    let node_veth = f.pod.node_veth().to_owned();
    net::netns::run_in(Some(&node_ns), || {
        let frame = discover(0x2002, FOREIGN_MAC);
        let index = nix::net::if_::if_nametoindex(node_veth.as_str()).unwrap();
        // SAFETY: sockaddr_ll is plain data.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = u16::try_from(libc::AF_PACKET).unwrap();
        sll.sll_ifindex = i32::try_from(index).unwrap();
        sll.sll_halen = 6;
        // SAFETY: frame and sll are valid for the sizes passed.
        let n = unsafe {
            libc::sendto(
                node.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const sll).cast(),
                u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap(),
            )
        };
        assert_eq!(
            usize::try_from(n).ok(),
            Some(frame.len()),
            "send on the node veth"
        );
    })
    .unwrap();
    // The server answers in order: once the VM's next DISCOVER is answered, an answer to
    // the pod network's would have come before it.
    send(&mut vm, &discover(0x3003, f.vm_mac));
    let (on_tap, got) = read_until(&vm, VNET_HDR_LEN, Duration::from_secs(5), |fr| {
        dhcp_reply_xid(fr) == Some(0x3003)
    });
    assert!(got, "no OFFER for the VM's second DISCOVER");
    assert!(
        !on_tap.iter().any(|fr| dhcp_reply_xid(fr) == Some(0x2002)),
        "the server answered a DISCOVER from the pod network"
    );
    let (on_node, _) = read_until(&node, 0, Duration::ZERO, |_| false);
    assert!(
        !on_node.iter().any(|fr| dhcp_reply_xid(fr).is_some()),
        "a DHCP reply went out to the pod network"
    );
    assert!(
        f.count(DropKind::DhcpInput) > before,
        "the pod network's DISCOVER was not dropped at the bridge's input"
    );
}
