//! Pod fixture for the DHCP tests, after the real network phase: a pod from
//! [`vmpod::sandbox`] (node bridge as the gateway, pod `eth0` with the pod's address,
//! MAC, MTU, routes and resolv.conf), then `net::setup` rewires it (bridge `k6t-eth0`,
//! tap, link-local address, cache; the bridge binding, or masquerade with
//! [`Topology::masquerade`]). A veth port on that bridge stands in for the tap;
//! its far end is `eth0` with the VM's MAC in a "vm" namespace, where the real DHCP
//! clients run. The DHCP configuration comes from the cache the net phase wrote.
#![allow(dead_code)]

use futures::TryStreamExt;
use rtnetlink::{LinkUnspec, LinkVeth};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use vmpod::dhcp::{DhcpConfig, DhcpExtras, DhcpServer, DhcpStats, StatsHandle};
use vmpod::net::masquerade::MasqueradeOptions;
use vmpod::net::{self, Binding, CachedInterface, IpCidr, MacAddr, Route, SetupOptions, netns};
use vmpod::sandbox::{CALICO_GATEWAY, NodeSpec, PodSandbox, PodSpec};

pub const VM_IF: &str = "eth0";
/// An address beyond the gateway (TEST-NET-2) on the node, reachable from the VM only
/// through its default route.
pub const BEYOND_GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

/// The pod shapes the DHCP tests serve.
#[derive(Clone, Copy, Debug)]
pub enum Shape {
    /// Bridge CNI: 10.244.7.23/24 via 10.244.7.1, a route to 10.96.0.0/12 via
    /// 10.244.7.254, MTU 1400, two nameservers, and a resolv.conf search line with one
    /// domain no DHCP option can carry (an IP address).
    Subnet,
    /// Calico: 10.88.3.4/32 with the link-local gateway 169.254.1.1, MTU 1450.
    Calico,
    /// Dual stack: 10.244.9.23/24 via 10.244.9.1 and fd77:9::23/64 via fd77:9::1, an
    /// IPv4 and an IPv6 nameserver.
    DualStack,
}

fn pod_spec(shape: Shape) -> (NodeSpec, PodSpec) {
    let beyond = IpCidr::new(IpAddr::V4(BEYOND_GATEWAY), 32);
    match shape {
        Shape::Subnet => {
            let node = NodeSpec::isolated(vec!["10.244.7.1/24".parse::<IpCidr>().unwrap(), beyond]);
            let mut pod = PodSpec::new(
                "dhcp",
                "10.244.7.23/24".parse::<IpCidr>().unwrap(),
                "10.244.7.1".parse().unwrap(),
            );
            pod.mtu = 1400;
            pod.routes.push(Route {
                destination: "10.96.0.0/12".parse::<IpCidr>().unwrap(),
                gateway: Some("10.244.7.254".parse().unwrap()),
                metric: None,
            });
            pod.dns = vec!["10.96.0.10".parse().unwrap(), "10.96.0.11".parse().unwrap()];
            pod.search = [
                "default.svc.cluster.local",
                "svc.cluster.local",
                "192.168.1.1",
                "Cluster.Local",
            ]
            .map(String::from)
            .to_vec();
            pod.hostname = "vm-a".into();
            (node, pod)
        }
        Shape::Calico => {
            let node = NodeSpec::isolated(vec!["10.77.0.1/24".parse::<IpCidr>().unwrap(), beyond]);
            let mut pod = PodSpec::new(
                "dhcpcal",
                "10.88.3.4/32".parse::<IpCidr>().unwrap(),
                CALICO_GATEWAY,
            );
            pod.mtu = 1450;
            pod.dns = vec!["10.96.0.10".parse().unwrap()];
            pod.search = vec!["ns1.svc.cluster.local".into()];
            pod.hostname = "vm-b".into();
            (node, pod)
        }
        Shape::DualStack => {
            let node = NodeSpec::isolated(vec![
                "10.244.9.1/24".parse::<IpCidr>().unwrap(),
                "fd77:9::1/64".parse::<IpCidr>().unwrap(),
                beyond,
            ]);
            let mut pod = PodSpec::new(
                "dhcp6",
                "10.244.9.23/24".parse::<IpCidr>().unwrap(),
                "10.244.9.1".parse().unwrap(),
            );
            pod.ipv6 = Some("fd77:9::23/64".parse::<IpCidr>().unwrap());
            pod.gateway6 = Some("fd77:9::1".parse().unwrap());
            pod.dns = vec!["10.96.0.10".parse().unwrap(), "fd77:9::53".parse().unwrap()];
            pod.search = vec!["default.svc.cluster.local".into(), "cluster.local".into()];
            pod.hostname = "vm-c".into();
            pod.mtu = 1400;
            (node, pod)
        }
    }
}

/// The pod after `net setup`, and the VM's namespace on its bridge.
pub struct Topology {
    pub pod: PodSandbox,
    pub state: tempfile::TempDir,
    pub cached: CachedInterface,
    pub vm_ns: String,
    pub vm_mac: MacAddr,
}

impl Topology {
    pub fn new(tag: &str, shape: Shape) -> Self {
        Self::with_vm_mac(tag, shape, None)
    }

    /// A pod whose VMI sets `macAddress` to `vm_mac` (`None`: the VM takes the pod's MAC);
    /// the VM side's `eth0` gets the MAC the net phase cached for the VM.
    pub fn with_vm_mac(tag: &str, shape: Shape, vm_mac: Option<MacAddr>) -> Self {
        let t = Self::pod_only(tag, shape, vm_mac);
        t.attach_vm();
        t.wait_link_ready();
        t
    }

    /// The pod after `net setup` with the masquerade binding (`masquerade`: the VM
    /// networks and forwarded ports), the VM namespace on its bridge.
    pub fn masquerade(tag: &str, shape: Shape, masquerade: MasqueradeOptions) -> Self {
        let plan = net::PlanOptions {
            masquerade,
            ..net::PlanOptions::default()
        };
        let t = Self::set_up(tag, shape, Binding::Masquerade, plan);
        t.attach_vm();
        t.wait_link_ready();
        t
    }

    /// The pod after `net setup`, with nothing on its bridge but the tap the net phase
    /// made (for a real guest on that tap); the VM namespace exists, empty.
    pub fn pod_only(tag: &str, shape: Shape, vm_mac: Option<MacAddr>) -> Self {
        let plan = net::PlanOptions {
            vm_mac,
            ..net::PlanOptions::default()
        };
        Self::set_up(tag, shape, Binding::Bridge, plan)
    }

    fn set_up(tag: &str, shape: Shape, binding: Binding, plan: net::PlanOptions) -> Self {
        let (node, spec) = pod_spec(shape);
        let pod = PodSandbox::create(&node, &spec).expect("pod sandbox");
        let state = tempfile::tempdir().unwrap();
        let setup = net::setup(&SetupOptions {
            netns: Some(pod.netns_path().to_path_buf()),
            state_dir: state.path().to_path_buf(),
            resolv_conf: pod.resolv_conf_path(),
            hostname: Some(pod.hostname().to_owned()),
            binding,
            plan,
            ..SetupOptions::new("eth0")
        })
        .expect("net setup");
        let cached = setup.cached;
        static N: AtomicU32 = AtomicU32::new(0);
        let vm_ns = format!(
            "vd-{tag}-{}-{}-vm",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        netns::create(&vm_ns).expect("create vm netns");
        // `ip netns exec` binds this over /etc/resolv.conf for the VM side's clients, so
        // their scripts (dhclient-script, dhcpcd's hooks) never write the host's.
        let etc = format!("/etc/netns/{vm_ns}");
        std::fs::create_dir_all(&etc).expect("create /etc/netns/<vm ns>");
        std::fs::write(format!("{etc}/resolv.conf"), "").expect("private resolv.conf");
        Topology {
            vm_mac: cached.vm_mac(),
            pod,
            state,
            cached,
            vm_ns,
        }
    }

    /// Wait (bounded) until frames pass between the VM side and the bridge: the VM's
    /// `eth0` up, its bridge port forwarding and the bridge up. The kernel applies
    /// carrier changes asynchronously (linkwatch, up to a second later under load), and
    /// a DISCOVER sent before that is lost.
    fn wait_link_ready(&self) {
        let read = |mut c: Command, files: &str| {
            let out = c
                .args(["sh", "-c", &format!("cat {files}")])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let bridge = self.bridge();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pod = read(
                self.in_pod("env"),
                &format!("/sys/class/net/vmport/brport/state /sys/class/net/{bridge}/operstate"),
            );
            let vm = read(
                self.in_vm("env"),
                &format!("/sys/class/net/{VM_IF}/operstate"),
            );
            // brport state 3: forwarding.
            if pod == ["3", "up"] && vm == ["up"] {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "VM link not ready after 10 s: port state and bridge {pod:?}, VM {VM_IF} {vm:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A veth `vmport` on the bridge in place of the tap; its peer becomes `eth0` with
    /// the VM's MAC in the VM namespace.
    fn attach_vm(&self) {
        let bridge = net::bridge_name("eth0");
        let vm_path = self.vm_path();
        self.pod
            .block_on(|| async move {
                let (conn, h, _) = rtnetlink::new_connection().unwrap();
                tokio::spawn(conn);
                h.link()
                    .add(LinkVeth::new("vmport", "vmside").build())
                    .execute()
                    .await
                    .unwrap();
                let br = index(&h, &bridge).await;
                let port = index(&h, "vmport").await;
                let peer = index(&h, "vmside").await;
                h.link()
                    .set(LinkUnspec::new_with_index(port).controller(br).up().build())
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
        let mac = self.vm_mac;
        netns::block_on_in(Some(&self.vm_path()), || async move {
            let (conn, h, _) = rtnetlink::new_connection().unwrap();
            tokio::spawn(conn);
            let peer = index(&h, "vmside").await;
            h.link()
                .set(
                    LinkUnspec::new_with_index(peer)
                        .name(VM_IF)
                        .address(mac.0.to_vec())
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
    }

    /// The DHCP configuration the launcher would serve, from the net phase's cache.
    pub fn config(&self) -> DhcpConfig {
        DhcpConfig::for_cached(&self.cached, &DhcpExtras::default()).unwrap()
    }

    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    pub fn bridge(&self) -> String {
        net::bridge_name("eth0")
    }

    pub fn pod_path(&self) -> PathBuf {
        self.pod.netns_path().to_path_buf()
    }

    pub fn pod_ns(&self) -> String {
        self.pod
            .netns_path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    pub fn vm_path(&self) -> PathBuf {
        netns::path(&self.vm_ns)
    }

    /// Run a command inside the VM's namespace through `ip netns exec`, which also
    /// bind-mounts `/etc/netns/<vm_ns>/*` over `/etc` in a mount namespace of its own,
    /// so clients' scripts stay off the host's files.
    pub fn in_vm(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.vm_ns, program]);
        c
    }

    /// Run a command inside the pod's namespace (where the bridge is).
    pub fn in_pod(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.pod_ns(), program]);
        c
    }

    /// One more address on the VM bridge (peer DHCP servers want one in the VM's subnet).
    pub fn add_bridge_address(&self, addr: IpAddr, prefix: u8) {
        let bridge = self.bridge();
        self.pod
            .block_on(|| async move {
                let (conn, h, _) = rtnetlink::new_connection().unwrap();
                tokio::spawn(conn);
                let br = index(&h, &bridge).await;
                h.address().add(br, addr, prefix).execute().await.unwrap();
            })
            .unwrap();
    }

    /// `ip -j ...` in the VM namespace, parsed.
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

    /// The MTU metric of each IPv4 route (dhcpcd 9 applies option 26 to its routes,
    /// not to the link).
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

    /// One ping from the VM's namespace.
    pub fn vm_pings(&self, ip: Ipv4Addr) -> bool {
        let out = self
            .in_vm("busybox")
            .args(["ping", "-c", "1", "-W", "2", &ip.to_string()])
            .output()
            .unwrap();
        out.status.success()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.vm_ns));
        let _ = netns::delete(&self.vm_ns);
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

/// A server (DHCP, DHCPv6, router advertisements) serving in the pod namespace on its
/// own thread, and its counters; stops on drop.
pub struct Running<T = DhcpStats> {
    pub stats: StatsHandle<T>,
    _serving: Serving,
}

impl<T> Running<T> {
    /// Run `serve` on a thread of its own ([`serve_on_thread`]).
    pub fn new(
        stats: StatsHandle<T>,
        serve: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Self {
        Running {
            stats,
            _serving: serve_on_thread(serve),
        }
    }
}

/// The DHCP server of a test.
pub type RunningServer = Running<DhcpStats>;

/// A future running on a thread of its own; dropped (and the thread joined) on drop.
pub struct Serving {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Run `serve` on a new thread with a current-thread runtime until the [`Serving`] drops.
pub fn serve_on_thread(serve: impl std::future::Future<Output = ()> + Send + 'static) -> Serving {
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::select! {
                () = serve => {}
                _ = stopped => {}
            }
        });
    });
    Serving {
        stop: Some(stop),
        thread: Some(thread),
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        let _ = self.thread.take().map(|t| t.join());
    }
}

/// dnsmasq as a peer DHCP server on the VM bridge, in the foreground, handing `lease` to
/// the VM's MAC; state files go to `dir`. The bridge needs an address in `lease`'s /24.
pub fn dnsmasq_command(t: &Topology, dir: &Path, lease: &str) -> Command {
    let mut c = dnsmasq_on_bridge(t, dir, "dnsmasq");
    c.arg(format!("--dhcp-range={lease},static,255.255.255.0,30d"))
        .arg(format!("--dhcp-host={},{lease}", t.vm_mac));
    c
}

/// dnsmasq on the VM bridge in the foreground, DNS off, its lease and pid files
/// `<dir>/<name>.leases` and `<dir>/<name>.pid`; the caller adds what it serves.
pub fn dnsmasq_on_bridge(t: &Topology, dir: &Path, name: &str) -> Command {
    let mut c = t.in_pod("dnsmasq");
    c.args([
        "--no-daemon",
        "--port=0",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--user=root",
    ])
    .arg(format!("--interface={}", t.bridge()))
    .arg(format!("--dhcp-leasefile={}/{name}.leases", dir.display()))
    .arg(format!("--pid-file={}/{name}.pid", dir.display()));
    c
}

/// A latency benchmark's rounds per server (`DHCP_BENCH_ROUNDS`, default 2000), or
/// `None` when it must not run: probed by `cargo bench --list`, or not root.
pub fn bench_rounds(name: &str) -> Option<usize> {
    if std::env::args().any(|a| a == "--list") {
        return None; // cargo bench --list / cargo test --benches probing
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED {name}: needs root (network namespaces)");
        return None;
    }
    Some(
        std::env::var("DHCP_BENCH_ROUNDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2000),
    )
}

pub fn start_server(t: &Topology, config: DhcpConfig) -> RunningServer {
    let server = netns::run_in(Some(&t.pod_path()), || DhcpServer::bind(config))
        .unwrap()
        .unwrap();
    Running::new(server.stats(), async move { server.run().await.unwrap() })
}

/// What `vmpodctl net inspect` shows of the pod of `t`, which it must show.
/// `vmpodctl` is the binary, `env!("CARGO_BIN_EXE_vmpodctl")` (only the vmpod package's
/// tests have it).
pub fn net_inspect(t: &Topology, vmpodctl: &str) -> String {
    let out = Command::new(vmpodctl)
        .args(["net", "inspect", "--netns"])
        .arg(t.pod_path())
        .arg("--state-dir")
        .arg(t.state_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `KEY=value` lines a client script wrote with `env | sort`, quotes removed.
pub fn read_env(path: &Path) -> std::collections::BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
        .collect()
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

/// The nearest-rank percentile of sorted samples (the latency benchmarks).
pub fn percentile(sorted: &[u64], pct: usize) -> u64 {
    let rank = (pct * sorted.len()).div_ceil(100);
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Kills a client left running when the test ends.
pub struct Reap(pub std::process::Child);
impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The VM side's IPv6 routes as `dst [via gw] [proto]`, main table.
pub fn vm_routes6(t: &Topology) -> Vec<String> {
    let v = t.ip_json(&["-6", "route", "show", "table", "main"]);
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let mut s = r["dst"].as_str().unwrap().to_owned();
            if let Some(g) = r["gateway"].as_str() {
                s += &format!(" via {g}");
            }
            if let Some(p) = r["protocol"].as_str() {
                s += &format!(" {p}");
            }
            s
        })
        .collect()
}

/// The VM side's IPv6 addresses of `scope` (`global`, `link`) as `addr/prefix`, with
/// the tentative ones (duplicate address detection still running) marked.
pub fn vm_addresses6(t: &Topology, scope: &str) -> Vec<String> {
    let v = t.ip_json(&["-6", "addr", "show", "dev", VM_IF, "scope", scope]);
    v.as_array()
        .and_then(|a| a.first())
        .and_then(|l| l["addr_info"].as_array())
        .map(|a| {
            // `ip -j` prints `{}` for the addresses the scope filter left out.
            a.iter()
                .filter_map(|a| {
                    let tentative = if a["tentative"].as_bool() == Some(true) {
                        " tentative"
                    } else {
                        ""
                    };
                    Some(format!(
                        "{}/{}{tentative}",
                        a["local"].as_str()?,
                        a["prefixlen"]
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Wait until the VM side has a usable link-local address: a DHCPv6 client speaks from it.
pub fn wait_link_local(t: &Topology) {
    assert!(
        wait_until(10, || {
            let ll = vm_addresses6(t, "link");
            !ll.is_empty() && ll.iter().all(|a| !a.ends_with("tentative"))
        }),
        "VM side link-local address not ready: {:?}",
        vm_addresses6(t, "link")
    );
}

/// A client script that writes its environment to `<out>/<reason>.env`, then runs `then`.
pub fn record_script(out: &Path, then: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = out.join("record.sh");
    let body = format!(
        "#!/bin/sh\nenv | sort > \"{}/$reason.env\"\n{then}\n",
        out.display()
    );
    std::fs::write(&script, body).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// dhcpcd in the VM namespace in the background, started once the VM side's link-local
/// address is usable ([`wait_link_local`]), with `conf` as its configuration and
/// [`record_script`] as its script (one env file per reason in the returned directory);
/// `flags` pick the families (`-6`, or none for both). The client stops when its [`Reap`]
/// drops; bound as `let (dir, _client) = ...` it stops before its directory goes.
pub fn dhcpcd(t: &Topology, conf: &str, flags: &str) -> (tempfile::TempDir, Reap) {
    wait_link_local(t);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let script = record_script(out, "");
    let conf_path = out.join("dhcpcd.conf");
    std::fs::write(&conf_path, conf).unwrap();
    // dhcpcd keeps state in /var/lib/dhcpcd and /run/dhcpcd: private tmpfs copies, in
    // the mount namespace `ip netns exec` made for this command only.
    let cmd = format!(
        "mount -t tmpfs vmpod /var/lib/dhcpcd && mount -t tmpfs vmpod /run && mkdir -p /run/dhcpcd && \
         exec dhcpcd -B {flags} -t 20 -f {} -c {} {VM_IF}",
        conf_path.display(),
        script.display()
    );
    let client = t
        .in_vm("sh")
        .args(["-c", &cmd])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    (dir, Reap(client))
}

/// What dhcpcd (run by [`dhcpcd`], recording in `out`) got over IPv6 in a [`Shape::DualStack`]
/// pod: `address` by DHCPv6 with the pod's IPv6 nameserver, the router advertisement
/// from the bridge's link-local address with RDNSS and DNSSL, the default route through
/// that address, and `address` on the VM side's link, usable.
pub fn assert_dhcpcd_ipv6(t: &Topology, out: &Path, address: &str) {
    let env = read_env(&out.join("BOUND6.env"));
    assert_eq!(
        env.get("new_dhcp6_ia_na1_ia_addr1").map(String::as_str),
        Some(address),
        "{env:?}"
    );
    assert_eq!(
        env.get("new_dhcp6_name_servers").map(String::as_str),
        Some("fd77:9::53")
    );
    let bridge_ll = vmpod::net::ipv6::bridge_link_local(&t.cached.facts).to_string();
    let ra_env = read_env(&out.join("ROUTERADVERT.env"));
    for (key, want) in [
        ("nd1_from", bridge_ll.as_str()),
        ("nd1_rdnss1_servers", "fd77:9::53"),
        (
            "nd1_dnssl1_search",
            "default.svc.cluster.local cluster.local",
        ),
    ] {
        assert_eq!(
            ra_env.get(key).map(String::as_str),
            Some(want),
            "{ra_env:?}"
        );
    }
    let want_default = format!("default via {bridge_ll}");
    assert!(
        wait_until(5, || vm_routes6(t)
            .iter()
            .any(|r| r.starts_with(&want_default))),
        "no default route via the bridge: {:?}",
        vm_routes6(t)
    );
    let usable = format!("{address}/");
    assert!(
        wait_until(10, || vm_addresses6(t, "global")
            .iter()
            .any(|a| a.starts_with(&usable) && !a.ends_with("tentative"))),
        "{:?}",
        vm_addresses6(t, "global")
    );
}

/// `/proc/sys/<key>` read by `cat` run where `cat` runs (`t.in_vm("cat")`,
/// `t.in_pod("cat")`), trimmed.
pub fn proc_sys(mut cat: Command, key: &str) -> String {
    let o = cat.arg(format!("/proc/sys/{key}")).output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// Wait (up to `secs`) until [`record_script`] wrote `<reason>.env` in `out` for every
/// one of `reasons`; else panic with `context()` and the reasons it did write.
pub fn wait_recorded(out: &Path, reasons: &[&str], secs: u64, context: impl FnOnce() -> String) {
    if wait_until(secs, || {
        reasons
            .iter()
            .all(|r| out.join(format!("{r}.env")).exists())
    }) {
        return;
    }
    let recorded: Vec<_> = std::fs::read_dir(out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    panic!(
        "the client recorded no {reasons:?} in {secs} s: {}; recorded {recorded:?}",
        context()
    );
}
