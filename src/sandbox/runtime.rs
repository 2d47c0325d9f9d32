//! The local runtime: what kubelet + a bridge CNI do for a launcher pod, on one machine
//! with no cluster. `vmpodctl run` and `vmpod-handler local` both go through it.
//!
//! Owns: the node bridge on the host (through [`Node`], host mode), the local IPAM range,
//! each local VMI's state directory `<root>/<name>/` and in it the `pod/` directory
//! ([`PodRecord`] in `pod.json`, the resolved `vmi.json`, the pod's `resolv.conf` and
//! `hostname`, `launcher.log`), the pod's network namespace (through [`PodSandbox`]) and
//! the `vmpod-launcher run` process it starts inside that namespace with a private mount
//! and UTS namespace. Must not touch the pod network after creating it (the launcher owns
//! it from then on) and talks to a running launcher only through `control.sock` and
//! signals.
//!
//! IPAM: addresses come from one IPv4 subnet on the bridge (default
//! [`DEFAULT_SUBNET`], gateway = the first host address). An allocation is the `ip` of a
//! [`PodRecord`] under the root; records are read and written under an exclusive lock
//! (`<root>/.ipam.lock`), so two runtimes on one root never hand out one address, and a
//! restart does not reuse the address of a pod whose record is still there.

use super::SandboxError;
use super::ipam::{gateway_of, parse_subnet, pick_address};
use super::pod::{Node, PodSandbox, remove_host_pod};
use super::spec::{NodeSide, NodeSpec, PodSpec};
use crate::api::ValidVmi;
use crate::control::{
    ControlClient, LauncherStatus, Peer, PodIdentity, local_root, local_state_dir, status_from_dir,
};
use crate::file::{PathIoError, io_err};
use crate::net::{IpCidr, MacAddr};
use crate::statedir::StateDir;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::ffi::{CString, OsString};
use std::fs::{self, File};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The default node bridge.
pub const DEFAULT_BRIDGE: &str = "vmpod0";
/// The default local IPAM range: private, used only on this machine's own bridge.
pub const DEFAULT_SUBNET: &str = "10.222.0.0/24";
/// Environment: the node bridge name.
pub const BRIDGE_ENV: &str = "VMPOD_BRIDGE";
/// Environment: the local IPAM range (`a.b.c.d/len`).
pub const SUBNET_ENV: &str = "VMPOD_SUBNET";
/// Environment: the `vmpod-launcher` binary.
pub const LAUNCHER_ENV: &str = "VMPOD_LAUNCHER";
const IPAM_LOCK: &str = ".ipam.lock";
/// How long a supervised launcher is asked to hold a status read until its status
/// changes (a long poll: each change is seen as it happens, nothing is read meanwhile).
const LONG_POLL: Duration = Duration::from_secs(30);
/// The pause before reading again after a read failed (the launcher not listening yet, or
/// gone) or from a launcher that cannot hold a read.
const POLL: Duration = Duration::from_millis(200);
/// How long one status read (socket, or status.json) of a supervised launcher may take.
const POLL_TIMEOUT: Duration = Duration::from_secs(1);

/// What went wrong in the local runtime, naming the VMI, file or setting involved.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("setting {name}={value:?}: {why}")]
    Config {
        name: &'static str,
        value: String,
        why: String,
    },
    #[error("VMI {name}: already running in a local pod (launcher pid {pid})")]
    AlreadyRunning { name: String, pid: u32 },
    #[error(
        "VMI {name}: the name is too long for a local pod under {root:?}: use a name of at \
         most {max} characters or a shorter VMPOD_LOCAL_ROOT"
    )]
    NameTooLong {
        name: String,
        root: PathBuf,
        max: usize,
        source: crate::domain::daemons::SocketPathTooLong,
    },
    #[error("VMI {name}: no free address left in {subnet}")]
    NoAddress { name: String, subnet: IpCidr },
    #[error(transparent)]
    Io(#[from] PathIoError),
    #[error("{}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}", invalid_lines(file, errors))]
    Invalid {
        file: PathBuf,
        errors: Vec<crate::api::FieldError>,
    },
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    State(#[from] crate::control::state::StateError),
}

type Result<T> = std::result::Result<T, RuntimeError>;

fn invalid_lines(file: &Path, errors: &[crate::api::FieldError]) -> String {
    let lines: Vec<String> = errors
        .iter()
        .map(|e| format!("{}: {e}", file.display()))
        .collect();
    format!(
        "{}\n{}: {} error(s)",
        lines.join("\n"),
        file.display(),
        errors.len()
    )
}

/// Read, validate and default a VMI manifest, and make its local file paths absolute
/// (relative ones are taken from the current directory): what a local pod's launcher gets.
pub fn load_manifest(file: &Path) -> Result<ValidVmi> {
    let text = fs::read_to_string(file).map_err(io_err("read manifest", file))?;
    let mut vmi = crate::api::load_valid_vmi(&text).map_err(|errors| RuntimeError::Invalid {
        file: file.to_path_buf(),
        errors,
    })?;
    let cwd = std::env::current_dir().map_err(io_err("find the current directory", "."))?;
    vmi.resolve_relative_paths(&cwd);
    Ok(vmi)
}

/// Where and how local pods are made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalConfig {
    /// State dirs live in `<root>/<name>/` (`$VMPOD_LOCAL_ROOT`, default /run/vmpod/vms).
    pub root: PathBuf,
    /// The node bridge on the host.
    pub bridge: String,
    /// The IPAM range: an IPv4 network and prefix.
    pub subnet: IpCidr,
    /// The pods' default gateway, held by the bridge: the subnet's first host address.
    pub gateway: Ipv4Addr,
    /// Nameservers and search domains written to each pod's resolv.conf.
    pub dns: Vec<IpAddr>,
    pub search: Vec<String>,
    pub mtu: u32,
    /// The `vmpod-launcher` binary.
    pub launcher: PathBuf,
}

impl LocalConfig {
    /// From the environment ([`BRIDGE_ENV`], [`SUBNET_ENV`], [`LAUNCHER_ENV`],
    /// `VMPOD_LOCAL_ROOT`), the host's resolv.conf (non-loopback nameservers), and the
    /// launcher next to the current executable.
    pub fn from_env() -> Result<Self> {
        let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
        let subnet_text = var(SUBNET_ENV).unwrap_or_else(|| DEFAULT_SUBNET.into());
        let subnet = parse_subnet(&subnet_text).map_err(|why| RuntimeError::Config {
            name: SUBNET_ENV,
            value: subnet_text.clone(),
            why,
        })?;
        let bridge = var(BRIDGE_ENV).unwrap_or_else(|| DEFAULT_BRIDGE.into());
        if bridge.is_empty() || bridge.len() > 15 || bridge.contains('/') {
            return Err(RuntimeError::Config {
                name: BRIDGE_ENV,
                value: bridge,
                why: "an interface name has 1 to 15 bytes and no '/'".into(),
            });
        }
        let launcher = match var(LAUNCHER_ENV) {
            Some(p) => PathBuf::from(p),
            None => std::env::current_exe()
                .map_err(io_err("find the current executable", "/proc/self/exe"))?
                .with_file_name("vmpod-launcher"),
        };
        let (dns, search) = fs::read_to_string("/etc/resolv.conf")
            .map(|t| host_dns(&t))
            .unwrap_or_default();
        Ok(LocalConfig {
            root: local_root(),
            bridge,
            gateway: gateway_of(subnet),
            subnet,
            dns,
            search,
            mtu: 1500,
            launcher,
        })
    }

    /// The bridge's address: the gateway with the subnet's prefix.
    pub fn gateway_cidr(&self) -> IpCidr {
        IpCidr::new(self.gateway.into(), self.subnet.prefix)
    }
}

/// Pure: the nameservers (loopback ones dropped: a pod cannot reach the host's loopback)
/// and search domains of the host's resolv.conf, read by the one parser
/// ([`crate::net::parse_resolv_conf`]).
pub fn host_dns(resolv_conf: &str) -> (Vec<IpAddr>, Vec<String>) {
    let mut conf = crate::net::parse_resolv_conf(resolv_conf);
    conf.nameservers.retain(|a| !a.is_loopback());
    (conf.nameservers, conf.search)
}

/// What the runtime made for one local VMI, kept in `<state-dir>/pod/pod.json` so a
/// restarted runtime can find, adopt or remove it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    /// The VMI's name (the state dir's name).
    pub name: String,
    /// The pod's network namespace, `/run/netns/<netns>`.
    pub netns: String,
    /// The node end of the pod's veth, on `bridge`.
    pub node_veth: String,
    pub bridge: String,
    /// The pod address (the IPAM allocation) and its gateway.
    pub ip: IpCidr,
    pub gateway: Ipv4Addr,
    pub mac: MacAddr,
    /// The launcher's pid, once started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launcher_pid: Option<u32>,
}

fn read_record(state_dir: &Path) -> Result<Option<PodRecord>> {
    let path = StateDir::new(state_dir).pod().record();
    match fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|source| RuntimeError::Json { path, source }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", path)(e).into()),
    }
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let json = serde_json::to_vec_pretty(value).map_err(|source| RuntimeError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    crate::file::write_atomic(path, &json, crate::file::Durability::Rename)
        .map_err(io_err("write", path))?;
    Ok(())
}

/// The inode of a network namespace file (`/run/netns/X` or `/proc/PID/ns/net`).
fn netns_inode(path: &Path) -> Option<(u64, u64)> {
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The processes whose network namespace is the one at `netns` (pid reuse safe).
fn processes_in(netns: &Path) -> Vec<u32> {
    let Some(target) = netns_inode(netns) else {
        return Vec::new();
    };
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            netns_inode(&Path::new("/proc").join(pid.to_string()).join("ns/net")) == Some(target)
        })
        .collect()
}

/// One local pod: its record and state dir. Made by [`LocalRuntime::create_pod`] or found
/// by [`LocalRuntime::adopt`]; removed by [`LocalPod::teardown`].
#[derive(Debug)]
pub struct LocalPod {
    record: PodRecord,
    state_dir: PathBuf,
}

impl LocalPod {
    pub fn record(&self) -> &PodRecord {
        &self.record
    }

    pub fn name(&self) -> &str {
        &self.record.name
    }

    /// `<root>/<name>`: the launcher's `--state-dir`.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// `/run/netns/<netns>`.
    pub fn netns_path(&self) -> PathBuf {
        crate::net::netns::path(&self.record.netns)
    }

    /// Which pod this is, as the runtime knows it: the network namespace it made. The
    /// state dir is QEMU's too (group 107), so what is in it proves nothing.
    pub fn identity(&self) -> PodIdentity {
        PodIdentity::Netns(self.netns_path())
    }

    /// The client for the launcher's control socket; once the launcher runs, only it (its
    /// pid, in this pod's network namespace) is talked to.
    pub fn client(&self) -> ControlClient {
        let client = ControlClient::new(StateDir::new(&self.state_dir).control_socket());
        match self.record.launcher_pid {
            Some(pid) => client.with_peer(Peer {
                pid,
                pod: self.identity(),
            }),
            None => client,
        }
    }

    /// The VMI as handed to the launcher (defaults applied, paths absolute).
    pub fn vmi_path(&self) -> PathBuf {
        StateDir::new(&self.state_dir).pod().vmi()
    }

    /// The launcher's standard output and error.
    pub fn launcher_log_path(&self) -> PathBuf {
        StateDir::new(&self.state_dir).pod().launcher_log()
    }

    /// True while the recorded launcher runs inside this pod's namespace.
    pub fn launcher_alive(&self) -> bool {
        self.record.launcher_pid.is_some_and(|pid| {
            let proc_ns = Path::new("/proc").join(pid.to_string()).join("ns/net");
            netns_inode(&proc_ns).is_some()
                && netns_inode(&proc_ns) == netns_inode(&self.netns_path())
        })
    }

    /// Start `launcher run --vmi <vmi.json> --state-dir <state-dir> <launcher_args>`
    /// (the node's settings: host disk directories, boot slots) inside the pod: its
    /// network namespace, a private mount namespace with the pod's resolv.conf and
    /// hostname bound over /etc's, a UTS namespace with the pod's hostname, and a process
    /// group of its own (a terminal's Ctrl-C reaches only whoever supervises it). With
    /// `die_with_parent` the launcher gets SIGTERM (its graceful stop) if the calling
    /// thread dies. Must run inside a tokio runtime.
    pub fn spawn_launcher(
        &mut self,
        launcher: &Path,
        launcher_args: &[OsString],
        die_with_parent: bool,
    ) -> Result<tokio::process::Child> {
        let netns = self.netns_path();
        let ns = File::open(&netns).map_err(io_err("open pod netns", &netns))?;
        let dir = StateDir::new(&self.state_dir).pod();
        let cstr = |p: &Path| {
            CString::new(p.as_os_str().as_bytes()).expect("paths from the runtime hold no NUL")
        };
        let resolv = cstr(&dir.resolv_conf());
        let hostname_file = cstr(&dir.hostname());
        let hostname = self.record.name.clone();
        // Every named netns mount, dropped from the launcher's mount namespace copy so it
        // does not keep other pods' namespaces alive after they are deleted.
        let netns_mounts: Vec<CString> = fs::read_dir(crate::net::netns::NETNS_RUN_DIR)
            .map(|d| d.flatten().map(|e| cstr(&e.path())).collect())
            .unwrap_or_default();
        let log_path = self.launcher_log_path();
        let log = File::create(&log_path).map_err(io_err("create", &log_path))?;
        let log2 = log.try_clone().map_err(io_err("duplicate", &log_path))?;
        let mut cmd = tokio::process::Command::new(launcher);
        cmd.arg("run")
            .arg("--vmi")
            .arg(self.vmi_path())
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(launcher_args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .kill_on_drop(false);
        // SAFETY: the closure runs in the forked child before exec. It only makes system
        // calls (setns, unshare, mount, umount2, sethostname, prctl) on values prepared before the
        // fork (an open fd, C strings), and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                enter_pod(
                    &ns,
                    &resolv,
                    &hostname_file,
                    &hostname,
                    &netns_mounts,
                    die_with_parent,
                )
            });
        }
        let child = cmd.spawn().map_err(io_err("start launcher", launcher))?;
        self.record.launcher_pid = child.id();
        write_json(&dir.record(), &self.record)?;
        tracing::info!(vmi = %self.record.name, pid = ?child.id(), netns = %self.record.netns, "launcher started");
        Ok(child)
    }

    /// Remove everything the pod was: processes still inside its network namespace
    /// (libvirtd, QEMU, ...; SIGKILL), its veth and namespace, its state dir. Idempotent.
    pub fn teardown(self) -> Result<()> {
        let netns = self.netns_path();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = processes_in(&netns);
            if left.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                tracing::warn!(vmi = %self.record.name, ?left, "processes survive SIGKILL");
                break;
            }
            for pid in left {
                tracing::warn!(vmi = %self.record.name, pid, "killing a process left in the pod");
                if let Ok(p) = i32::try_from(pid) {
                    let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        remove_host_pod(&self.record.node_veth, &self.record.netns)?;
        match fs::remove_dir_all(&self.state_dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(io_err("remove state dir", &self.state_dir)(e).into())
            }
            _ => Ok(()),
        }
    }
}

/// In the forked child: join the pod. Only system calls on pre-built values.
fn enter_pod(
    ns: &File,
    resolv: &std::ffi::CStr,
    hostname_file: &std::ffi::CStr,
    hostname: &str,
    netns_mounts: &[CString],
    die_with_parent: bool,
) -> io::Result<()> {
    use nix::mount::{MsFlags, mount};
    use nix::sched::{CloneFlags, setns, unshare};
    setns(ns, CloneFlags::CLONE_NEWNET)?;
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS)?;
    mount(
        None::<&std::ffi::CStr>,
        c"/",
        None::<&std::ffi::CStr>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&std::ffi::CStr>,
    )?;
    mount(
        Some(resolv),
        c"/etc/resolv.conf",
        None::<&std::ffi::CStr>,
        MsFlags::MS_BIND,
        None::<&std::ffi::CStr>,
    )?;
    match mount(
        Some(hostname_file),
        c"/etc/hostname",
        None::<&std::ffi::CStr>,
        MsFlags::MS_BIND,
        None::<&std::ffi::CStr>,
    ) {
        Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    for m in netns_mounts {
        // Not ours to keep; one already gone is fine.
        let _ = nix::mount::umount2(m.as_c_str(), nix::mount::MntFlags::MNT_DETACH);
    }
    nix::unistd::sethostname(hostname)?;
    if die_with_parent {
        nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
    }
    Ok(())
}

/// The local runtime: the node bridge plus the IPAM range and root it hands pods from.
#[derive(Debug)]
pub struct LocalRuntime {
    cfg: LocalConfig,
    node: Arc<Node>,
}

impl LocalRuntime {
    /// Create (or adopt) the node bridge with the gateway address, and the root.
    pub fn new(cfg: LocalConfig) -> Result<Self> {
        fs::create_dir_all(&cfg.root).map_err(io_err("create local root", &cfg.root))?;
        let node = Node::create(&NodeSpec {
            side: NodeSide::Host,
            bridge: cfg.bridge.clone(),
            addresses: vec![cfg.gateway_cidr()],
        })?;
        Ok(LocalRuntime { cfg, node })
    }

    pub fn config(&self) -> &LocalConfig {
        &self.cfg
    }

    /// The state dir of VMI `name`.
    pub fn state_dir(&self, name: &str) -> Result<PathBuf> {
        Ok(local_state_dir(&self.cfg.root, name)?)
    }

    /// The pod of VMI `name` from its record, whether or not its launcher still runs.
    pub fn find(&self, name: &str) -> Result<Option<LocalPod>> {
        let state_dir = self.state_dir(name)?;
        Ok(read_record(&state_dir)?.map(|record| LocalPod { record, state_dir }))
    }

    /// The pod's libvirt lives in its state dir (local pods have no separate scratch
    /// dir), so the VMI's name is in libvirt's monitor socket path twice (the state dir,
    /// and the first 20 characters of the domain name in libvirt's domain dir): refuse a
    /// name that makes it too long before anything is made, naming the longest that fits.
    fn check_name_fits(&self, vmi: &ValidVmi, state_dir: &Path) -> Result<()> {
        let layout = crate::domain::daemons::LibvirtLayout::new(state_dir);
        let name = vmi.name();
        let domain = crate::domain::domain_name(vmi);
        layout.check_monitor_socket(&domain).map_err(|source| {
            // The path with a name of `n` characters: the state dir shortens by as much,
            // the domain dir's short name (at most 20) with it.
            let short = |n: usize| (domain.len() - name.len() + n).min(20);
            let fixed = source.len - name.len() - short(name.len());
            let max = (0..name.len())
                .rev()
                .find(|&n| fixed + n + short(n) <= crate::domain::daemons::UNIX_PATH_MAX)
                .unwrap_or(0);
            RuntimeError::NameTooLong {
                name: name.to_string(),
                root: self.cfg.root.clone(),
                max,
                source,
            }
        })
    }

    /// Hold the IPAM lock while `f` runs.
    fn with_ipam_lock<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        use nix::fcntl::{Flock, FlockArg};
        let path = self.cfg.root.join(IPAM_LOCK);
        let file = File::create(&path).map_err(io_err("create", &path))?;
        let _lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| io_err("lock", &path)(e.into()))?;
        f()
    }

    /// The addresses held by records under the root.
    fn allocated(&self) -> Result<BTreeSet<Ipv4Addr>> {
        let mut used = BTreeSet::new();
        for (_, dir) in crate::control::list_local(&self.cfg.root)? {
            if let Some(IpAddr::V4(a)) = read_record(&dir)?.map(|r| r.ip.addr) {
                used.insert(a);
            }
        }
        Ok(used)
    }

    /// Make the pod for `vmi`: state dir, an address, the network namespace with `eth0`
    /// on the bridge, resolv.conf, hostname, and `pod/vmi.json` for the launcher. A dead
    /// pod of the same name is removed first; a live one is an error.
    pub fn create_pod(&self, vmi: &ValidVmi) -> Result<LocalPod> {
        let name = vmi.name().to_string();
        let state_dir = self.state_dir(&name)?;
        self.check_name_fits(vmi, &state_dir)?;
        if let Some(old) = self.find(&name)? {
            if old.launcher_alive() {
                return Err(RuntimeError::AlreadyRunning {
                    name,
                    pid: old.record.launcher_pid.unwrap_or(0),
                });
            }
            tracing::info!(vmi = %name, "removing the remains of an earlier pod");
            old.teardown()?;
        }
        let dir = StateDir::new(&state_dir).pod();
        let ip = self.with_ipam_lock(|| {
            let ip = pick_address(self.cfg.subnet, self.cfg.gateway, &self.allocated()?)
                .ok_or_else(|| RuntimeError::NoAddress {
                    name: name.clone(),
                    subnet: self.cfg.subnet,
                })?;
            fs::create_dir_all(dir.path()).map_err(io_err("create pod dir", dir.path()))?;
            let placeholder = PodRecord {
                name: name.clone(),
                netns: String::new(),
                node_veth: String::new(),
                bridge: self.cfg.bridge.clone(),
                ip: IpCidr::new(ip.into(), self.cfg.subnet.prefix),
                gateway: self.cfg.gateway,
                mac: MacAddr::random_local(),
                launcher_pid: None,
            };
            write_json(&dir.record(), &placeholder)?;
            Ok(placeholder)
        })?;
        let mut spec = PodSpec::new(&name, ip.ip, self.cfg.gateway);
        spec.mac = ip.mac;
        spec.mtu = self.cfg.mtu;
        spec.dns = self.cfg.dns.clone();
        spec.search = self.cfg.search.clone();
        spec.state_dir = Some(dir.path().to_path_buf());
        let mut record = ip;
        record.netns = spec.netns_name();
        let created = PodSandbox::create_on(&self.node, &spec)
            .map_err(RuntimeError::from)
            .and_then(|sb| {
                record.node_veth = sb.node_veth().to_string();
                sb.leave_in_place();
                write_json(&dir.record(), &record)?;
                write_json(&dir.vmi(), vmi)
            });
        let pod = LocalPod { record, state_dir };
        if let Err(e) = created {
            if let Err(t) = pod.teardown() {
                tracing::warn!(vmi = %name, error = %t, "cannot clean up a half-made pod");
            }
            return Err(e);
        }
        tracing::info!(vmi = %name, ip = %pod.record.ip, netns = %pod.record.netns, "local pod ready");
        Ok(pod)
    }
}

/// How hard a supervised VM is asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum StopLevel {
    /// Keep it running.
    Run,
    /// ACPI shutdown through the control API (SIGTERM to the launcher if it does not answer).
    Graceful,
    /// Destroy it now (`POST /v1/kill`, SIGKILL to the launcher's group if it does not answer).
    Kill,
}

/// How a supervised launcher ended.
#[derive(Debug)]
pub struct LauncherExit {
    /// The launcher's exit status; `None` for an adopted launcher (not our child).
    pub status: Option<ExitStatus>,
    /// The last status it reported (socket or status.json).
    pub last: Option<LauncherStatus>,
    /// The end of its log when it failed.
    pub log_tail: Option<String>,
}

impl LauncherExit {
    /// The exit code to pass on: the launcher's own, or from the last phase when adopted.
    pub fn code(&self) -> i32 {
        match (self.status, &self.last) {
            (Some(s), _) => s.code().unwrap_or(128 + s.signal_number()),
            (None, Some(l)) if l.phase == crate::control::Phase::Succeeded => 0,
            _ => 1,
        }
    }

    pub fn success(&self) -> bool {
        self.code() == 0
    }
}

trait SignalNumber {
    fn signal_number(&self) -> i32;
}

impl SignalNumber for ExitStatus {
    fn signal_number(&self) -> i32 {
        std::os::unix::process::ExitStatusExt::signal(self).unwrap_or(0)
    }
}

fn tail(path: &Path, lines: usize) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let all: Vec<&str> = text.lines().collect();
    Some(all[all.len().saturating_sub(lines)..].join("\n"))
}

/// Watch a pod's launcher until it exits, then tear the pod down. Calls `on_status` with
/// every new status the launcher reports; follows `stop` (graceful once, then kill).
/// `child` is `None` for an adopted launcher (watched through its pid).
pub async fn supervise(
    pod: LocalPod,
    mut child: Option<tokio::process::Child>,
    mut stop: watch::Receiver<StopLevel>,
    mut on_status: impl FnMut(&LauncherStatus),
) -> Result<LauncherExit> {
    let client = pod.client();
    let mut last: Option<LauncherStatus> = None;
    let mut acted = StopLevel::Run;
    let mut stop_open = true;
    // One status read in flight at a time, kept across the wake-ups for a stop or the
    // launcher's exit (dropping it would leave the launcher holding it to its end).
    let mut seen: Option<u64> = None;
    let mut read = Box::pin(read_status(&client, seen, Duration::ZERO));
    let status = loop {
        let exited = match &mut child {
            Some(c) => c
                .try_wait()
                .map_err(io_err("wait for launcher of", pod.state_dir()))?
                .map(Some),
            None => (!pod.launcher_alive()).then_some(None),
        };
        if let Some(status) = exited {
            break status;
        }
        let wanted = *stop.borrow();
        if wanted > acted {
            acted = wanted;
            request_stop(&pod, &client, wanted, last.as_ref()).await;
        }
        let child_exit = async {
            match &mut child {
                Some(c) => drop(c.wait().await),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = &mut read => {
                let pause = match r {
                    StatusRead::Changed(s, version) => {
                        let s = *s;
                        if last.as_ref() != Some(&s) {
                            on_status(&s);
                            last = Some(s);
                        }
                        seen = version;
                        version.is_none()
                    }
                    // Ask again with the same version.
                    StatusRead::Unchanged => false,
                    StatusRead::Failed => {
                        seen = None;
                        true
                    }
                };
                let pause = if pause { POLL } else { Duration::ZERO };
                read = Box::pin(read_status(&client, seen, pause));
            }
            changed = stop.changed(), if stop_open => stop_open = changed.is_ok(),
            () = child_exit => {}
        }
    };
    // The last status written, read without trusting the state dir (a FIFO there must not
    // hold the supervisor).
    if let Ok((s, _)) = status_from_dir(pod.state_dir(), &pod.identity(), POLL_TIMEOUT).await
        && last.as_ref() != Some(&s)
    {
        on_status(&s);
        last = Some(s);
    }
    let mut exit = LauncherExit {
        status,
        last,
        log_tail: None,
    };
    if !exit.success() {
        exit.log_tail = tail(&pod.launcher_log_path(), 30);
    }
    tokio::task::spawn_blocking(move || pod.teardown())
        .await
        .map_err(|e| io_err("tear down pod", "")(io::Error::other(e)))??;
    Ok(exit)
}

/// What one long-poll read of a launcher's status came to.
enum StatusRead {
    /// Its status, not version `seen`, and its version (`None`: it tags none).
    Changed(Box<LauncherStatus>, Option<u64>),
    /// Still version `seen` at the end of the long poll.
    Unchanged,
    /// Not listening yet, gone, or not answering in time.
    Failed,
}

/// After `pause`, the launcher's status once it is not version `seen` (any, without one).
async fn read_status(client: &ControlClient, seen: Option<u64>, pause: Duration) -> StatusRead {
    tokio::time::sleep(pause).await;
    let read = tokio::time::timeout(
        LONG_POLL + POLL_TIMEOUT,
        client.status_change(seen, LONG_POLL),
    );
    match read.await {
        Ok(Ok(Some((status, version)))) => StatusRead::Changed(Box::new(status), version),
        Ok(Ok(None)) => StatusRead::Unchanged,
        Ok(Err(_)) | Err(_) => StatusRead::Failed,
    }
}

async fn request_stop(
    pod: &LocalPod,
    client: &ControlClient,
    level: StopLevel,
    last: Option<&LauncherStatus>,
) {
    let name = pod.name();
    let asked = match level {
        StopLevel::Run => return,
        StopLevel::Graceful => client.shutdown(None).await,
        StopLevel::Kill => client.kill().await,
    };
    let Err(e) = asked else {
        tracing::info!(vmi = %name, ?level, "stop requested through the control API");
        return;
    };
    let signal = if level == StopLevel::Kill {
        Signal::SIGKILL
    } else {
        Signal::SIGTERM
    };
    tracing::info!(vmi = %name, error = %e, ?signal, phase = ?last.map(|l| l.phase), "control API did not take the stop: signalling the launcher");
    if let Some(pid) = pod.record.launcher_pid.and_then(|p| i32::try_from(p).ok()) {
        let target = if level == StopLevel::Kill {
            Pid::from_raw(-pid)
        } else {
            Pid::from_raw(pid)
        };
        if let Err(e) = kill(target, signal) {
            tracing::warn!(vmi = %name, pid, error = %e, "cannot signal the launcher");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_dns_drops_loopback() {
        let (dns, search) = host_dns(
            "# x\nnameserver 127.0.0.53\nnameserver 192.0.2.53 # the site's\ndomain x.example\nsearch a.example b.example\noptions edns0\n",
        );
        assert_eq!(dns, vec!["192.0.2.53".parse::<IpAddr>().unwrap()]);
        assert_eq!(search, vec!["a.example", "b.example"]);
    }

    #[test]
    fn exit_code_prefers_the_launcher_status() {
        use std::os::unix::process::ExitStatusExt;
        let e = LauncherExit {
            status: Some(ExitStatus::from_raw(3 << 8)),
            last: None,
            log_tail: None,
        };
        assert_eq!(e.code(), 3);
        let e = LauncherExit {
            status: Some(ExitStatus::from_raw(9)),
            last: None,
            log_tail: None,
        };
        assert_eq!(e.code(), 137);
        let mut s = LauncherStatus::pending("a");
        s.set_phase(crate::control::Phase::Succeeded, None);
        assert!(
            LauncherExit {
                status: None,
                last: Some(s),
                log_tail: None
            }
            .success()
        );
    }
}
