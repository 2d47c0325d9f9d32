//! Named network namespaces, compatible with `ip netns` (`/run/netns/NAME`), and running
//! code inside one.
//!
//! `setns` is per thread, so code that must run inside a namespace runs on a thread of its
//! own that enters it first; netlink and packet sockets opened there stay bound to that
//! namespace after the thread leaves. [`NetnsGuard`] restores the previous namespace on drop.

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};

/// Where `ip netns` keeps its namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// The bind-mount path of a named namespace.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// A `--netns` argument: a path when it contains `/`, else a name under /run/netns.
pub fn resolve(arg: &str) -> PathBuf {
    if arg.contains('/') {
        PathBuf::from(arg)
    } else {
        path(arg)
    }
}

fn err_on(what: &str, obj: &Path, e: impl Into<io::Error>) -> io::Error {
    let e: io::Error = e.into();
    io::Error::new(e.kind(), format!("{what} {}: {e}", obj.display()))
}

/// While alive, the current thread is inside another network namespace.
pub struct NetnsGuard {
    previous: File,
}

impl NetnsGuard {
    /// Move the current thread into the namespace at `ns` (e.g. `/run/netns/pod1`).
    pub fn enter(ns: &Path) -> io::Result<Self> {
        let previous = File::open("/proc/thread-self/ns/net")?;
        let target = File::open(ns).map_err(|e| err_on("open netns", ns, e))?;
        setns(&target, CloneFlags::CLONE_NEWNET).map_err(|e| err_on("setns", ns, e))?;
        Ok(NetnsGuard { previous })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.previous, CloneFlags::CLONE_NEWNET) {
            // A thread left in the wrong namespace would act on the wrong links: stop.
            panic!("cannot return to the previous network namespace: {e}");
        }
    }
}

/// Run `f` on a fresh thread inside `ns` (or the current namespace when `None`).
pub fn run_in<T, F>(ns: Option<&Path>, f: F) -> io::Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            let _guard = ns.map(NetnsGuard::enter).transpose()?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Run an async job to completion on a fresh thread inside `ns`, with a current-thread
/// tokio runtime of its own. Netlink sockets the job opens live in `ns`.
pub fn block_on_in<T, F, Fut>(ns: Option<&Path>, f: F) -> io::Result<T>
where
    T: Send,
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = T>,
{
    run_in(ns, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(rt.block_on(f()))
    })?
}

/// Create a named namespace, like `ip netns add NAME`. Fails if it exists.
pub fn create(name: &str) -> io::Result<PathBuf> {
    fs::create_dir_all(NETNS_RUN_DIR)?;
    let p = path(name);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)
        .map_err(|e| err_on("create", &p, e))?;
    let bound = run_in(None, || -> io::Result<()> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| err_on("unshare netns for", &p, e))?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &p,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| err_on("bind-mount netns on", &p, e))
    })
    .and_then(|r| r);
    if let Err(e) = bound {
        let _ = fs::remove_file(&p);
        return Err(e);
    }
    Ok(p)
}

/// Delete a named namespace, like `ip netns delete NAME`. Missing is not an error.
pub fn delete(name: &str) -> io::Result<()> {
    let p = path(name);
    if !p.exists() {
        return Ok(());
    }
    match umount2(&p, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
        Err(e) => return Err(err_on("unmount", &p, e)),
    }
    fs::remove_file(&p).map_err(|e| err_on("remove", &p, e))
}
