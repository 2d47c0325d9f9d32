//! The pod's own libvirtd (Debian's system-mode daemon), isolated under
//! `<state-dir>/libvirt` so two pods on one machine never collide with each other or
//! with a host libvirtd.
//!
//! Privileged libvirtd has its paths compiled in (`/etc/libvirt`, `/run/libvirt`,
//! `/var/lib/libvirt`, `/var/cache/libvirt`, `/var/log/libvirt`, no environment knob), so
//! [`MountPlan`] gives the daemon a mount namespace of its own in which those
//! five directories are bind mounts of directories under the state dir, and (when KVM is
//! not used) `/dev/kvm` is covered so libvirt does not probe an unusable device; QEMU
//! inherits it. The launcher's own namespace is left alone. Owns those directories, the
//! daemon process and the QEMU capabilities cache seed; does not talk the libvirt API
//! (see `libvirt`).
//!
//! No virtlogd: QEMU writes its serial console log itself and libvirtd writes QEMU's
//! stderr log (`stdio_handler = "file"`). virtlogd would only relay those two files, at
//! about 17 MiB RSS and one more process start per pod; the console log's size is
//! bounded by the launcher instead (see `console_log`).

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
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

/// The directory tree under `<state-dir>/libvirt`.
#[derive(Clone, Debug)]
pub struct LibvirtLayout {
    pub root: PathBuf,
}

/// The five system directories replaced inside the private mount namespace, by the name
/// of their stand-in under the layout root.
pub const BIND_TARGETS: [(&str, &str); 5] = [
    ("etc", "/etc/libvirt"),
    ("run", "/run/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("cache", "/var/cache/libvirt"),
    ("log", "/var/log/libvirt"),
];

impl LibvirtLayout {
    pub fn new(state_dir: &Path) -> Self {
        LibvirtLayout {
            root: state_dir.join("libvirt"),
        }
    }
    pub fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
    /// libvirtd's read-write socket, reachable from outside the namespace too.
    pub fn socket(&self) -> PathBuf {
        self.dir("run").join("libvirt-sock")
    }
    pub fn libvirtd_conf(&self) -> PathBuf {
        self.root.join("libvirtd.conf")
    }
    pub fn qemu_conf(&self) -> PathBuf {
        self.dir("etc").join("qemu.conf")
    }
    pub fn drivers(&self) -> PathBuf {
        self.root.join("drivers")
    }
    pub fn log(&self, daemon: &str) -> PathBuf {
        self.root.join(format!("{daemon}.log"))
    }
    /// QEMU's own log for domain `name` (its stderr, written by libvirtd).
    pub fn qemu_log(&self, name: &str) -> PathBuf {
        self.dir("log").join("qemu").join(format!("{name}.log"))
    }
    pub fn caps_cache(&self) -> PathBuf {
        self.dir("cache").join("qemu").join("capabilities")
    }
}

/// libvirtd.conf: private socket with no auth (the directory is 0700), few threads.
pub fn libvirtd_conf(layout: &LibvirtLayout) -> String {
    format!(
        "# written by vmpod-launcher\n\
         unix_sock_dir = \"{run}\"\n\
         unix_sock_rw_perms = \"0700\"\n\
         unix_sock_ro_perms = \"0700\"\n\
         unix_sock_admin_perms = \"0700\"\n\
         auth_unix_rw = \"none\"\n\
         auth_unix_ro = \"none\"\n\
         min_workers = 1\n\
         max_workers = 4\n\
         prio_workers = 1\n\
         admin_min_workers = 1\n\
         admin_max_workers = 1\n\
         max_clients = 16\n\
         max_anonymous_clients = 4\n\
         log_outputs = \"3:file:{log}\"\n",
        run = layout.dir("run").display(),
        log = layout.log("libvirtd").display(),
    )
}

/// qemu.conf: QEMU runs as root without a security driver, cgroups or its own mount
/// namespace: the pod is the sandbox. QEMU and libvirtd write their logs directly.
pub fn qemu_conf() -> &'static str {
    "# written by vmpod-launcher\n\
     user = \"root\"\n\
     group = \"root\"\n\
     dynamic_ownership = 0\n\
     remember_owner = 0\n\
     security_driver = \"none\"\n\
     cgroup_controllers = [ ]\n\
     namespaces = [ ]\n\
     stdio_handler = \"file\"\n"
}

/// Create the tree and write the configuration files. Idempotent.
pub fn prepare(layout: &LibvirtLayout) -> Result<(), DaemonError> {
    for (name, _) in BIND_TARGETS {
        let d = layout.dir(name);
        fs::create_dir_all(&d).map_err(io_err("create", &d))?;
    }
    let run = layout.dir("run");
    set_mode(&run, 0o700)?;
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
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), DaemonError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", path))
}

/// The account privileged libvirtd resolves at start-up, before it reads qemu.conf
/// (Debian builds it with `qemu_user=libvirt-qemu`); `libvirt-daemon-system` creates it.
pub const QEMU_ACCOUNT: &str = "libvirt-qemu";

/// The passwd and group lines libvirtd needs when the host lacks [`QEMU_ACCOUNT`] (pure).
pub fn account_lines() -> (String, String) {
    (
        format!("{QEMU_ACCOUNT}:x:64055:64055:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin\n"),
        format!("{QEMU_ACCOUNT}:x:64055:\n"),
    )
}

/// When the host has no [`QEMU_ACCOUNT`], write copies of `/etc/passwd` and `/etc/group`
/// with it added under the layout, to be bind-mounted in the daemons' namespace only.
/// Returns (copy, path it covers) pairs; empty when the host has the account.
fn account_overlay(layout: &LibvirtLayout) -> Result<Vec<(PathBuf, &'static str)>, DaemonError> {
    let has_user = nix::unistd::User::from_name(QEMU_ACCOUNT)
        .ok()
        .flatten()
        .is_some();
    let has_group = nix::unistd::Group::from_name(QEMU_ACCOUNT)
        .ok()
        .flatten()
        .is_some();
    if has_user && has_group {
        return Ok(Vec::new());
    }
    let (pw, gr) = account_lines();
    let mut out = Vec::new();
    for (host, extra, name) in [("/etc/passwd", pw, "passwd"), ("/etc/group", gr, "group")] {
        let hp = Path::new(host);
        let mut body = fs::read_to_string(hp).map_err(io_err("read", hp))?;
        if !body
            .lines()
            .any(|l| l.starts_with(&format!("{QEMU_ACCOUNT}:")))
        {
            if !body.is_empty() && !body.ends_with('\n') {
                body.push('\n');
            }
            body.push_str(&extra);
        }
        let copy = layout.root.join(name);
        fs::write(&copy, body).map_err(io_err("write", &copy))?;
        out.push((copy, host));
    }
    Ok(out)
}

/// The private mount namespace the daemons run in: libvirt's five system directories
/// replaced by the layout's, and `/dev/kvm` covered with an empty read-only file when KVM is
/// not used.
///
/// Built in the launcher (allocations, mount points created on the host when missing,
/// e.g. no `/etc/libvirt`), applied in the first daemon's child between fork and exec with
/// raw syscalls only; the second daemon joins that namespace. The launcher's own mount
/// namespace is never changed.
pub struct MountPlan {
    binds: Vec<(CString, CString)>,
    /// An empty file to cover `/dev/kvm` with, read-only.
    cover_kvm: Option<CString>,
}

fn cpath(p: &Path) -> Result<CString, DaemonError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|e| DaemonError::Io {
        what: "path with a NUL byte",
        path: p.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, e),
    })
}

impl MountPlan {
    pub fn new(layout: &LibvirtLayout, hide_kvm: bool) -> Result<Self, DaemonError> {
        let mut binds = Vec::new();
        for (name, target) in BIND_TARGETS {
            let target = Path::new(target);
            fs::create_dir_all(target).map_err(io_err("create mount point", target))?;
            binds.push((cpath(&layout.dir(name))?, cpath(target)?));
        }
        for (file, line) in account_overlay(layout)? {
            binds.push((cpath(&file)?, cpath(Path::new(line))?));
        }
        let cover_kvm = if hide_kvm && Path::new(super::accel::KVM_DEVICE).exists() {
            let stand_in = layout.root.join("kvm-hidden");
            fs::write(&stand_in, b"").map_err(io_err("write", &stand_in))?;
            Some(cpath(&stand_in)?)
        } else {
            None
        };
        Ok(MountPlan { binds, cover_kvm })
    }

    /// Enter a new mount namespace and mount the plan. Async-signal-safe: only syscalls
    /// on prepared strings, so it may run between fork and exec.
    fn apply(&self) -> io::Result<()> {
        fn check(r: libc::c_int) -> io::Result<()> {
            if r == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        }
        // SAFETY: plain syscalls with NUL-terminated strings that outlive the calls.
        unsafe {
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            for (src, dst) in &self.binds {
                check(libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
            }
            if let Some(stand_in) = &self.cover_kvm {
                // libvirt decides "KVM usable" by stat + access(R_OK|W_OK); an empty
                // regular file on a read-only bind fails the write check (EROFS) while
                // keeping a stable ctime, so its capabilities cache stays valid.
                let kvm = c"/dev/kvm".as_ptr();
                check(libc::mount(
                    stand_in.as_ptr(),
                    kvm,
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
                check(libc::mount(
                    std::ptr::null(),
                    kvm,
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                    std::ptr::null(),
                ))?;
            }
        }
        Ok(())
    }
}

/// Copy the `*.xml` files of `from` into `to` (creating it); missing `from` copies
/// nothing. Returns how many files were copied.
pub fn copy_caps(from: &Path, to: &Path) -> Result<usize, DaemonError> {
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
        if p.extension().is_some_and(|e| e == "xml") {
            let dst = to.join(entry.file_name());
            // Write beside and rename, so a concurrent reader never sees half a file.
            let tmp = to.join(format!(
                ".{}.tmp{}",
                entry.file_name().to_string_lossy(),
                std::process::id()
            ));
            fs::copy(&p, &tmp).map_err(io_err("copy", &p))?;
            fs::rename(&tmp, &dst).map_err(io_err("rename", &dst))?;
            n += 1;
        }
    }
    Ok(n)
}

/// Seed the private QEMU capabilities cache from the node's `seed` directory, so
/// libvirtd's first call takes milliseconds instead of seconds of QEMU probing.
pub fn seed_caps(layout: &LibvirtLayout, seed: &Path) -> Result<usize, DaemonError> {
    copy_caps(seed, &layout.caps_cache())
}

/// Copy what libvirtd cached back into the node's `seed` directory for the next pod.
/// libvirtd replaces stale entries itself (it checks QEMU's and its own ctime).
pub fn refresh_caps_seed(layout: &LibvirtLayout, seed: &Path) -> Result<usize, DaemonError> {
    copy_caps(&layout.caps_cache(), seed)
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
    envs: &[(&str, &Path)],
    log: &Path,
    plan: MountPlan,
) -> Result<Daemon, DaemonError> {
    let stderr = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_err("open", log))?;
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
    // SAFETY: the closure only makes syscalls on data prepared before the fork
    // (async-signal-safe), as required between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // The daemon dies with the launcher: no orphans even on SIGKILL.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(io::Error::last_os_error());
            }
            plan.apply()
        });
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
    /// Start libvirtd in a new private mount namespace made from `plan` and wait until
    /// its socket answers. The caller has already run [`prepare`].
    pub async fn start(layout: &LibvirtLayout, plan: MountPlan) -> Result<Daemons, DaemonError> {
        let os = |s: &'static str| std::ffi::OsStr::new(s);
        let conf = layout.libvirtd_conf();
        let log = layout.log("libvirtd");
        let pid = layout.root.join("libvirtd.pid");
        let drivers = layout.drivers();
        let mut libvirtd = spawn(
            "libvirtd",
            Path::new(LIBVIRTD),
            &[
                os("--config"),
                conf.as_os_str(),
                os("--pid-file"),
                pid.as_os_str(),
            ],
            &[("LIBVIRT_DRIVER_DIR", &drivers)],
            &log,
            plan,
        )?;
        if let Err(e) = libvirtd.ready(&layout.socket(), &log, READY_TIMEOUT).await {
            let _ = libvirtd.child.start_kill();
            return Err(e);
        }
        Ok(Daemons {
            libvirtd,
            layout: layout.clone(),
        })
    }

    /// Stop libvirtd (QEMU is gone by then, or dies with it).
    pub async fn stop(&mut self) {
        self.libvirtd.stop(Duration::from_secs(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_point_into_the_state_dir() {
        let l = LibvirtLayout::new(Path::new("/run/vmpod/pod1"));
        let c = libvirtd_conf(&l);
        assert!(
            c.contains("unix_sock_dir = \"/run/vmpod/pod1/libvirt/run\""),
            "{c}"
        );
        assert!(c.contains("auth_unix_rw = \"none\""));
        assert!(c.contains("/run/vmpod/pod1/libvirt/libvirtd.log"));
        assert!(qemu_conf().contains("security_driver = \"none\""));
        assert!(qemu_conf().contains("stdio_handler = \"file\""));
        assert_eq!(
            l.socket(),
            Path::new("/run/vmpod/pod1/libvirt/run/libvirt-sock")
        );
        assert_eq!(
            l.caps_cache(),
            Path::new("/run/vmpod/pod1/libvirt/cache/qemu/capabilities")
        );
    }

    #[test]
    fn prepare_writes_tree_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let l = LibvirtLayout::new(dir.path());
        prepare(&l).unwrap();
        prepare(&l).unwrap();
        for (name, _) in BIND_TARGETS {
            assert!(l.dir(name).is_dir(), "{name}");
        }
        assert!(
            fs::read_to_string(l.qemu_conf())
                .unwrap()
                .contains("user = \"root\"")
        );
        assert!(fs::symlink_metadata(l.drivers().join("libvirt_driver_qemu.so")).is_ok());
    }

    #[test]
    fn copy_caps_copies_only_xml_and_tolerates_missing_source() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("seed");
        let to = dir.path().join("cache/qemu/capabilities");
        assert_eq!(copy_caps(&from, &to).unwrap(), 0);
        fs::create_dir_all(&from).unwrap();
        fs::write(from.join("abc.xml"), "<qemuCaps/>").unwrap();
        fs::write(from.join("notes.txt"), "x").unwrap();
        assert_eq!(copy_caps(&from, &to).unwrap(), 1);
        assert_eq!(
            fs::read_to_string(to.join("abc.xml")).unwrap(),
            "<qemuCaps/>"
        );
        assert!(!to.join("notes.txt").exists());
    }
}
