//! The test guest (tests/guest/): its console report and a QEMU boot helper.
//!
//! The guest prints one `VMPOD-<KIND> <json>` line per result on its serial console
//! (format in tests/guest/init); [`GuestReport`] parses them. [`QemuGuest`] boots the
//! guest under TCG, collects the console, answers QMP and kills QEMU on drop.

use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// `VMPOD-BOOT`: the init started.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct GuestBoot {
    pub kernel: String,
    /// Seconds since the guest kernel started.
    pub uptime: f64,
}

/// `VMPOD-DMI`: the SMBIOS chassis fields the guest kernel read (empty when absent).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct GuestDmi {
    pub chassis_vendor: String,
    pub chassis_version: String,
    pub chassis_serial: String,
    pub chassis_asset_tag: String,
}

/// A classless static route (DHCP option 121) as the guest received it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct GuestRoute {
    /// `a.b.c.d/len`.
    pub dst: String,
    pub via: Ipv4Addr,
}

/// `VMPOD-LEASE`: what udhcpc leased on the first NIC, as applied.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct GuestLease {
    /// `bound` for the first lease, `renew` for a renewal (held guests keep udhcpc).
    pub event: String,
    pub iface: String,
    pub mac: String,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    /// Option 3, in order.
    pub routers: Vec<Ipv4Addr>,
    /// Option 6.
    pub dns: Vec<IpAddr>,
    /// Option 26; `None` when the server sent none.
    pub mtu: Option<u32>,
    /// The NIC's MTU after the lease was applied.
    pub link_mtu: u32,
    /// Option 12.
    pub hostname: Option<String>,
    /// Option 15.
    pub domain: Option<String>,
    /// Option 119.
    pub search: Vec<String>,
    /// Option 121.
    pub routes: Vec<GuestRoute>,
    /// Option 54.
    pub server: Option<Ipv4Addr>,
    /// Option 42.
    #[serde(default)]
    pub ntp: Vec<Ipv4Addr>,
    /// Option 66.
    #[serde(default)]
    pub tftp: Option<String>,
    /// Option 67.
    #[serde(default)]
    pub bootfile: Option<String>,
    /// Options udhcpc does not know (the private 224-254), by code, value in hex.
    #[serde(default)]
    pub private: std::collections::BTreeMap<u8, String>,
    pub lease_s: Option<u64>,
    /// Guest uptime in seconds when the lease was applied: boot-to-lease time.
    pub uptime: f64,
}

impl GuestLease {
    pub fn router(&self) -> Option<Ipv4Addr> {
        self.routers.first().copied()
    }
}

/// `VMPOD-PING` / `VMPOD-PING6`: one echo request to the (first) router.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct GuestPing {
    pub target: IpAddr,
    pub ok: bool,
    pub rtt_ms: Option<f64>,
}

/// `VMPOD-IPV6` (kernel argument `vmpod.ipv6=1`): what the guest holds once dhcpcd has
/// an address: the NIC's global IPv6 addresses (DHCPv6 or SLAAC), the default routers
/// and the IPv6 nameservers in its resolv.conf.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct GuestIpv6 {
    pub iface: String,
    /// `addr/prefix`.
    pub addresses: Vec<String>,
    pub routers: Vec<Ipv6Addr>,
    pub dns: Vec<Ipv6Addr>,
}

impl GuestIpv6 {
    /// The addresses without their prefix lengths.
    pub fn addrs(&self) -> Vec<Ipv6Addr> {
        self.addresses
            .iter()
            .filter_map(|a| a.split('/').next()?.parse().ok())
            .collect()
    }
}

/// `VMPOD-RA` (`vmpod.ipv6=1`): a router advertisement dhcpcd took, as its hook saw it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct GuestRa {
    pub iface: String,
    /// The advertising router (its link-local source address).
    pub from: Option<Ipv6Addr>,
    /// Prefix information options, `prefix/len`.
    pub prefixes: Vec<String>,
    pub mtu: Option<u32>,
    /// RDNSS (RFC 8106).
    pub rdnss: Vec<Ipv6Addr>,
    /// DNSSL (RFC 8106).
    pub dnssl: Vec<String>,
    /// Guest uptime in seconds when dhcpcd took it.
    pub uptime: f64,
}

/// `VMPOD-DHCP6` (`vmpod.ipv6=1`): a DHCPv6 lease dhcpcd took.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct GuestDhcp6 {
    /// dhcpcd's reason: `BOUND6` for a new lease, `REBOOT6`, `RENEW6`, `REBIND6`, `INFORM6`.
    pub event: String,
    pub iface: String,
    /// IA_NA addresses.
    pub addresses: Vec<Ipv6Addr>,
    /// Option 23.
    pub dns: Vec<Ipv6Addr>,
    /// Option 24.
    pub search: Vec<String>,
    /// The server's DUID, colon-separated hex.
    pub server_id: Option<String>,
    /// Guest uptime in seconds when dhcpcd took it: boot-to-lease time.
    pub uptime: f64,
}

/// Everything the guest reported so far, in console order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GuestReport {
    pub boot: Option<GuestBoot>,
    pub dmi: Option<GuestDmi>,
    /// The first lease.
    pub lease: Option<GuestLease>,
    /// Every lease line in order: the first, then renewals.
    pub leases: Vec<GuestLease>,
    /// `VMPOD-LEASE-FAILED` seen: udhcpc gave up.
    pub lease_failed: bool,
    pub ping: Option<GuestPing>,
    /// The first router advertisement dhcpcd took (`vmpod.ipv6=1`).
    pub ra: Option<GuestRa>,
    /// The first DHCPv6 lease dhcpcd took (`vmpod.ipv6=1`).
    pub dhcp6: Option<GuestDhcp6>,
    /// `VMPOD-IPV6-FAILED` seen: dhcpcd got no IPv6 address in time.
    pub ipv6_failed: bool,
    pub ipv6: Option<GuestIpv6>,
    pub ping6: Option<GuestPing>,
    /// Files of a cidata disk (`user-data`, `meta-data`, `network-config`) by name.
    pub cidata: BTreeMap<String, String>,
    /// The device and filesystem the cidata disk was found on.
    pub cidata_source: Option<(String, String)>,
    /// `VMPOD-HTTP`: serving its page (`vmpod.http=1`).
    pub http: Option<GuestHttp>,
    /// `VMPOD-HOLD`: waiting for the power button (`vmpod.hold=1`).
    pub holding: bool,
    pub power_button: bool,
    pub powered_off: bool,
}

/// `VMPOD-HTTP`: the ports busybox httpd listens on and the page it serves.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct GuestHttp {
    pub ports: Vec<u16>,
    pub page: Option<String>,
}

/// A console line that starts a report but does not parse.
#[derive(Debug)]
pub struct ReportError {
    pub line: String,
    pub why: String,
}

impl std::fmt::Display for ReportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad guest report line {:?}: {}", self.line, self.why)
    }
}

/// One report's JSON as its type, or an error naming the line.
fn typed<T: serde::de::DeserializeOwned>(v: Value, line: &str) -> Result<T, ReportError> {
    serde_json::from_value(v).map_err(|e| ReportError {
        line: line.to_string(),
        why: e.to_string(),
    })
}

impl GuestReport {
    /// Parse a whole console log (CR/LF endings, kernel noise and escape codes allowed).
    pub fn parse(console: &str) -> Result<GuestReport, ReportError> {
        let mut report = GuestReport::default();
        let mut open: Option<(String, String)> = None;
        // A console read while the guest writes may end inside a line: that line is
        // parsed on a later read, once complete.
        let complete = console.rfind('\n').map_or("", |i| &console[..=i]);
        for raw in complete.lines() {
            let line = raw.trim_end_matches('\r');
            let tagged = line.find("VMPOD-").map(|i| &line[i..]);
            match (&mut open, tagged) {
                (Some((file, _)), Some(t)) if t.starts_with("VMPOD-CIDATA-END") => {
                    let (file, body) = (file.clone(), open.take().map(|o| o.1).unwrap_or_default());
                    report.cidata.insert(file, body);
                }
                (Some((_, body)), _) => {
                    body.push_str(line);
                    body.push('\n');
                }
                (None, Some(t)) => {
                    if let Some(file) = report.take_line(t)? {
                        open = Some((file, String::new()));
                    }
                }
                (None, None) => {}
            }
        }
        Ok(report)
    }

    /// Apply one `VMPOD-` line; returns the file name when it opens a cidata block.
    fn take_line(&mut self, tagged: &str) -> Result<Option<String>, ReportError> {
        let (kind, json) = tagged.split_once(' ').unwrap_or((tagged, "{}"));
        let bad = |why: String| ReportError {
            line: tagged.to_string(),
            why,
        };
        let value: Value = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
        match kind {
            "VMPOD-BOOT" => self.boot = Some(typed(value, tagged)?),
            "VMPOD-DMI" => self.dmi = Some(typed(value, tagged)?),
            "VMPOD-LEASE" => {
                let lease: GuestLease = typed(value, tagged)?;
                self.lease.get_or_insert_with(|| lease.clone());
                self.leases.push(lease);
            }
            "VMPOD-LEASE-FAILED" => self.lease_failed = true,
            "VMPOD-PING" => self.ping = Some(typed(value, tagged)?),
            "VMPOD-RA" => {
                let ra = typed(value, tagged)?;
                self.ra.get_or_insert(ra);
            }
            "VMPOD-DHCP6" => {
                let lease = typed(value, tagged)?;
                self.dhcp6.get_or_insert(lease);
            }
            "VMPOD-IPV6-FAILED" => self.ipv6_failed = true,
            "VMPOD-IPV6" => self.ipv6 = Some(typed(value, tagged)?),
            "VMPOD-PING6" => self.ping6 = Some(typed(value, tagged)?),
            "VMPOD-CIDATA-BEGIN" => {
                let field = |k: &str| {
                    value[k]
                        .as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad(format!("no {k}")))
                };
                self.cidata_source = Some((field("device")?, field("fs")?));
                return Ok(Some(field("file")?));
            }
            "VMPOD-HTTP" => self.http = Some(typed(value, tagged)?),
            "VMPOD-HOLD" => self.holding = true,
            "VMPOD-POWER-BUTTON" => self.power_button = true,
            "VMPOD-POWEROFF" => self.powered_off = true,
            _ => {}
        }
        Ok(None)
    }

    /// The cidata disk's user-data, if one was attached and read.
    pub fn user_data(&self) -> Option<&str> {
        self.cidata.get("user-data").map(String::as_str)
    }

    /// A `vmpod.ipv6=1` guest got as far as it will: it pinged over IPv6, or it went
    /// past that step (holding, powered off) or never got there (no IPv4 lease).
    pub fn ipv6_settled(&self) -> bool {
        self.ping6.is_some() || self.holding || self.powered_off || self.lease_failed
    }

    /// What a dual-stack guest (`vmpod.ipv6=1`) reported, checked against what its pod
    /// should give it; the error names every field that differs or is missing.
    pub fn dual_stack(&self, want: &DualStackWant) -> Result<GuestDualStack, String> {
        let mut wrong = Vec::new();
        let mut check = |what: &str, ok: bool, got: &dyn std::fmt::Debug| {
            if !ok {
                wrong.push(format!("{what}: got {got:?}"));
            }
        };
        let missing = |what: &str| format!("no {what} report");
        let lease = self.lease.clone().ok_or_else(|| missing("VMPOD-LEASE"))?;
        let ping = self.ping.clone().ok_or_else(|| missing("VMPOD-PING"))?;
        let ra = self.ra.clone().ok_or_else(|| missing("VMPOD-RA"))?;
        let dhcp6 = self.dhcp6.clone().ok_or_else(|| missing("VMPOD-DHCP6"))?;
        let ipv6 = self.ipv6.clone().ok_or_else(|| missing("VMPOD-IPV6"))?;
        let ping6 = self.ping6.clone().ok_or_else(|| missing("VMPOD-PING6"))?;
        check(
            &format!("IPv4 lease, want {}/{}", want.ipv4, want.prefix4),
            (lease.ip, lease.prefix) == (want.ipv4, want.prefix4),
            &(lease.ip, lease.prefix),
        );
        check("IPv4 ping ok", ping.ok, &ping);
        check(
            &format!("RA from {}", want.router6),
            ra.from == Some(want.router6),
            &ra.from,
        );
        check(
            &format!("RA RDNSS {:?}", want.dns6),
            ra.rdnss == want.dns6,
            &ra.rdnss,
        );
        check(
            &format!("DHCPv6 lease {} alone", want.ipv6),
            dhcp6.addresses == [want.ipv6],
            &dhcp6.addresses,
        );
        check(
            &format!("DHCPv6 DNS {:?}", want.dns6),
            dhcp6.dns == want.dns6,
            &dhcp6.dns,
        );
        check(
            &format!("global IPv6 addresses: {} alone", want.ipv6),
            ipv6.addrs() == [want.ipv6],
            &ipv6.addresses,
        );
        check(
            &format!("IPv6 default routers: {} alone", want.router6),
            ipv6.routers == [want.router6],
            &ipv6.routers,
        );
        check(
            &format!("IPv6 nameservers in resolv.conf {:?}", want.dns6),
            ipv6.dns == want.dns6,
            &ipv6.dns,
        );
        check(
            &format!("ping6 {} ok", want.ping6),
            ping6.ok && ping6.target == IpAddr::V6(want.ping6),
            &ping6,
        );
        if !wrong.is_empty() {
            return Err(format!("the dual-stack guest: {}", wrong.join("; ")));
        }
        Ok(GuestDualStack {
            lease,
            ping,
            ra,
            dhcp6,
            ipv6,
            ping6,
        })
    }
}

/// What a dual-stack pod gives its guest (`vmpod.ipv6=1`), for [`GuestReport::dual_stack`].
#[derive(Clone, Debug)]
pub struct DualStackWant {
    /// The IPv4 lease.
    pub ipv4: Ipv4Addr,
    pub prefix4: u8,
    /// The one IPv6 address, leased by DHCPv6 (and no other global one).
    pub ipv6: Ipv6Addr,
    /// The router advertising, the only IPv6 default router.
    pub router6: Ipv6Addr,
    /// The IPv6 DNS servers: in the RA (RDNSS), the DHCPv6 reply and the resolv.conf.
    pub dns6: Vec<Ipv6Addr>,
    /// What the guest pings over IPv6 (`vmpod.ping6`), successfully.
    pub ping6: Ipv6Addr,
}

/// A dual-stack guest's reports, each present (see [`GuestReport::dual_stack`]).
#[derive(Clone, Debug)]
pub struct GuestDualStack {
    pub lease: GuestLease,
    pub ping: GuestPing,
    pub ra: GuestRa,
    pub dhcp6: GuestDhcp6,
    pub ipv6: GuestIpv6,
    pub ping6: GuestPing,
}

/// The built guest: `target/guest/{vmlinuz,initramfs.img}`, built on first use by
/// tests/guest/build.sh (idempotent, locked against parallel builds).
pub fn guest_artifacts() -> (PathBuf, PathBuf) {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let target =
            std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
        let status = Command::new("bash")
            .arg(root.join("tests/guest/build.sh"))
            .status()
            .expect("run tests/guest/build.sh");
        assert!(status.success(), "tests/guest/build.sh failed: {status}");
        target.join("guest")
    });
    (dir.join("vmlinuz"), dir.join("initramfs.img"))
}

/// How the guest's first NIC is connected.
#[derive(Clone, Debug)]
pub enum GuestNet {
    /// QEMU user-mode networking (slirp): 10.0.2.15/24, router 10.0.2.2, DNS 10.0.2.3.
    User,
    /// An existing tap device (in the namespace QEMU runs in).
    Tap { ifname: String },
    /// A new tap that QEMU creates and enslaves to `bridge` (in the namespace QEMU runs
    /// in) through an ifup script, before the guest starts.
    Bridge { bridge: String },
}

/// A disk attached to the guest.
#[derive(Clone, Debug)]
pub enum GuestDisk {
    /// A raw image on virtio-blk.
    Virtio(PathBuf),
    /// A raw image as an IDE CD-ROM.
    Cdrom(PathBuf),
}

/// How to boot the guest.
#[derive(Clone, Debug)]
pub struct GuestOptions {
    pub net: GuestNet,
    /// The NIC's MAC; QEMU's default 52:54:00:12:34:56 when `None`.
    pub mac: Option<String>,
    pub disks: Vec<GuestDisk>,
    /// Add `vmpod.hold=1`: stay up until the ACPI power button.
    pub hold: bool,
    /// Add `vmpod.ipv6=1`: take IPv6 with dhcpcd (RA, DHCPv6 or SLAAC) and report it
    /// (`VMPOD-RA`, `VMPOD-DHCP6`, `VMPOD-IPV6`, `VMPOD-PING6`).
    pub ipv6: bool,
    /// Add `vmpod.ping6=ADDR`: ping6 this instead of the IPv6 default router.
    pub ping6: Option<Ipv6Addr>,
    /// Run QEMU inside this network namespace (e.g. a pod's).
    pub netns: Option<PathBuf>,
}

impl Default for GuestOptions {
    fn default() -> Self {
        GuestOptions {
            net: GuestNet::User,
            mac: None,
            disks: Vec::new(),
            hold: false,
            ipv6: false,
            ping6: None,
            netns: None,
        }
    }
}

/// The QEMU command line for `opts` (TCG, no defaults, serial console on stdio). `dir`
/// holds the QMP socket (`qmp.sock`) and, for [`GuestNet::Bridge`], the ifup script.
pub fn qemu_args(kernel: &Path, initrd: &Path, dir: &Path, opts: &GuestOptions) -> Vec<String> {
    let qmp = dir.join("qmp.sock");
    let mut append = String::from("console=ttyS0 quiet panic=-1");
    if opts.hold {
        append.push_str(" vmpod.hold=1");
    }
    if opts.ipv6 {
        append.push_str(" vmpod.ipv6=1");
    }
    if let Some(target) = opts.ping6 {
        append.push_str(&format!(" vmpod.ping6={target}"));
    }
    let netdev = match &opts.net {
        GuestNet::User => "user,id=n0".to_string(),
        GuestNet::Tap { ifname } => format!("tap,id=n0,ifname={ifname},script=no,downscript=no"),
        GuestNet::Bridge { .. } => format!(
            "tap,id=n0,script={},downscript=no",
            dir.join("ifup").display()
        ),
    };
    let mut nic = "virtio-net-pci,netdev=n0,romfile=".to_string();
    if let Some(mac) = &opts.mac {
        nic.push_str(&format!(",mac={mac}"));
    }
    let mut args: Vec<String> = [
        "-accel",
        "tcg",
        "-machine",
        "pc",
        "-m",
        "256",
        "-nodefaults",
        "-no-reboot",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-monitor",
        "none",
    ]
    .map(String::from)
    .to_vec();
    args.extend([
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", qmp.display()),
    ]);
    args.extend([
        "-kernel".into(),
        kernel.display().to_string(),
        "-initrd".into(),
        initrd.display().to_string(),
    ]);
    args.extend([
        "-append".into(),
        append,
        "-netdev".into(),
        netdev,
        "-device".into(),
        nic,
    ]);
    for (i, d) in opts.disks.iter().enumerate() {
        let drive = match d {
            GuestDisk::Virtio(p) => format!("file={},format=raw,if=virtio,index={i}", p.display()),
            GuestDisk::Cdrom(p) => format!(
                "file={},format=raw,media=cdrom,if=ide,index={i}",
                p.display()
            ),
        };
        args.extend(["-drive".into(), drive]);
    }
    args
}

#[derive(Default)]
struct Console {
    text: String,
    /// When each `VMPOD-` kind first appeared, measured from QEMU's start, and the CPU
    /// time QEMU had used by then.
    seen: BTreeMap<String, (Duration, Option<Duration>)>,
    closed: bool,
}

/// A running QEMU with the test guest. Killed (and reaped) on drop.
pub struct QemuGuest {
    child: Child,
    console: Arc<(Mutex<Console>, Condvar)>,
    qmp: PathBuf,
    _dir: tempfile::TempDir,
    pub started: Instant,
}

impl QemuGuest {
    pub fn boot(opts: &GuestOptions) -> QemuGuest {
        let (kernel, initrd) = guest_artifacts();
        let dir = tempfile::tempdir().unwrap();
        let qmp = dir.path().join("qmp.sock");
        if let GuestNet::Bridge { bridge } = &opts.net {
            write_ifup(&dir.path().join("ifup"), bridge);
        }
        let args = qemu_args(&kernel, &initrd, dir.path(), opts);
        let mut cmd = match &opts.netns {
            Some(ns) => vmpod::sandbox::command_in(ns, "qemu-system-x86_64").unwrap(),
            None => Command::new("qemu-system-x86_64"),
        };
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd.spawn().expect("start qemu-system-x86_64");
        let pid = child.id();
        let console: Arc<(Mutex<Console>, Condvar)> = Arc::default();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let console = Arc::clone(&console);
            std::thread::spawn(move || pump(stream, &console, started, pid));
        }
        QemuGuest {
            child,
            console,
            qmp,
            _dir: dir,
            started,
        }
    }

    /// The console so far.
    pub fn console(&self) -> String {
        self.console.0.lock().unwrap().text.clone()
    }

    /// When the guest first printed `VMPOD-<kind>`, from QEMU's start.
    pub fn seen_at(&self, kind: &str) -> Option<Duration> {
        self.console.0.lock().unwrap().seen.get(kind).map(|s| s.0)
    }

    /// The CPU time (user + system, all threads) QEMU had used when the guest first
    /// printed `VMPOD-<kind>`: what the boot costs, independent of other load on the host.
    pub fn cpu_at(&self, kind: &str) -> Option<Duration> {
        self.console
            .0
            .lock()
            .unwrap()
            .seen
            .get(kind)
            .and_then(|s| s.1)
    }

    /// Wait until `done` holds for the parsed console, QEMU's output ends, or `timeout`.
    pub fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&GuestReport) -> bool,
    ) -> Result<GuestReport, String> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.console;
        let mut c = lock.lock().unwrap();
        loop {
            let report = GuestReport::parse(&c.text)
                .map_err(|e| format!("{e}\n--- console ---\n{}", c.text))?;
            if done(&report) {
                return Ok(report);
            }
            let now = Instant::now();
            if c.closed || now >= deadline {
                let why = if c.closed { "QEMU exited" } else { "timed out" };
                return Err(format!(
                    "{why} after {:?}\n--- console ---\n{}",
                    self.started.elapsed(),
                    c.text
                ));
            }
            c = cv.wait_timeout(c, deadline - now).unwrap().0;
        }
    }

    /// Wait for QEMU to exit by itself within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "QEMU still running after {timeout:?}\n--- console ---\n{}",
                    self.console()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Run one QMP command (e.g. `system_powerdown`) and return its `return` value.
    pub fn qmp(&self, command: &str) -> Result<Value, String> {
        let s = UnixStream::connect(&self.qmp)
            .map_err(|e| format!("connect {}: {e}", self.qmp.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let mut read = || -> Result<Value, String> {
            loop {
                let mut line = String::new();
                r.read_line(&mut line)
                    .map_err(|e| format!("read QMP: {e}"))?;
                let v: Value =
                    serde_json::from_str(&line).map_err(|e| format!("QMP line {line:?}: {e}"))?;
                if v.get("event").is_none() {
                    return Ok(v);
                }
            }
        };
        read()?; // greeting
        for cmd in ["qmp_capabilities", command] {
            writeln!(w, "{{\"execute\":\"{cmd}\"}}").map_err(|e| format!("write QMP: {e}"))?;
            let v = read()?;
            if let Some(e) = v.get("error") {
                return Err(format!("QMP {cmd}: {e}"));
            }
            if cmd == command {
                return Ok(v["return"].clone());
            }
        }
        unreachable!()
    }
}

impl Drop for QemuGuest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// QEMU's tap ifup script: enslave the new tap (`$1`) to `bridge` and bring it up.
fn write_ifup(path: &Path, bridge: &str) {
    use std::os::unix::fs::PermissionsExt;
    let script = format!("#!/bin/sh\nexec ip link set dev \"$1\" master {bridge} up\n");
    std::fs::write(path, script).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// User + system CPU time of process `pid` (all its threads), from /proc/PID/stat.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    Some(Duration::from_secs_f64(ticks as f64 / hz as f64))
}

fn pump(
    stream: Box<dyn Read + Send>,
    console: &(Mutex<Console>, Condvar),
    started: Instant,
    pid: u32,
) {
    let mut r = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = r.read_until(b'\n', &mut buf).unwrap_or(0);
        let (lock, cv) = console;
        let mut c = lock.lock().unwrap();
        if n == 0 {
            c.closed = true;
            cv.notify_all();
            return;
        }
        let line = String::from_utf8_lossy(&buf);
        if let Some(i) = line.find("VMPOD-") {
            let kind = line[i..]
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            c.seen
                .entry(kind)
                .or_insert_with(|| (started.elapsed(), cpu_time(pid)));
        }
        c.text.push_str(&line);
        cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONSOLE: &str = "\x1bc\x1b[?7l\x1b[2JVMPOD-BOOT {\"kernel\":\"6.1.0-56-cloud-amd64\",\"uptime\":1.63}\r\n\
VMPOD-DMI {\"chassis_vendor\":\"QEMU\",\"chassis_version\":\"pc-q35-7.2\",\"chassis_serial\":\"\",\"chassis_asset_tag\":\"\"}\r\n\
udhcpc: started, v1.35.0\r\n\
VMPOD-LEASE {\"event\":\"bound\",\"iface\":\"eth0\",\"mac\":\"52:54:00:12:34:56\",\"ip\":\"10.0.2.15\",\"prefix\":24,\"routers\":[\"10.0.2.2\"],\"dns\":[\"10.0.2.3\"],\"mtu\":1450,\"link_mtu\":1450,\"hostname\":\"vm1\",\"domain\":null,\"search\":[\"a.example\",\"b.example\"],\"routes\":[{\"dst\":\"192.168.9.0/24\",\"via\":\"10.0.2.2\"}],\"server\":\"10.0.2.2\",\"lease_s\":86400,\"uptime\":2.86}\r\n\
VMPOD-PING {\"target\":\"10.0.2.2\",\"ok\":true,\"rtt_ms\":6.094}\r\n\
VMPOD-CIDATA-BEGIN {\"file\":\"user-data\",\"device\":\"/dev/vda\",\"fs\":\"vfat\"}\r\n\
#cloud-config\r\n\
VMPOD-not-a-tag inside user-data stays\r\n\
VMPOD-CIDATA-END {\"file\":\"user-data\"}\r\n\
VMPOD-HTTP {\"ports\":[80,8080],\"page\":\"vmpod test guest page\"}\r\n\
VMPOD-POWEROFF {\"uptime\":2.93}\r\n\
[    2.923786] reboot: Power down\r\n";

    #[test]
    fn parses_every_report_line() {
        let r = GuestReport::parse(CONSOLE).unwrap();
        assert_eq!(r.boot.unwrap().kernel, "6.1.0-56-cloud-amd64");
        let http = r.http.unwrap();
        assert_eq!(http.ports, [80, 8080]);
        assert_eq!(http.page.as_deref(), Some("vmpod test guest page"));
        let dmi = r.dmi.unwrap();
        assert_eq!(
            (dmi.chassis_vendor.as_str(), dmi.chassis_serial.as_str()),
            ("QEMU", "")
        );
        let l = r.lease.unwrap();
        assert_eq!(
            (l.ip, l.prefix, l.router()),
            (
                "10.0.2.15".parse().unwrap(),
                24,
                Some("10.0.2.2".parse().unwrap())
            )
        );
        assert_eq!(
            (l.mtu, l.link_mtu, l.hostname.as_deref()),
            (Some(1450), 1450, Some("vm1"))
        );
        assert_eq!(l.search, ["a.example", "b.example"]);
        assert_eq!(
            l.routes,
            [GuestRoute {
                dst: "192.168.9.0/24".into(),
                via: "10.0.2.2".parse().unwrap()
            }]
        );
        let p = r.ping.unwrap();
        assert!(p.ok && p.rtt_ms == Some(6.094));
        assert_eq!(
            r.cidata["user-data"],
            "#cloud-config\nVMPOD-not-a-tag inside user-data stays\n"
        );
        assert_eq!(r.cidata_source, Some(("/dev/vda".into(), "vfat".into())));
        assert!(r.powered_off && !r.holding && !r.lease_failed);
    }

    #[test]
    fn a_line_still_being_written_waits_for_its_end() {
        let partial = "VMPOD-BOOT {\"kernel\":\"k\",\"uptime\":1.0}\nVMPOD-LEASE {\"event\":\"bou";
        let r = GuestReport::parse(partial).unwrap();
        assert!(r.boot.is_some() && r.lease.is_none());
    }

    #[test]
    fn a_garbled_report_is_an_error_naming_the_line() {
        let e = GuestReport::parse("VMPOD-LEASE {\"ip\":\"10.0.2\"}\n").unwrap_err();
        assert!(e.to_string().contains("VMPOD-LEASE"), "{e}");
    }

    const DUAL_STACK: &str = "VMPOD-LEASE {\"event\":\"bound\",\"iface\":\"eth0\",\"mac\":\"02:00:00:00:00:01\",\"ip\":\"10.244.9.23\",\"prefix\":24,\"routers\":[\"10.244.9.1\"],\"dns\":[],\"mtu\":null,\"link_mtu\":1500,\"hostname\":null,\"domain\":null,\"search\":[],\"routes\":[],\"server\":null,\"lease_s\":null,\"uptime\":2.0}\n\
VMPOD-PING {\"target\":\"10.244.9.1\",\"ok\":true,\"rtt_ms\":1.0}\n\
VMPOD-RA {\"iface\":\"eth0\",\"from\":\"fe80::1\",\"prefixes\":[\"fd77:9::/64\"],\"mtu\":1400,\"rdnss\":[\"fd77:9::53\"],\"dnssl\":[\"cluster.local\"],\"uptime\":4.7}\n\
VMPOD-DHCP6 {\"event\":\"BOUND6\",\"iface\":\"eth0\",\"addresses\":[\"fd77:9::23\"],\"dns\":[\"fd77:9::53\"],\"search\":[\"cluster.local\"],\"server_id\":\"0003000102000000000a\",\"uptime\":6.0}\n\
VMPOD-RA {\"iface\":\"eth0\",\"from\":\"fe80::2\",\"prefixes\":[],\"mtu\":null,\"rdnss\":[],\"dnssl\":[],\"uptime\":9.1}\n\
VMPOD-IPV6 {\"iface\":\"eth0\",\"addresses\":[\"fd77:9::23/128\"],\"routers\":[\"fe80::1\"],\"dns\":[\"fd77:9::53\"]}\n\
VMPOD-PING6 {\"target\":\"fd77:9::1\",\"ok\":true,\"rtt_ms\":2.4}\n";

    fn dual_stack_want() -> DualStackWant {
        DualStackWant {
            ipv4: "10.244.9.23".parse().unwrap(),
            prefix4: 24,
            ipv6: "fd77:9::23".parse().unwrap(),
            router6: "fe80::1".parse().unwrap(),
            dns6: vec!["fd77:9::53".parse().unwrap()],
            ping6: "fd77:9::1".parse().unwrap(),
        }
    }

    #[test]
    fn a_dual_stack_report_meets_what_the_pod_gives() {
        let r = GuestReport::parse(DUAL_STACK).unwrap();
        assert!(r.ipv6_settled() && !r.ipv6_failed);
        let got = r.dual_stack(&dual_stack_want()).unwrap();
        // The first advertisement and lease count.
        assert_eq!(got.ra.from, Some("fe80::1".parse().unwrap()));
        assert_eq!(got.ra.dnssl, ["cluster.local"]);
        assert_eq!(got.dhcp6.server_id.as_deref(), Some("0003000102000000000a"));
        assert_eq!(
            got.ipv6.addrs(),
            ["fd77:9::23".parse::<Ipv6Addr>().unwrap()]
        );
    }

    #[test]
    fn a_dual_stack_mismatch_names_every_field() {
        let r = GuestReport::parse(DUAL_STACK).unwrap();
        let want = DualStackWant {
            ipv6: "fd77:9::24".parse().unwrap(),
            dns6: vec![],
            ..dual_stack_want()
        };
        let e = r.dual_stack(&want).unwrap_err();
        for what in [
            "DHCPv6 lease fd77:9::24 alone: got [fd77:9::23]",
            "global IPv6 addresses",
            "RA RDNSS []",
            "DHCPv6 DNS []",
            "IPv6 nameservers in resolv.conf",
        ] {
            assert!(e.contains(what), "{what} missing from {e}");
        }
        assert!(!e.contains("ping6"), "{e}");
        let without_ra = DUAL_STACK.replace("VMPOD-RA", "VMPOD-X");
        let e = GuestReport::parse(&without_ra)
            .unwrap()
            .dual_stack(&dual_stack_want())
            .unwrap_err();
        assert_eq!(e, "no VMPOD-RA report");
    }

    #[test]
    fn qemu_args_attach_disks_and_hold() {
        let opts = GuestOptions {
            hold: true,
            ipv6: true,
            ping6: Some("fd77::1".parse().unwrap()),
            mac: Some("02:00:00:00:00:01".into()),
            disks: vec![
                GuestDisk::Virtio("/d.img".into()),
                GuestDisk::Cdrom("/c.iso".into()),
            ],
            ..GuestOptions::default()
        };
        let a = qemu_args(Path::new("/k"), Path::new("/i"), Path::new("/d"), &opts).join(" ");
        assert!(
            a.contains("-accel tcg") && a.contains("vmpod.hold=1 vmpod.ipv6=1 vmpod.ping6=fd77::1"),
            "{a}"
        );
        assert!(
            a.contains("mac=02:00:00:00:00:01")
                && a.contains("if=virtio,index=0")
                && a.contains("media=cdrom,if=ide,index=1"),
            "{a}"
        );
    }
}
