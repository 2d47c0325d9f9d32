//! Real DHCP clients against our server, after `net setup` rewired a pod (the VM side is
//! a veth on the pod's bridge in place of the tap, with the VM's MAC): busybox
//! udhcpc, ISC dhclient and dhcpcd must each get the exact address, prefix, router,
//! DNS, search list, MTU and routes (a non-default pod route included), for a pod on a
//! subnet and for Calico's /32 with the link-local gateway 169.254.1.1.
//!
//! udhcpc is checked on what it decoded (the environment its script receives);
//! dhclient (with Debian's dhclient-script) and dhcpcd configure the VM side's
//! kernel, which is then read back. Client scripts run under `ip netns exec`, with
//! `/etc/netns/<ns>/` files overlaying `/etc`, so nothing touches the host's files.

mod dhcp_fixture;
mod support;

use dhcp_fixture::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

/// A client script that records what the client hands it: one env file per event,
/// written into `dir` (dhcpcd runs scripts with a clean environment).
fn record_script(dir: &Path) -> PathBuf {
    write_script(
        dir,
        "record.sh",
        &format!(
            "#!/bin/sh\nevent=\"${{reason:-$1}}\"\nenv | sort > \"{}/$event.env\"\n",
            dir.display()
        ),
    )
}

fn write_script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// Kills a client left running (dhclient -d, dhcpcd -B) when the test ends.
struct Reap(Child);
impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Clone, Copy)]
enum Pod {
    Subnet,
    Calico,
}

struct Expect {
    address: &'static str,
    routes: &'static [&'static str],
    mtu: u64,
    dns: &'static str,
    search: &'static str,
}

fn expected(pod: Pod) -> Expect {
    match pod {
        Pod::Subnet => Expect {
            address: "10.244.7.23/24",
            routes: &[
                "default via 10.244.7.1",
                "10.96.0.0/12 via 10.244.7.254",
                "10.244.7.0/24",
            ],
            mtu: 1400,
            dns: "10.96.0.10 10.96.0.11",
            search: "default.svc.cluster.local svc.cluster.local cluster.local",
        },
        Pod::Calico => Expect {
            address: "10.88.3.4/32",
            routes: &["default via 169.254.1.1", "169.254.1.1"],
            mtu: 1450,
            dns: "10.96.0.10",
            search: "ns1.svc.cluster.local",
        },
    }
}

fn setup(tag: &str, pod: Pod) -> (Topology, RunningServer, tempfile::TempDir) {
    let t = Topology::new(
        tag,
        match pod {
            Pod::Subnet => Shape::Subnet,
            Pod::Calico => Shape::Calico,
        },
    );
    let server = start_server(&t, t.config());
    let dir = tempfile::tempdir().unwrap();
    (t, server, dir)
}

/// Where a client puts option 26: on the link (dhclient) or on each route (dhcpcd 9).
#[derive(Clone, Copy, PartialEq)]
enum MtuOn {
    Link,
    Routes,
}

fn assert_kernel(t: &Topology, e: &Expect, who: &str, mtu_on: MtuOn) {
    // The default route must work, not just exist: a ping to an address only the node
    // holds goes through the pod's gateway, across the VM bridge and the pod's eth0.
    assert!(
        t.vm_pings(BEYOND_GATEWAY),
        "{who}: no answer through the default route ({:?})",
        t.vm_routes()
    );
    assert_eq!(t.vm_addresses(), [e.address], "{who}: address");
    let mut routes = t.vm_routes();
    routes.sort();
    let mut want: Vec<String> = e.routes.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(routes, want, "{who}: routes");
    match mtu_on {
        MtuOn::Link => assert_eq!(t.vm_mtu(), e.mtu, "{who}: link MTU"),
        MtuOn::Routes => {
            for (dst, mtu) in t.vm_route_mtus() {
                assert_eq!(mtu, Some(e.mtu), "{who}: MTU of the route to {dst}");
            }
        }
    }
}

fn udhcpc(pod: Pod) {
    let (t, server, dir) = setup("udhcpc", pod);
    let script = record_script(dir.path());
    let out = t
        .in_vm("busybox")
        .args([
            "udhcpc", "-i", VM_IF, "-f", "-q", "-n", "-t", "5", "-T", "1",
        ])
        .args(["-O", "search", "-O", "staticroutes", "-O", "mtu", "-s"])
        .arg(&script)
        .output()
        .unwrap();
    assert!(out.status.success(), "udhcpc: {}", text(&out));
    let env = read_env(&dir.path().join("bound.env"));
    let e = expected(pod);
    let (ip, prefix) = e.address.split_once('/').unwrap();
    assert_eq!(env.get("ip").map(String::as_str), Some(ip), "{env:?}");
    assert_eq!(env.get("mask").map(String::as_str), Some(prefix));
    assert_eq!(env.get("dns").map(|s| s.trim()), Some(e.dns));
    assert_eq!(env.get("search").map(String::as_str), Some(e.search));
    assert_eq!(
        env.get("mtu").map(String::as_str),
        Some(e.mtu.to_string().as_str())
    );
    let (router, routes) = match pod {
        Pod::Subnet => (
            "10.244.7.1",
            "10.96.0.0/12 10.244.7.254 0.0.0.0/0 10.244.7.1",
        ),
        Pod::Calico => (
            "169.254.1.1",
            "169.254.1.1/32 0.0.0.0 0.0.0.0/0 169.254.1.1",
        ),
    };
    assert_eq!(env.get("router").map(|s| s.trim()), Some(router));
    assert_eq!(env.get("staticroutes").map(String::as_str), Some(routes));
    assert_eq!(server.stats.snapshot().replies.ack, 1);
}

fn dhclient(pod: Pod) {
    let (t, server, dir) = setup("dhcl", pod);
    let out = dir.path();
    // /etc/dhcp for the VM namespace only: Debian's request list and classless-route
    // hook, and an enter hook that writes resolv.conf into the test's directory.
    let etc = PathBuf::from(format!("/etc/netns/{}/dhcp", t.vm_ns));
    std::fs::create_dir_all(etc.join("dhclient-enter-hooks.d")).unwrap();
    std::fs::create_dir_all(etc.join("dhclient-exit-hooks.d")).unwrap();
    std::fs::copy("/etc/dhcp/dhclient.conf", etc.join("dhclient.conf")).unwrap();
    std::fs::copy(
        "/etc/dhcp/dhclient-exit-hooks.d/rfc3442-classless-routes",
        etc.join("dhclient-exit-hooks.d/rfc3442-classless-routes"),
    )
    .unwrap();
    let hook = format!(
        "env | sort > {0}/$reason.env\nmake_resolv_conf() {{\n  {{ echo \"search $new_domain_search\"; for n in $new_domain_name_servers; do echo \"nameserver $n\"; done; }} > {0}/resolv.conf\n}}\n",
        out.display()
    );
    std::fs::write(etc.join("dhclient-enter-hooks.d/record"), hook).unwrap();
    let child = t
        .in_vm("dhclient")
        .args(["-d", "-1", "-4", "-v", "-lf"])
        .arg(out.join("leases"))
        .arg("-pf")
        .arg(out.join("pid"))
        .arg(VM_IF)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _reap = Reap(child);
    assert!(
        wait_until(20, || out.join("resolv.conf").exists()
            && !t.vm_addresses().is_empty()),
        "dhclient got no lease"
    );
    let e = expected(pod);
    assert!(
        wait_until(5, || t.vm_routes().iter().any(|r| r.starts_with("default"))),
        "no default route"
    );
    assert_kernel(&t, &e, "dhclient", MtuOn::Link);
    // ISC dhclient writes option 119 names fully qualified ("cluster.local.").
    let resolv = std::fs::read_to_string(out.join("resolv.conf"))
        .unwrap()
        .replace(". ", " ")
        .replace(".\n", "\n");
    let want: String = std::iter::once(format!("search {}", e.search))
        .chain(e.dns.split(' ').map(|d| format!("nameserver {d}")))
        .map(|l| l + "\n")
        .collect();
    assert_eq!(resolv, want);
    assert_eq!(server.stats.snapshot().replies.ack, 1);
}

fn dhcpcd(pod: Pod) {
    let (t, server, dir) = setup("dhcpcd", pod);
    let out = dir.path();
    let script = record_script(out);
    let conf = out.join("dhcpcd.conf");
    std::fs::write(
        &conf,
        "option domain_name_servers, domain_name, domain_search, host_name\n\
         option classless_static_routes\noption interface_mtu\n\
         require dhcp_server_identifier\nnoipv4ll\nnoarp\nipv4only\npersistent\n",
    )
    .unwrap();
    // dhcpcd keeps state in /var/lib/dhcpcd and /run/dhcpcd: private tmpfs copies,
    // mounted in the mount namespace `ip netns exec` made for this command only.
    let cmd = format!(
        "mount -t tmpfs vmpod /var/lib/dhcpcd && mount -t tmpfs vmpod /run && mkdir -p /run/dhcpcd && \
         exec dhcpcd -B -1 -4 -t 20 -f {} -c {} {VM_IF}",
        conf.display(),
        script.display()
    );
    let child = t
        .in_vm("sh")
        .args(["-c", &cmd])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reap = Reap(child);
    let bound = wait_until(25, || out.join("BOUND.env").exists());
    if !bound {
        let _ = reap.0.kill();
        let o = std::mem::replace(
            &mut reap.0,
            std::process::Command::new("true").spawn().unwrap(),
        )
        .wait_with_output()
        .unwrap();
        panic!("dhcpcd got no lease: {}", text(&o));
    }
    let e = expected(pod);
    assert!(
        wait_until(5, || t.vm_routes().iter().any(|r| r.starts_with("default"))),
        "no default route"
    );
    assert_kernel(&t, &e, "dhcpcd", MtuOn::Routes);
    let env = read_env(&out.join("BOUND.env"));
    assert_eq!(
        env.get("new_domain_search").map(String::as_str),
        Some(e.search),
        "{env:?}"
    );
    assert_eq!(
        env.get("new_domain_name_servers").map(String::as_str),
        Some(e.dns)
    );
    assert_eq!(
        env.get("new_interface_mtu").map(String::as_str),
        Some(e.mtu.to_string().as_str())
    );
    assert_eq!(server.stats.snapshot().replies.ack, 1);
}

/// A VMI that sets `macAddress`: the net phase caches it, and `vmpod-launcher dhcp serve`
/// (its own process, reading only the cache, as a restarted launcher does) answers that
/// MAC with the pod's address, and not the pod's original MAC.
fn dhcp_serve_answers_the_cached_vmi_mac() {
    let vmi_mac: vmpod::net::MacAddr = "02:5a:00:00:00:07".parse().unwrap();
    let t = Topology::with_vm_mac("dserve", Shape::Subnet, Some(vmi_mac));
    let cached = vmpod::net::cache::load(t.state_dir(), "eth0")
        .unwrap()
        .expect("cached");
    assert_eq!(
        (cached.vm_mac(), t.vm_mac),
        (vmi_mac, vmi_mac),
        "the VMI's MAC is in the cache"
    );
    assert_ne!(cached.facts.mac, vmi_mac);
    let launcher = support::launcher::launcher_bin();
    let serve = t
        .in_pod(launcher.to_str().unwrap())
        .args(["dhcp", "serve", "--state-dir"])
        .arg(t.state_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _serve = Reap(serve);
    let dir = tempfile::tempdir().unwrap();
    let script = record_script(dir.path());
    let udhcpc = |tries: &str| {
        t.in_vm("busybox")
            .args([
                "udhcpc", "-i", VM_IF, "-f", "-q", "-n", "-t", tries, "-T", "1", "-s",
            ])
            .arg(&script)
            .output()
            .unwrap()
    };
    let out = udhcpc("10");
    assert!(out.status.success(), "udhcpc as {vmi_mac}: {}", text(&out));
    let env = read_env(&dir.path().join("bound.env"));
    assert_eq!(
        env.get("ip").map(String::as_str),
        Some("10.244.7.23"),
        "{env:?}"
    );
    // The pod's original MAC is no longer the VM's: no answer for it.
    let original = cached.facts.mac.to_string();
    let set = t
        .in_vm("ip")
        .args(["link", "set", "dev", VM_IF, "address", &original])
        .output()
        .unwrap();
    assert!(set.status.success(), "{}", text(&set));
    assert!(
        !udhcpc("2").status.success(),
        "the pod's original MAC {original} got a lease"
    );
}

/// Two DHCP servers on the VM's link: ours, and dnsmasq offering another address. Our
/// OFFERs are lost on the way (an nft rule in the pod drops the replies whose first option
/// says OFFER; ours puts option 53 first), so udhcpc takes dnsmasq's offer and REQUESTs it,
/// naming dnsmasq's server identifier. Ours hears that REQUEST too and must stay silent
/// (RFC 2131 4.3.2): udhcpc binds dnsmasq's address, and our stats show no NAK sent and
/// the REQUEST counted as a drop. (udhcpc, already bound, would not show a late NAK.)
fn a_request_for_another_server_gets_no_nak() {
    let t = Topology::new("dother", Shape::Subnet);
    let server = start_server(&t, t.config());
    let (peer_ip, peer_lease) = ("10.244.7.2", "10.244.7.99");
    t.add_bridge_address(peer_ip.parse().unwrap(), 24);
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("drop-our-offers.nft");
    std::fs::write(
        &rules,
        format!(
            "table ip vmpod_test {{\n  chain out {{\n    type filter hook output priority 0;\n    \
             ip saddr {} udp sport 67 @th,1984,24 0x350102 counter drop\n  }}\n}}\n",
            t.config().server_ip
        ),
    )
    .unwrap();
    let nft = t.in_pod("nft").arg("-f").arg(&rules).output().unwrap();
    assert!(nft.status.success(), "nft: {}", text(&nft));
    let peer = dnsmasq_command(&t, dir.path(), peer_lease)
        .arg("--no-ping")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dnsmasq");
    let _peer = Reap(peer);
    let script = record_script(dir.path());
    let out = t
        .in_vm("busybox")
        .args([
            "udhcpc", "-i", VM_IF, "-f", "-q", "-n", "-t", "10", "-T", "1", "-s",
        ])
        .arg(&script)
        .output()
        .unwrap();
    let said = text(&out);
    assert!(out.status.success(), "udhcpc: {said}");
    let env = read_env(&dir.path().join("bound.env"));
    assert_eq!(
        (
            env.get("ip").map(String::as_str),
            env.get("serverid").map(String::as_str)
        ),
        (Some(peer_lease), Some(peer_ip)),
        "the client took the other server's offer: {env:?}\n{said}"
    );
    assert!(!said.to_ascii_lowercase().contains("nak"), "{said}");
    let stats = server.stats.snapshot();
    assert!(
        stats.replies.offer >= 1,
        "ours offered (and the offer was lost): {stats:?}"
    );
    assert_eq!(stats.replies.nak, 0, "{stats:?}");
    assert!(stats.drops.other_server_chosen >= 1, "{stats:?}");
}

macro_rules! client_tests {
    ($($name:ident: $client:ident($pod:expr);)*) => {$(
        #[test]
        fn $name() {
            if support::privileged(stringify!($name)) {
                $client($pod);
            }
        }
    )*};
}

client_tests! {
    udhcpc_gets_the_pod_network: udhcpc(Pod::Subnet);
    udhcpc_gets_a_default_route_through_calicos_link_local_gateway: udhcpc(Pod::Calico);
    dhclient_configures_the_pod_network: dhclient(Pod::Subnet);
    dhclient_configures_a_default_route_through_calicos_link_local_gateway: dhclient(Pod::Calico);
    dhcpcd_configures_the_pod_network: dhcpcd(Pod::Subnet);
    dhcpcd_configures_a_default_route_through_calicos_link_local_gateway: dhcpcd(Pod::Calico);
}

#[test]
fn udhcpc_choosing_another_servers_offer_gets_no_nak() {
    if support::privileged("udhcpc_choosing_another_servers_offer_gets_no_nak") {
        a_request_for_another_server_gets_no_nak();
    }
}

#[test]
fn dhcp_serve_gives_the_vmi_mac_address_its_lease() {
    if support::privileged("dhcp_serve_gives_the_vmi_mac_address_its_lease") {
        dhcp_serve_answers_the_cached_vmi_mac();
    }
}
