//! The pod's own libvirtd, in session mode as the QEMU user, with every path it uses
//! under `<scratch-dir>/libvirt`, so two pods on one machine never collide with each
//! other or with a host libvirtd.
//!
//! # No mount namespace: session mode as the QEMU user
//!
//! libvirtd run as root is the system daemon, whose paths are compiled in
//! (`/etc/libvirt`, `/run/libvirt`, `/var/lib/libvirt`, ...); isolating it took a
//! private mount namespace with bind mounts, which needs CAP_SYS_ADMIN, which a pod's
//! compute container does not get. Run as any other uid, libvirtd is the session
//! daemon: it takes every directory from `XDG_CONFIG_HOME`, `XDG_RUNTIME_DIR`,
//! `XDG_CACHE_HOME`, `XDG_DATA_HOME` and `HOME`, all pointed under the layout here,
//! and its socket directory from `unix_sock_dir`. QEMU runs as the daemon's user, so
//! one switch does both: libvirtd, QEMU and the libvirt client (`vmpod-virt`) run as
//! [`RunAs`], uid/gid 107 as in KubeVirt, never root. One code path for a bare host
//! and a container; the launcher needs CAP_SETUID/CAP_SETGID (to switch) and
//! CAP_CHOWN (to hand the tree and the VM's files to that user) instead of
//! CAP_SYS_ADMIN.
//!
//! `/dev/kvm`: libvirt decides "KVM usable" by whether its user can open the device.
//! A container gets `/dev/kvm` only when the pod asks for it; on a bare host the device
//! belongs to root or the `kvm` group. When the launcher chose TCG the daemons get no
//! supplementary group, so such a device is unusable to them, which is what the old
//! read-only cover mount achieved. With KVM they get the device's group.
//!
//! Owns that directory tree, the daemon process, the QEMU capabilities cache seed (and
//! the pod's trimmed copy of it) and the environment that keeps the pod's libvirt
//! processes lean (one malloc arena, `libvmpod_preload.so`); does not talk the libvirt
//! API (see `libvirt`).
//!
//! No virtlogd: QEMU writes its serial console to the launcher's FIFO (libvirtd opens it
//! and passes QEMU the descriptor; `control::console_log` copies and rotates it) and
//! libvirtd writes QEMU's stderr log (`stdio_handler = "file"`). virtlogd would only
//! relay those two files, at about 17 MiB RSS and one more process start per pod.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// Binaries, overridable for tests and odd installs.
pub const LIBVIRTD: &str = "/usr/sbin/libvirtd";
/// Where libvirt keeps its QEMU driver modules.
pub const DRIVER_DIR: &str = "/usr/lib/x86_64-linux-gnu/libvirt/connection-driver";
/// Default per-node seed of the QEMU capabilities cache.
pub const DEFAULT_CAPS_SEED: &str = "/var/cache/vmpod/qemu-capabilities";

/// Something about the daemons failed.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "uid {uid} (QEMU's user) has no passwd entry; libvirt needs one (add e.g. \
         `useradd --system --uid {uid} --gid {uid} vmpod-qemu`, as tests/setup.sh does)"
    )]
    NoAccount { uid: u32 },
    #[error("start {daemon} ({binary}): {source}")]
    Spawn {
        daemon: &'static str,
        binary: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{daemon} exited before its socket {socket} appeared ({status}); {log}:\n{tail}")]
    Died {
        daemon: &'static str,
        socket: PathBuf,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("{daemon} socket {socket} did not appear within {timeout:?}; see {log}")]
    Timeout {
        daemon: &'static str,
        socket: PathBuf,
        timeout: Duration,
        log: PathBuf,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DaemonError + use<> {
    let path = path.to_path_buf();
    move |source| DaemonError::Io { what, path, source }
}

/// The directory tree under `<scratch-dir>/libvirt`.
#[derive(Clone, Debug)]
pub struct LibvirtLayout {
    pub root: PathBuf,
}

/// The directories of the tree, by name under the layout root: the session daemon's
/// XDG directories, its home and its socket directory.
pub const DIRS: [&str; 6] = ["config", "run", "cache", "data", "home", "sock"];

impl LibvirtLayout {
    pub fn new(scratch_dir: &Path) -> Self {
        LibvirtLayout {
            root: crate::statedir::ScratchDir::new(scratch_dir).libvirt(),
        }
    }
    pub fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
    /// libvirtd's read-write socket.
    pub fn socket(&self) -> PathBuf {
        self.dir("sock").join("libvirt-sock")
    }
    pub fn libvirtd_conf(&self) -> PathBuf {
        self.root.join("libvirtd.conf")
    }
    /// The session daemon reads `$XDG_CONFIG_HOME/libvirt/qemu.conf`.
    pub fn qemu_conf(&self) -> PathBuf {
        self.dir("config").join("libvirt").join("qemu.conf")
    }
    pub fn drivers(&self) -> PathBuf {
        self.root.join("drivers")
    }
    pub fn log(&self, daemon: &str) -> PathBuf {
        self.root.join(format!("{daemon}.log"))
    }
    /// QEMU's own log for domain `name` (its stderr, written by the session libvirtd
    /// under `$XDG_CACHE_HOME/libvirt/qemu/log`).
    pub fn qemu_log(&self, name: &str) -> PathBuf {
        self.dir("cache")
            .join("libvirt")
            .join("qemu")
            .join("log")
            .join(format!("{name}.log"))
    }
    /// Where the session daemon keeps its QEMU capabilities cache:
    /// `$XDG_CACHE_HOME/libvirt/qemu/cache/capabilities`.
    pub fn caps_cache(&self) -> PathBuf {
        self.dir("cache")
            .join("libvirt")
            .join("qemu")
            .join("cache")
            .join("capabilities")
    }
    /// The pid file libvirt writes for a running domain's QEMU.
    pub fn qemu_pid_file(&self, domain: &str) -> PathBuf {
        self.dir("run")
            .join("libvirt")
            .join("qemu")
            .join("run")
            .join(format!("{domain}.pid"))
    }
    /// The QEMU monitor socket libvirt makes for domain `name` when it starts it with
    /// domain id `id`: `$XDG_CONFIG_HOME/libvirt/qemu/lib/domain-<id>-<name, first 20
    /// characters>/monitor.sock` (libvirt's short domain name).
    pub fn monitor_socket(&self, name: &str, id: u32) -> PathBuf {
        let short: String = name.chars().take(20).collect();
        self.dir("config")
            .join("libvirt")
            .join("qemu")
            .join("lib")
            .join(format!("domain-{id}-{short}"))
            .join("monitor.sock")
    }

    /// Refuse a domain whose monitor socket path would not fit a UNIX socket address
    /// (107 bytes): libvirt refuses to start it. Checked with domain id 9 (a pod's own
    /// libvirtd starts its domain once, twice after a KVM fallback).
    pub fn check_monitor_socket(&self, name: &str) -> Result<(), SocketPathTooLong> {
        let path = self.monitor_socket(name, 9);
        let len = path.as_os_str().len();
        if len <= UNIX_PATH_MAX {
            return Ok(());
        }
        Err(SocketPathTooLong { path, len })
    }

    /// The session daemon's environment: every directory it uses is under the layout.
    pub fn env(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("HOME", self.dir("home")),
            ("XDG_CONFIG_HOME", self.dir("config")),
            ("XDG_RUNTIME_DIR", self.dir("run")),
            ("XDG_CACHE_HOME", self.dir("cache")),
            ("XDG_DATA_HOME", self.dir("data")),
            ("LIBVIRT_DRIVER_DIR", self.drivers()),
        ]
    }
}

/// The longest path a UNIX socket address holds (`sun_path` less its NUL).
pub const UNIX_PATH_MAX: usize = 107;

/// A socket libvirt would make has a path longer than [`UNIX_PATH_MAX`].
#[derive(Debug, thiserror::Error)]
#[error("libvirt's monitor socket would be {path:?}, {len} bytes; a socket path has at most 107")]
pub struct SocketPathTooLong {
    pub path: PathBuf,
    pub len: usize,
}

/// The uid QEMU runs as, as in KubeVirt (`qemu`, 107).
pub const QEMU_UID: u32 = 107;
/// Its gid.
pub const QEMU_GID: u32 = 107;

/// Who the pod's libvirt processes (libvirtd, QEMU, `vmpod-virt`) run as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the `/dev/kvm` group with KVM).
    pub groups: Vec<u32>,
}

impl RunAs {
    /// The QEMU user, with `/dev/kvm`'s group when KVM is used. A launcher that is not
    /// root cannot switch: its processes keep its own ids. libvirt needs a passwd entry
    /// for the uid (the vmpod image has `libvirt-qemu` 107; `tests/setup.sh` adds one
    /// on a bare host): see [`RunAs::check_account`].
    pub fn qemu(kvm: bool) -> RunAs {
        use std::os::unix::fs::MetadataExt;
        if !nix::unistd::geteuid().is_root() {
            return RunAs::current();
        }
        let groups = if kvm {
            fs::metadata(super::accel::KVM_DEVICE)
                .map(|m| vec![m.gid()])
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        RunAs {
            uid: QEMU_UID,
            gid: QEMU_GID,
            groups,
        }
    }

    /// libvirt resolves the user's name when it starts QEMU ("Failed to find user
    /// record"): fail early and say so.
    pub fn check_account(&self) -> Result<(), DaemonError> {
        match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(self.uid)) {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(DaemonError::NoAccount { uid: self.uid }),
            Err(e) => Err(DaemonError::Io {
                what: "look up the passwd entry of uid",
                path: PathBuf::from(self.uid.to_string()),
                source: e.into(),
            }),
        }
    }

    /// The calling process's own ids: no switch.
    pub fn current() -> RunAs {
        RunAs {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            groups: Vec::new(),
        }
    }

    /// Switch the calling process to these ids, then ask for SIGTERM when the parent
    /// dies (a uid change clears that request, so it comes second). Async-signal-safe:
    /// for use between fork and exec.
    pub fn enter(&self) -> io::Result<()> {
        fn check(r: libc::c_int) -> io::Result<()> {
            if r == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        }
        // SAFETY: plain syscalls on values owned by self, which outlives the calls.
        unsafe {
            if libc::geteuid() != self.uid {
                check(libc::setgroups(self.groups.len(), self.groups.as_ptr()))?;
                check(libc::setresgid(self.gid, self.gid, self.gid))?;
                check(libc::setresuid(self.uid, self.uid, self.uid))?;
            }
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM))
        }
    }

    /// Whether these ids may open `path` for reading and writing, by its mode bits
    /// (what `/dev/kvm` needs); the reason when not.
    pub fn may_open(&self, path: &Path) -> Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let rw = |shift: u32| (m.mode() >> shift) & 0o6 == 0o6;
        let ok = self.uid == 0
            || (m.uid() == self.uid && rw(6))
            || ((m.gid() == self.gid || self.groups.contains(&m.gid())) && rw(3))
            || rw(0);
        if ok {
            return Ok(());
        }
        Err(format!(
            "{} (mode {:o}, uid {}, gid {}) is not usable by QEMU's user {}",
            path.display(),
            m.mode() & 0o777,
            m.uid(),
            m.gid(),
            self.uid
        ))
    }

    /// Give `path` to these ids (not following a symlink); a no-op when they are ours.
    pub fn chown(&self, path: &Path) -> io::Result<()> {
        if nix::unistd::geteuid().as_raw() == self.uid {
            return Ok(());
        }
        std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid))
    }

    /// [`RunAs::chown`] for `path` and everything under it, deepest first (a directory
    /// given away may no longer be ours to list).
    pub fn chown_tree(&self, path: &Path) -> io::Result<()> {
        if fs::symlink_metadata(path)?.is_dir() {
            for entry in fs::read_dir(path)? {
                self.chown_tree(&entry?.path())?;
            }
        }
        self.chown(path)
    }
}

/// Environment: `1` runs the pod's processes with the settings from before they were
/// trimmed for density and start time (libvirtd with 4 RPC workers and 16 clients, a
/// malloc arena per thread everywhere, libcurl's global init in libvirtd and
/// `vmpod-virt` (no [`PRELOAD_LIB`]), libvirtd started after the network set-up instead
/// of beside it, libvirt's slow guest CPU check), so `benches/density.sh` and
/// `benches/run_to_lease.sh` can show before and after in one run.
pub const UNTUNED_ENV: &str = "VMPOD_DAEMONS_UNTUNED";

/// Whether [`UNTUNED_ENV`] asks for the settings from before.
pub fn untuned() -> bool {
    std::env::var_os(UNTUNED_ENV).is_some_and(|v| v == "1")
}

/// glibc's `MALLOC_ARENA_MAX` for the pod's processes: one arena. libvirtd, vmpod-virt
/// and the launcher make a handful of calls; an arena per thread (glibc's default, up to
/// 8 per core) leaves each thread's touched heap resident for nothing (about 0.8 MiB in
/// libvirtd alone).
pub const MALLOC_ARENA_MAX: &str = "1";

/// The library preloaded into libvirtd and `vmpod-virt` (crate `vmpod-preload`: it
/// skips libvirt's libcurl initialisation, ~1.4 MiB in each), looked for beside the
/// launcher's binary, as `vmpod-virt` is.
pub const PRELOAD_LIB: &str = "libvmpod_preload.so";
/// Environment: the path of [`PRELOAD_LIB`] instead (empty: preload nothing).
pub const PRELOAD_ENV: &str = "VMPOD_PRELOAD";

/// Where [`PRELOAD_LIB`] is: `$VMPOD_PRELOAD`, else beside this binary; none when
/// neither names one (the processes then run without it).
pub fn preload_lib() -> Option<PathBuf> {
    locate_preload(
        std::env::var_os(PRELOAD_ENV),
        std::env::current_exe().ok().as_deref(),
    )
}

fn locate_preload(env: Option<std::ffi::OsString>, exe: Option<&Path>) -> Option<PathBuf> {
    match env {
        Some(p) => (!p.is_empty()).then(|| PathBuf::from(p)),
        None => super::agent::beside(exe, PRELOAD_LIB),
    }
}

/// Seconds between two trims of libvirtd's heap by [`PRELOAD_LIB`] (its
/// `VMPOD_MALLOC_TRIM_S`): what libvirtd's parse of the QEMU capabilities left free,
/// ~1.4 MiB, goes back to the kernel within this long of the domain's start.
pub const LIBVIRTD_TRIM_S: &str = "5";

/// The environment that trims the memory of a pod process that loads libvirt (none when
/// [`untuned`]): one malloc arena, and [`PRELOAD_LIB`] when there is one, with its heap
/// trimmer when `trim_heap`.
pub fn lean_env(trim_heap: bool) -> Vec<(&'static str, std::ffi::OsString)> {
    if untuned() {
        return Vec::new();
    }
    let mut env = vec![("MALLOC_ARENA_MAX", MALLOC_ARENA_MAX.into())];
    if let Some(lib) = preload_lib() {
        env.push(("LD_PRELOAD", lib.into_os_string()));
        if trim_heap {
            env.push(("VMPOD_MALLOC_TRIM_S", LIBVIRTD_TRIM_S.into()));
        }
    }
    env
}

/// Limit this process to one malloc arena (see [`MALLOC_ARENA_MAX`]); call before the
/// first thread starts. A no-op when [`untuned`].
pub fn lean_malloc() {
    if !untuned() {
        // SAFETY: mallopt only sets an allocator parameter; nothing else runs yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

/// libvirtd.conf: private socket with no auth (the directory is 0700), as few threads
/// and clients as the pod uses. Its one client is `vmpod-virt`, which makes one call at
/// a time: one RPC worker, plus one priority worker so a destroy still gets through
/// while a start waits on QEMU; one admin worker (the admin server cannot be turned
/// off); two clients (a second for a `vmpod-virt` restarted while the first one's
/// connection closes).
pub fn libvirtd_conf(layout: &LibvirtLayout) -> String {
    let (max_workers, max_clients, max_anonymous_clients) =
        if untuned() { (4, 16, 4) } else { (1, 2, 2) };
    format!(
        "# written by vmpod-launcher\n\
         unix_sock_dir = \"{run}\"\n\
         unix_sock_rw_perms = \"0700\"\n\
         unix_sock_ro_perms = \"0700\"\n\
         unix_sock_admin_perms = \"0700\"\n\
         auth_unix_rw = \"none\"\n\
         auth_unix_ro = \"none\"\n\
         min_workers = 1\n\
         max_workers = {max_workers}\n\
         prio_workers = 1\n\
         admin_min_workers = 1\n\
         admin_max_workers = 1\n\
         admin_max_clients = 1\n\
         max_clients = {max_clients}\n\
         max_anonymous_clients = {max_anonymous_clients}\n\
         log_outputs = \"3:file:{log}\"\n",
        run = layout.dir("sock").display(),
        log = layout.log("libvirtd").display(),
    )
}

/// qemu.conf: QEMU runs as the daemon's user (session mode) without a security driver,
/// cgroups or its own mount namespace: the pod is the sandbox. QEMU and libvirtd write
/// their logs directly.
pub fn qemu_conf() -> &'static str {
    "# written by vmpod-launcher\n\
     dynamic_ownership = 0\n\
     remember_owner = 0\n\
     security_driver = \"none\"\n\
     cgroup_controllers = [ ]\n\
     namespaces = [ ]\n\
     stdio_handler = \"file\"\n"
}

/// Create the tree, write the configuration files and give it all to `user`.
/// Idempotent.
pub fn prepare(layout: &LibvirtLayout, user: &RunAs) -> Result<(), DaemonError> {
    for name in DIRS {
        let d = layout.dir(name);
        fs::create_dir_all(&d).map_err(io_err("create", &d))?;
    }
    let conf_dir = layout.dir("config").join("libvirt");
    fs::create_dir_all(&conf_dir).map_err(io_err("create", &conf_dir))?;
    for name in ["run", "sock"] {
        set_mode(&layout.dir(name), 0o700)?;
    }
    for (path, body) in [
        (layout.libvirtd_conf(), libvirtd_conf(layout)),
        (layout.qemu_conf(), qemu_conf().to_string()),
    ] {
        fs::write(&path, body).map_err(io_err("write", &path))?;
    }
    // Only the QEMU driver: libvirtd skips modules it cannot find, which saves the
    // network, storage, nodedev, ... drivers' start-up time and memory.
    let drivers = layout.drivers();
    fs::create_dir_all(&drivers).map_err(io_err("create", &drivers))?;
    let link = drivers.join("libvirt_driver_qemu.so");
    if fs::symlink_metadata(&link).is_err() {
        let target = Path::new(DRIVER_DIR).join("libvirt_driver_qemu.so");
        std::os::unix::fs::symlink(&target, &link).map_err(io_err("symlink", &link))?;
    }
    user.chown_tree(&layout.root)
        .map_err(io_err("chown", &layout.root))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), DaemonError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", path))
}

/// Which way [`copy_caps`] copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapsCopy {
    /// The node's seed into a pod's cache: each file as [`lean_caps`] makes it.
    IntoPod,
    /// A pod's cache back into the node's seed: a file [`lean_caps`] made from the seed's
    /// own is not a change.
    BackToSeed,
}

/// The capability flag that sends libvirt's guest CPU check at every domain start down
/// its generic path: `qom-list` of the vCPU, then one `qom-get` per property, ~400 QMP
/// round trips (0.1-0.4 s here under TCG) while QEMU waits paused. Without it libvirt
/// reads the same CPUID words on x86 with two `qom-get`s (`feature-words`,
/// `filtered-features`). The flag's other use is refusing MSR features named in a
/// domain's `<cpu>`, which vmpod's domain XML never names.
pub const SLOW_CPU_CHECK_FLAG: &str = "<flag name='cpu-unavailable-features'/>";

/// A QEMU capabilities file as a pod's libvirtd gets it: without
/// [`SLOW_CPU_CHECK_FLAG`]'s line (unchanged when [`untuned`], or when it has none).
/// libvirt validates a cache file by QEMU's and its own ctimes, never by its contents,
/// and keeps using it.
pub fn lean_caps(body: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let flag = SLOW_CPU_CHECK_FLAG.as_bytes();
    let Some(at) = body.windows(flag.len()).position(|w| w == flag) else {
        return body.into();
    };
    if untuned() {
        return body.into();
    }
    // The whole line: its indentation and its newline.
    let start = body[..at]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let end = body[at..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(body.len(), |i| at + i + 1);
    [&body[..start], &body[end..]].concat().into()
}

/// Copy the `*.xml` files of `from` into `to` (creating it), the way `how` says; missing
/// `from` copies nothing. Returns how many files were written.
///
/// `to` may be a node directory that other pods read and write at the same time (the
/// seed): each file is written beside its destination under a name no other writer uses
/// (pid and a random number: launchers in different pods often have the same pid) and
/// renamed over it, so a reader sees the old file or the new one, never a mix; a
/// destination already equal to its source is left alone (every pod after the first
/// would otherwise rewrite the same bytes).
pub fn copy_caps(from: &Path, to: &Path, how: CapsCopy) -> Result<usize, DaemonError> {
    let entries = match fs::read_dir(from) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err("read", from)(e)),
    };
    fs::create_dir_all(to).map_err(io_err("create", to))?;
    let mut n = 0;
    for entry in entries {
        let entry = entry.map_err(io_err("read", from))?;
        let p = entry.path();
        if p.extension().is_none_or(|e| e != "xml") {
            continue;
        }
        let mut body = fs::read(&p).map_err(io_err("read", &p))?;
        if how == CapsCopy::IntoPod {
            body = lean_caps(&body).into_owned();
        }
        let dst = to.join(entry.file_name());
        if fs::read(&dst).is_ok_and(|old| {
            old == body || (how == CapsCopy::BackToSeed && *lean_caps(&old) == *body)
        }) {
            continue;
        }
        // Replaced atomically, so a concurrent reader never sees half a file.
        crate::file::write_atomic(&dst, &body, crate::file::Durability::Rename)
            .map_err(io_err("write", &dst))?;
        n += 1;
    }
    Ok(n)
}

/// Seed the private QEMU capabilities cache from the node's `seed` directory, so
/// libvirtd's first call takes milliseconds instead of seconds of QEMU probing. The
/// copies (and the directories made for them) belong to `user`, the daemon's.
pub fn seed_caps(layout: &LibvirtLayout, seed: &Path, user: &RunAs) -> Result<usize, DaemonError> {
    let n = copy_caps(seed, &layout.caps_cache(), CapsCopy::IntoPod)?;
    let cache = layout.dir("cache");
    user.chown_tree(&cache).map_err(io_err("chown", &cache))?;
    Ok(n)
}

/// Copy what libvirtd cached back into the node's `seed` directory for the next pod.
/// libvirtd replaces stale entries itself (it checks QEMU's and its own ctime).
pub fn refresh_caps_seed(layout: &LibvirtLayout, seed: &Path) -> Result<usize, DaemonError> {
    copy_caps(&layout.caps_cache(), seed, CapsCopy::BackToSeed)
}

/// The last `n` lines of a log file (empty when unreadable), for error messages.
pub fn log_tail(path: &Path, n: usize) -> String {
    let body = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = body.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A running daemon the launcher is the parent of.
pub struct Daemon {
    pub name: &'static str,
    pub child: Child,
}

/// The pod's libvirtd.
pub struct Daemons {
    pub libvirtd: Daemon,
    pub layout: LibvirtLayout,
}

fn spawn(
    name: &'static str,
    binary: &Path,
    args: &[&std::ffi::OsStr],
    envs: &[(&str, PathBuf)],
    log: &Path,
    user: RunAs,
) -> Result<Daemon, DaemonError> {
    let stderr = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_err("open", log))?;
    // The daemon appends to it too (its log_outputs).
    user.chown(log).map_err(io_err("chown", log))?;
    let mut cmd = Command::new(binary);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .stdout(stderr.try_clone().map_err(io_err("open", log))?)
        .stderr(stderr)
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    // Only libvirtd is spawned here: it keeps the garbage of its capabilities parse.
    cmd.envs(lean_env(true));
    // SAFETY: the closure only makes syscalls on data prepared before the fork
    // (async-signal-safe), as required between fork and exec. The daemon dies with the
    // launcher (parent-death signal): no orphans even on SIGKILL.
    unsafe {
        cmd.pre_exec(move || user.enter());
    }
    let child = cmd.spawn().map_err(|source| DaemonError::Spawn {
        daemon: name,
        binary: binary.to_path_buf(),
        source,
    })?;
    Ok(Daemon { name, child })
}

impl Daemon {
    /// Wait until `socket` accepts connections, the daemon exits, or `timeout` passes.
    async fn ready(
        &mut self,
        socket: &Path,
        log: &Path,
        timeout: Duration,
    ) -> Result<(), DaemonError> {
        let start = Instant::now();
        loop {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(DaemonError::Died {
                    daemon: self.name,
                    socket: socket.to_path_buf(),
                    status: status.to_string(),
                    log: log.to_path_buf(),
                    tail: log_tail(log, 8),
                });
            }
            if start.elapsed() > timeout {
                return Err(DaemonError::Timeout {
                    daemon: self.name,
                    socket: socket.to_path_buf(),
                    timeout,
                    log: log.to_path_buf(),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; reaps the process.
    pub async fn stop(&mut self, grace: Duration) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                daemon = self.name,
                "did not stop within {grace:?}, killing it"
            );
            let _ = self.child.kill().await;
        }
    }
}

/// How long a daemon may take to open its socket.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

impl Daemons {
    /// Start libvirtd as `user` and wait until its socket answers. The caller has
    /// already run [`prepare`].
    pub async fn start(layout: &LibvirtLayout, user: RunAs) -> Result<Daemons, DaemonError> {
        let mut d = Daemons::spawn(layout, user)?;
        if let Err(e) = d.ready().await {
            let _ = d.libvirtd.child.start_kill();
            return Err(e);
        }
        Ok(d)
    }

    /// Start libvirtd as `user` without waiting for it: the launcher does its network
    /// set-up meanwhile, then waits with [`Daemons::ready`]. The caller has already run
    /// [`prepare`]. The daemon dies with the returned value (kill on drop).
    pub fn spawn(layout: &LibvirtLayout, user: RunAs) -> Result<Daemons, DaemonError> {
        user.check_account()?;
        let os = |s: &'static str| std::ffi::OsStr::new(s);
        let conf = layout.libvirtd_conf();
        let pid = layout.root.join("libvirtd.pid");
        let libvirtd = spawn(
            "libvirtd",
            Path::new(LIBVIRTD),
            &[
                os("--config"),
                conf.as_os_str(),
                os("--pid-file"),
                pid.as_os_str(),
            ],
            &layout.env(),
            &layout.log("libvirtd"),
            user,
        )?;
        Ok(Daemons {
            libvirtd,
            layout: layout.clone(),
        })
    }

    /// Wait until libvirtd's socket answers (or it exits, or [`READY_TIMEOUT`] passes).
    pub async fn ready(&mut self) -> Result<(), DaemonError> {
        let (socket, log) = (self.layout.socket(), self.layout.log("libvirtd"));
        self.libvirtd.ready(&socket, &log, READY_TIMEOUT).await
    }

    /// Stop libvirtd (QEMU is gone by then, or dies with it).
    pub async fn stop(&mut self) {
        self.libvirtd.stop(Duration::from_secs(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libvirt's monitor socket: the domain dir holds the first 20 characters of the
    /// domain name; a path of 107 bytes passes, 108 does not.
    #[test]
    fn the_monitor_socket_path_is_checked_against_the_socket_limit() {
        let l = LibvirtLayout::new(Path::new("/s"));
        assert_eq!(
            l.monitor_socket("ns_a-name-longer-than-twenty", 1),
            Path::new(
                "/s/libvirt/config/libvirt/qemu/lib/domain-1-ns_a-name-longer-tha/monitor.sock"
            )
        );
        let base = l.monitor_socket("", 9).as_os_str().len();
        let fits = |dir_len: usize| {
            let dir = format!("/{}", "d".repeat(dir_len - 1));
            let l = LibvirtLayout::new(Path::new(&dir));
            (
                l.monitor_socket("vm", 9).as_os_str().len(),
                l.check_monitor_socket("vm"),
            )
        };
        let at_limit = UNIX_PATH_MAX - (base - 2) - 2;
        let (len, ok) = fits(at_limit);
        assert_eq!((len, ok.is_ok()), (UNIX_PATH_MAX, true));
        let (len, too_long) = fits(at_limit + 1);
        let err = too_long.unwrap_err();
        assert_eq!((len, err.len), (UNIX_PATH_MAX + 1, UNIX_PATH_MAX + 1));
        assert!(err.to_string().contains("108 bytes"), "{err}");
    }

    #[test]
    fn configs_point_into_the_scratch_dir() {
        let l = LibvirtLayout::new(Path::new("/run/vmpod/pod1"));
        let c = libvirtd_conf(&l);
        assert!(
            c.contains("unix_sock_dir = \"/run/vmpod/pod1/libvirt/sock\""),
            "{c}"
        );
        assert!(c.contains("auth_unix_rw = \"none\""));
        // One client making one call at a time: one worker, the priority one for a
        // destroy while a start waits.
        assert!(c.contains("max_workers = 1\n") && c.contains("prio_workers = 1\n"));
        assert!(c.contains("max_clients = 2\n"));
        assert!(c.contains("/run/vmpod/pod1/libvirt/libvirtd.log"));
        assert!(qemu_conf().contains("security_driver = \"none\""));
        assert!(qemu_conf().contains("stdio_handler = \"file\""));
        assert_eq!(
            l.socket(),
            Path::new("/run/vmpod/pod1/libvirt/sock/libvirt-sock")
        );
        assert_eq!(
            l.caps_cache(),
            Path::new("/run/vmpod/pod1/libvirt/cache/libvirt/qemu/cache/capabilities")
        );
        // Every directory the session daemon uses is under the layout.
        for (var, dir) in l.env() {
            assert!(dir.starts_with("/run/vmpod/pod1/libvirt"), "{var}");
        }
        assert!(
            !qemu_conf().contains("user ="),
            "QEMU runs as the daemon's user"
        );
    }

    #[test]
    fn the_preload_library_is_the_env_s_or_the_one_beside_the_binary() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("vmpod-launcher");
        let env = |v: &str| Some(std::ffi::OsString::from(v));
        assert_eq!(locate_preload(None, Some(&exe)), None, "none beside it");
        std::fs::write(dir.path().join(PRELOAD_LIB), "").unwrap();
        assert_eq!(
            locate_preload(None, Some(&exe)),
            Some(dir.path().join(PRELOAD_LIB))
        );
        assert_eq!(
            locate_preload(env("/opt/p.so"), Some(&exe)),
            Some(PathBuf::from("/opt/p.so"))
        );
        assert_eq!(locate_preload(env(""), Some(&exe)), None, "empty: none");
        assert_eq!(locate_preload(None, None), None);
    }

    #[test]
    fn may_open_follows_the_mode_bits() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("kvm");
        fs::write(&dev, b"").unwrap();
        let me = RunAs::current();
        let (uid, gid) = (me.uid, me.gid);
        let other = RunAs {
            uid: uid + 1000,
            gid: gid + 1000,
            groups: Vec::new(),
        };
        let in_group = RunAs {
            groups: vec![gid],
            ..other.clone()
        };
        for (mode, other_ok, group_ok) in [
            (0o600, false, false),
            (0o660, false, true),
            (0o666, true, true),
        ] {
            fs::set_permissions(&dev, fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(
                other.may_open(&dev).is_ok(),
                other_ok || uid + 1000 == 0,
                "{mode:o}"
            );
            assert_eq!(in_group.may_open(&dev).is_ok(), group_ok, "{mode:o}");
        }
        fs::set_permissions(&dev, fs::Permissions::from_mode(0o600)).unwrap();
        let e = other.may_open(&dev).unwrap_err();
        assert!(e.contains("mode 600") && e.contains("not usable"), "{e}");
    }

    #[test]
    fn prepare_writes_tree_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let l = LibvirtLayout::new(dir.path());
        let me = RunAs::current();
        prepare(&l, &me).unwrap();
        prepare(&l, &me).unwrap();
        for name in DIRS {
            assert!(l.dir(name).is_dir(), "{name}");
        }
        assert!(
            fs::read_to_string(l.qemu_conf())
                .unwrap()
                .contains("security_driver = \"none\"")
        );
        assert!(fs::symlink_metadata(l.drivers().join("libvirt_driver_qemu.so")).is_ok());
    }

    #[test]
    fn copy_caps_copies_only_xml_and_tolerates_missing_source() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("seed");
        let to = dir.path().join("cache/qemu/capabilities");
        assert_eq!(copy_caps(&from, &to, CapsCopy::IntoPod).unwrap(), 0);
        fs::create_dir_all(&from).unwrap();
        fs::write(from.join("abc.xml"), "<qemuCaps/>").unwrap();
        fs::write(from.join("notes.txt"), "x").unwrap();
        assert_eq!(copy_caps(&from, &to, CapsCopy::IntoPod).unwrap(), 1);
        assert_eq!(
            fs::read_to_string(to.join("abc.xml")).unwrap(),
            "<qemuCaps/>"
        );
        assert!(!to.join("notes.txt").exists());
    }

    #[test]
    fn copy_caps_leaves_an_equal_file_alone() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("cache"), dir.path().join("seed"));
        fs::create_dir_all(&from).unwrap();
        fs::write(from.join("abc.xml"), "<qemuCaps/>").unwrap();
        assert_eq!(copy_caps(&from, &to, CapsCopy::IntoPod).unwrap(), 1);
        let inode = fs::metadata(to.join("abc.xml")).unwrap().ino();
        assert_eq!(
            copy_caps(&from, &to, CapsCopy::IntoPod).unwrap(),
            0,
            "unchanged: not written"
        );
        assert_eq!(fs::metadata(to.join("abc.xml")).unwrap().ino(), inode);
        fs::write(from.join("abc.xml"), "<qemuCaps v='2'/>").unwrap();
        assert_eq!(
            copy_caps(&from, &to, CapsCopy::IntoPod).unwrap(),
            1,
            "changed: written"
        );
        assert_eq!(
            fs::read_to_string(to.join("abc.xml")).unwrap(),
            "<qemuCaps v='2'/>"
        );
    }

    /// The pod's libvirtd gets the capabilities without the flag of the slow CPU check;
    /// that copy, unchanged by libvirtd, is not written back over the node's seed, and a
    /// file libvirtd rewrote (a new probe) is.
    #[test]
    fn pods_get_the_caps_without_the_slow_cpu_check_and_do_not_write_that_back() {
        let body = format!(
            "<qemuCaps>\n  <flag name='x86-max-cpu'/>\n  {SLOW_CPU_CHECK_FLAG}\n  <flag name='canonical-cpu-features'/>\n</qemuCaps>\n"
        );
        let lean = String::from_utf8(lean_caps(body.as_bytes()).into_owned()).unwrap();
        assert_eq!(
            lean,
            "<qemuCaps>\n  <flag name='x86-max-cpu'/>\n  <flag name='canonical-cpu-features'/>\n</qemuCaps>\n"
        );
        assert_eq!(
            *lean_caps(lean.as_bytes()),
            *lean.as_bytes(),
            "nothing else goes"
        );

        let dir = tempfile::tempdir().unwrap();
        let (seed, pod) = (dir.path().join("seed"), dir.path().join("pod"));
        fs::create_dir_all(&seed).unwrap();
        fs::write(seed.join("caps.xml"), &body).unwrap();
        assert_eq!(copy_caps(&seed, &pod, CapsCopy::IntoPod).unwrap(), 1);
        assert_eq!(fs::read_to_string(pod.join("caps.xml")).unwrap(), lean);
        assert_eq!(copy_caps(&pod, &seed, CapsCopy::BackToSeed).unwrap(), 0);
        assert_eq!(fs::read_to_string(seed.join("caps.xml")).unwrap(), body);
        let probed = body.replace("x86-max-cpu", "x86-max-cpu-v2");
        fs::write(pod.join("caps.xml"), &probed).unwrap();
        assert_eq!(copy_caps(&pod, &seed, CapsCopy::BackToSeed).unwrap(), 1);
        assert_eq!(fs::read_to_string(seed.join("caps.xml")).unwrap(), probed);
    }

    /// Pods writing the node's seed back while others copy it: writers with the same pid
    /// (as launchers in different pods often have) never share a temporary file, and a
    /// reader sees one writer's whole file, never a mix or a missing one.
    #[test]
    fn copy_caps_writers_with_one_pid_never_tear_the_seed() {
        let dir = tempfile::tempdir().unwrap();
        let seed = dir.path().join("seed");
        let caches: Vec<PathBuf> = (0..4u8)
            .map(|i| {
                let c = dir.path().join(format!("cache{i}"));
                fs::create_dir_all(&c).unwrap();
                // Different contents and sizes, so a mix of two shows.
                let body = vec![b'a' + i; 64 * 1024 + usize::from(i) * 4096];
                fs::write(c.join("caps.xml"), body).unwrap();
                c
            })
            .collect();
        copy_caps(&caches[0], &seed, CapsCopy::BackToSeed).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let writers: Vec<_> = caches
                .iter()
                .map(|c| {
                    s.spawn(|| {
                        for _ in 0..200 {
                            copy_caps(c, &seed, CapsCopy::BackToSeed).unwrap();
                        }
                    })
                })
                .collect();
            let reader = s.spawn(|| {
                let mut reads = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let pod = dir.path().join("pod");
                    let _ = fs::remove_dir_all(&pod);
                    copy_caps(&seed, &pod, CapsCopy::IntoPod).unwrap();
                    let got = fs::read(pod.join("caps.xml")).unwrap();
                    let first = got[0];
                    assert!(
                        (b'a'..b'a' + 4).contains(&first)
                            && got.len() == 64 * 1024 + usize::from(first - b'a') * 4096
                            && got.iter().all(|&b| b == first),
                        "torn seed: {} bytes starting {:?}",
                        got.len(),
                        &got[..8.min(got.len())]
                    );
                    reads += 1;
                }
                reads
            });
            for w in writers {
                w.join().unwrap();
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            assert!(reader.join().unwrap() > 0);
        });
        let left: Vec<_> = fs::read_dir(&seed)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            left,
            vec![std::ffi::OsString::from("caps.xml")],
            "no temporary file left"
        );
    }
}
