//! Namespace fixture for the DHCP tests: a "pod" namespace holding the bridge the
//! launcher would build (`k6t-eth0` with the server's link-local address) and a veth
//! port in place of the VM's tap, whose far end (`eth0`, with the VM's MAC) sits in a
//! "vm" namespace where the real DHCP clients run. Built with rtnetlink; both
//! namespaces are deleted on drop. The DHCP server runs on a thread of its own.
//!
//! When the `net` phase and the `guest` pod fixture land, the bridge comes from
//! `net setup` instead; the VM side stays a veth in its own namespace.
#![allow(dead_code)]

use futures::TryStreamExt;
use rtnetlink::{LinkBridge, LinkUnspec, LinkVeth};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use vmpod::dhcp::{DhcpConfig, DhcpExtras, DhcpServer, StatsHandle};
use vmpod::net::{InterfaceFacts, IpCidr, MacAddr, Route, netns};

pub const BRIDGE: &str = "k6t-eth0";
pub const VM_IF: &str = "eth0";
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 75, 10);
/// An address beyond the gateway (TEST-NET-2), reachable only through a default route.
pub const BEYOND_GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

fn route(dest: &str, prefix: u8, gw: Option<&str>) -> Route {
    Route {
        destination: IpCidr::new(dest.parse().unwrap(), prefix),
        gateway: gw.map(|g| g.parse().unwrap()),
        metric: None,
    }
}

/// A pod on a /24 with a gateway inside it, a non-default route, and a resolv.conf
/// with one search domain no DHCP option can carry (an IP address).
pub fn subnet_facts(mac: MacAddr) -> InterfaceFacts {
    InterfaceFacts {
        interface: "eth0".into(),
        mac,
        mtu: 1400,
        addresses: vec![IpCidr::new("10.244.7.23".parse().unwrap(), 24)],
        routes: vec![
            route("10.244.7.0", 24, None),
            route("10.96.0.0", 12, Some("10.244.7.254")),
            route("0.0.0.0", 0, Some("10.244.7.1")),
        ],
        dns: vec!["10.96.0.10".parse().unwrap(), "10.96.0.11".parse().unwrap()],
        search: vec![
            "default.svc.cluster.local".into(),
            "svc.cluster.local".into(),
            "192.168.1.1".into(),
            "Cluster.Local".into(),
        ],
        hostname: "vm-a".into(),
    }
}

/// Calico's shape: a /32 pod address and the link-local gateway 169.254.1.1.
pub fn calico_facts(mac: MacAddr) -> InterfaceFacts {
    InterfaceFacts {
        interface: "eth0".into(),
        mac,
        mtu: 1450,
        addresses: vec![IpCidr::new("10.88.3.4".parse().unwrap(), 32)],
        routes: vec![
            route("169.254.1.1", 32, None),
            route("0.0.0.0", 0, Some("169.254.1.1")),
        ],
        dns: vec!["10.96.0.10".parse().unwrap()],
        search: vec!["ns1.svc.cluster.local".into()],
        hostname: "vm-b".into(),
    }
}

pub fn config(facts: &InterfaceFacts) -> DhcpConfig {
    DhcpConfig::from_facts(facts, BRIDGE, SERVER_IP, &DhcpExtras::default()).unwrap()
}

/// A locally administered MAC unique to this process and call.
pub fn unique_mac() -> MacAddr {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed).to_be_bytes();
    let pid = std::process::id().to_be_bytes();
    MacAddr([0x02, pid[2], pid[3], n[1], n[2], n[3]])
}

/// The two namespaces and their links.
pub struct Topology {
    pub pod_ns: String,
    pub vm_ns: String,
    pub vm_mac: MacAddr,
}

impl Topology {
    /// Build the namespaces and links; `tag` goes into their names (keep it short).
    pub fn new(tag: &str, vm_mac: MacAddr) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let base = format!("vd-{tag}-{}-{n}", std::process::id());
        let t = Topology {
            pod_ns: format!("{base}-pod"),
            vm_ns: format!("{base}-vm"),
            vm_mac,
        };
        netns::create(&t.pod_ns).expect("create pod netns");
        netns::create(&t.vm_ns).expect("create vm netns");
        let vm_path = t.vm_path();
        netns::block_on_in(Some(&t.pod_path()), || async move {
            let (conn, h, _) = rtnetlink::new_connection().unwrap();
            tokio::spawn(conn);
            h.link()
                .add(LinkBridge::new(BRIDGE).up().build())
                .execute()
                .await
                .unwrap();
            h.link()
                .add(LinkVeth::new("tap0", "vmside").build())
                .execute()
                .await
                .unwrap();
            let br = index(&h, BRIDGE).await;
            let tap = index(&h, "tap0").await;
            let peer = index(&h, "vmside").await;
            h.link()
                .set(LinkUnspec::new_with_index(tap).controller(br).up().build())
                .execute()
                .await
                .unwrap();
            h.address()
                .add(br, IpAddr::V4(SERVER_IP), 32)
                .execute()
                .await
                .unwrap();
            let lo = index(&h, "lo").await;
            h.link()
                .set(LinkUnspec::new_with_index(lo).up().build())
                .execute()
                .await
                .unwrap();
            let fd = std::fs::File::open(&vm_path).unwrap();
            use std::os::fd::AsRawFd;
            h.link()
                .set(
                    LinkUnspec::new_with_index(peer)
                        .setns_by_fd(fd.as_raw_fd())
                        .build(),
                )
                .execute()
                .await
                .unwrap();
        })
        .unwrap();
        netns::block_on_in(Some(&t.vm_path()), || async move {
            let (conn, h, _) = rtnetlink::new_connection().unwrap();
            tokio::spawn(conn);
            let peer = index(&h, "vmside").await;
            h.link()
                .set(
                    LinkUnspec::new_with_index(peer)
                        .name(VM_IF)
                        .address(vm_mac.0.to_vec())
                        .up()
                        .build(),
                )
                .execute()
                .await
                .unwrap();
            let lo = index(&h, "lo").await;
            h.link()
                .set(LinkUnspec::new_with_index(lo).up().build())
                .execute()
                .await
                .unwrap();
        })
        .unwrap();
        t
    }

    /// Make the pod side answer as the VM's gateway: `gateway` and [`BEYOND_GATEWAY`]
    /// on the bridge and a route back to the VM's address, so that a ping from the VM
    /// to [`BEYOND_GATEWAY`] proves its default route works.
    pub fn act_as_gateway(&self, gateway: Ipv4Addr, vm_ip: Ipv4Addr) {
        netns::block_on_in(Some(&self.pod_path()), || async move {
            let (conn, h, _) = rtnetlink::new_connection().unwrap();
            tokio::spawn(conn);
            let br = index(&h, BRIDGE).await;
            for a in [gateway, BEYOND_GATEWAY] {
                h.address()
                    .add(br, IpAddr::V4(a), 32)
                    .execute()
                    .await
                    .unwrap();
            }
            let back = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(vm_ip, 32)
                .output_interface(br)
                .scope(netlink_packet_route::route::RouteScope::Link)
                .build();
            h.route().add(back).execute().await.unwrap();
        })
        .unwrap();
    }

    /// One ping from the VM's namespace.
    pub fn vm_pings(&self, ip: Ipv4Addr) -> bool {
        let out = self
            .in_vm("busybox")
            .args(["ping", "-c", "1", "-W", "2", &ip.to_string()])
            .output()
            .unwrap();
        out.status.success()
    }

    pub fn pod_path(&self) -> PathBuf {
        netns::path(&self.pod_ns)
    }

    pub fn vm_path(&self) -> PathBuf {
        netns::path(&self.vm_ns)
    }

    /// Run a command inside the VM's namespace through `ip netns exec`, which also
    /// bind-mounts `/etc/netns/<vm_ns>/*` over `/etc` so clients' scripts stay off the host's files.
    pub fn in_vm(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.vm_ns, program]);
        c
    }

    /// `ip -j ... ` in the VM namespace, parsed.
    pub fn ip_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.in_vm("ip").arg("-j").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The VM side's IPv4 addresses as `addr/prefix`.
    pub fn vm_addresses(&self) -> Vec<String> {
        let v = self.ip_json(&["-4", "addr", "show", "dev", VM_IF]);
        v[0]["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
            .collect()
    }

    /// The VM side's IPv4 routes as `dst [via gw]`, main table.
    pub fn vm_routes(&self) -> Vec<String> {
        let v = self.ip_json(&["-4", "route", "show", "table", "main"]);
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| match r["gateway"].as_str() {
                Some(g) => format!("{} via {g}", r["dst"].as_str().unwrap()),
                None => r["dst"].as_str().unwrap().to_owned(),
            })
            .collect()
    }

    /// The MTU metric of each IPv4 route, e.g. `default via 10.0.0.1 mtu 1400`
    /// (dhcpcd 9 applies option 26 to its routes, not to the link).
    pub fn vm_route_mtus(&self) -> Vec<(String, Option<u64>)> {
        let v = self.ip_json(&["-4", "-d", "route", "show", "table", "main"]);
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let mtu = r["metrics"]
                    .as_array()
                    .and_then(|m| m.iter().find_map(|x| x["mtu"].as_u64()));
                (r["dst"].as_str().unwrap().to_owned(), mtu)
            })
            .collect()
    }

    pub fn vm_mtu(&self) -> u64 {
        self.ip_json(&["link", "show", "dev", VM_IF])[0]["mtu"]
            .as_u64()
            .unwrap()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.vm_ns));
        let _ = netns::delete(&self.vm_ns);
        let _ = netns::delete(&self.pod_ns);
    }
}

async fn index(h: &rtnetlink::Handle, name: &str) -> u32 {
    h.link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await
        .unwrap()
        .unwrap()
        .header
        .index
}

/// A DHCP server serving in the pod namespace on its own thread; stops on drop.
pub struct RunningServer {
    pub stats: StatsHandle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub fn start_server(t: &Topology, config: DhcpConfig) -> RunningServer {
    let server = netns::run_in(Some(&t.pod_path()), || DhcpServer::bind(config))
        .unwrap()
        .unwrap();
    let stats = server.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::select! {
                r = server.run() => r.unwrap(),
                _ = stopped => {}
            }
        });
    });
    RunningServer {
        stats,
        stop: Some(stop),
        thread: Some(thread),
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        let _ = self.thread.take().map(|t| t.join());
    }
}

/// Wait until `f` holds, up to `secs`.
pub fn wait_until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
