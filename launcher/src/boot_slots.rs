//! Boot admission on a node ("boot slots", as Nova's `max_concurrent_builds`): at most K
//! guests of the node's launchers are in their CPU-heavy boot at once, so each boots near
//! its cost alone instead of K+n guests time-slicing the cores.
//!
//! The slots are K lock files in a node directory, `<dir>/boot-slot-<i>.lock`; a launcher
//! holds one with `flock(LOCK_EX)` from just before its domain starts until the guest's
//! first DHCP lease, the domain's end or the slot timeout (run.rs decides when). The lock
//! goes with the file descriptor: a launcher that crashes or is killed frees its slot,
//! nothing can leak, and there is no state to clean up. A waiter keeps its K descriptors
//! open and tries them without blocking, woken by inotify when a slot file is closed (a
//! holder releasing or dying), with a slow poll behind it in case an event is missed.
//!
//! Owns the slot files and their locks; not when a slot is taken or given back.

use anyhow::{Context, bail};
use clap::Args;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// The poll behind inotify: a missed wake-up costs at most this.
const POLL: Duration = Duration::from_secs(1);

#[derive(Args, Clone, Debug)]
pub struct BootSlotArgs {
    /// The node's directory of boot-slot lock files, shared by its launchers: at most
    /// `--boot-slots` guests boot at once. Absent: no limit.
    #[arg(long, env = "VMPOD_BOOT_SLOTS_DIR")]
    pub boot_slots_dir: Option<PathBuf>,
    /// How many guests may boot at once on the node (0: no limit). A guest boots from its
    /// domain's start to its first DHCP lease.
    #[arg(long, env = "VMPOD_BOOT_SLOTS", default_value_t = 0)]
    pub boot_slots: u32,
    /// The longest a guest holds its boot slot without leasing, in seconds.
    #[arg(long, env = "VMPOD_BOOT_SLOT_TIMEOUT", default_value_t = 30)]
    pub boot_slot_timeout: u64,
}

impl BootSlotArgs {
    /// The node's slots, when boots are limited.
    pub fn slots(&self) -> Option<BootSlots> {
        let dir = self.boot_slots_dir.as_ref()?;
        (self.boot_slots > 0).then(|| BootSlots::new(dir, self.boot_slots))
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.boot_slot_timeout)
    }
}

/// The K slots in a node directory.
#[derive(Clone, Debug)]
pub struct BootSlots {
    dir: PathBuf,
    count: u32,
}

/// A slot held: given back when dropped (or when the process ends).
#[derive(Debug)]
pub struct Slot {
    pub index: u32,
    _lock: Flock<File>,
}

impl BootSlots {
    pub fn new(dir: &Path, count: u32) -> Self {
        BootSlots {
            dir: dir.to_path_buf(),
            count,
        }
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn path(&self, index: u32) -> PathBuf {
        self.dir.join(format!("boot-slot-{index}.lock"))
    }

    /// Open every slot file (creating the directory and files as needed).
    fn open(&self) -> Result<Vec<(u32, File)>, anyhow::Error> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("boot slots: create {}", self.dir.display()))?;
        (0..self.count)
            .map(|i| {
                let path = self.path(i);
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)
                    .map(|f| (i, f))
                    .with_context(|| format!("boot slots: open {}", path.display()))
            })
            .collect()
    }

    /// One pass over the slots without blocking; the files stay open in `files` for the
    /// next pass when none is free.
    fn try_once(&self, files: &mut Vec<(u32, File)>) -> Result<Option<Slot>, anyhow::Error> {
        let mut busy = Vec::with_capacity(files.len());
        let mut taken = None;
        for (index, file) in files.drain(..) {
            if taken.is_some() {
                busy.push((index, file));
                continue;
            }
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => taken = Some(Slot { index, _lock: lock }),
                Err((file, nix::Error::EWOULDBLOCK)) => busy.push((index, file)),
                Err((_, e)) => bail!("boot slots: flock {}: {e}", self.path(index).display()),
            }
        }
        *files = busy;
        Ok(taken)
    }

    /// A free slot now, if there is one.
    #[cfg(test)]
    fn try_take(&self) -> Result<Option<Slot>, anyhow::Error> {
        self.try_once(&mut self.open()?)
    }

    /// Wait for a slot; `waiting` is called once, before the first wait, when all K are
    /// busy. Never blocks the thread: dropping the future gives up the wait.
    pub async fn take(&self, waiting: impl FnOnce()) -> Result<Slot, anyhow::Error> {
        let mut files = self.open()?;
        if let Some(slot) = self.try_once(&mut files)? {
            return Ok(slot);
        }
        waiting();
        let closes = CloseEvents::watch(&self.dir)
            .map_err(|e| {
                tracing::warn!(
                    "boot slots: no inotify on {} ({e}); polling",
                    self.dir.display()
                )
            })
            .ok();
        loop {
            match &closes {
                Some(c) => {
                    let _ = tokio::time::timeout(POLL, c.next()).await;
                }
                None => tokio::time::sleep(POLL / 10).await,
            }
            if let Some(slot) = self.try_once(&mut files)? {
                return Ok(slot);
            }
        }
    }
}

/// Files closed in a directory, as inotify reports them.
struct CloseEvents(AsyncFd<InotifyFd>);

struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl CloseEvents {
    fn watch(dir: &Path) -> std::io::Result<Self> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        inotify.add_watch(dir, AddWatchFlags::IN_CLOSE)?;
        // SAFETY: `InotifyFd` owns the inotify descriptor, which stays open and the same
        // for as long as the `AsyncFd` holding it lives.
        let fd = unsafe { AsyncFd::register_with_interest(InotifyFd(inotify), Interest::READABLE) };
        Ok(CloseEvents(fd.map_err(|e| e.into_parts().1)?))
    }

    /// Until some file in the directory is closed (the events are drained).
    async fn next(&self) {
        loop {
            let Ok(mut ready) = self.0.readable().await else {
                return;
            };
            match ready.get_inner().0.read_events() {
                Ok(_) => return,
                Err(nix::Error::EAGAIN) => ready.clear_ready(),
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// A process of its own holding slot `index` (flock(1)), until killed.
    fn holder(slots: &BootSlots, index: u32) -> std::process::Child {
        let path = slots.path(index);
        let child = Command::new("flock")
            // The lock stays with the process killed, not with a child of it.
            .args(["--exclusive", "--no-fork"])
            .arg(&path)
            .args(["sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("run flock(1) (util-linux)");
        // Held once a try here fails on that file.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut file = Some(file);
        loop {
            match Flock::lock(file.take().unwrap(), FlockArg::LockExclusiveNonblock) {
                Err((f, nix::Error::EWOULDBLOCK)) => {
                    drop(f);
                    return child;
                }
                Ok(lock) => file = Some(lock.unlock().unwrap()),
                Err((_, e)) => panic!("{e}"),
            }
            assert!(
                std::time::Instant::now() < deadline,
                "flock(1) did not take {path:?}"
            );
            std::thread::yield_now();
        }
    }

    #[test]
    fn k_holders_then_the_next_finds_none_until_one_drops() {
        let dir = tempfile::tempdir().unwrap();
        let slots = BootSlots::new(dir.path(), 3);
        let held: Vec<Slot> = (0..3).map(|_| slots.try_take().unwrap().unwrap()).collect();
        let mut indexes: Vec<u32> = held.iter().map(|s| s.index).collect();
        indexes.sort_unstable();
        assert_eq!(indexes, [0, 1, 2]);
        assert!(slots.try_take().unwrap().is_none(), "a 4th slot out of 3");
        let mut held = held;
        let freed = held.remove(1).index;
        let again = slots.try_take().unwrap().expect("the slot dropped is free");
        assert_eq!(again.index, freed);
        assert!(slots.try_take().unwrap().is_none());
        for i in 0..3 {
            assert!(slots.path(i).is_file());
        }
    }

    #[tokio::test]
    async fn the_next_waits_and_takes_the_slot_of_a_holder_killed() {
        let dir = tempfile::tempdir().unwrap();
        let slots = BootSlots::new(dir.path(), 2);
        let mut a = holder(&slots, 0);
        let mut b = holder(&slots, 1);
        let told = std::cell::Cell::new(false);
        let waiting = slots.take(|| told.set(true));
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut waiting)
                .await
                .is_err(),
            "took a slot while 2 of 2 were held"
        );
        let killed_at = std::time::Instant::now();
        b.kill().unwrap();
        b.wait().unwrap();
        let slot = tokio::time::timeout(Duration::from_secs(5), &mut waiting)
            .await
            .expect("the dead holder's slot was not freed")
            .unwrap();
        assert_eq!(slot.index, 1);
        // Woken by the close, not by the poll behind it.
        assert!(
            killed_at.elapsed() < POLL / 2,
            "took {:?} after the holder died",
            killed_at.elapsed()
        );
        assert!(told.get(), "the wait was not announced");
        a.kill().unwrap();
        a.wait().unwrap();
    }

    #[tokio::test]
    async fn a_free_slot_is_taken_without_waiting_and_a_dropped_wait_holds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let slots = BootSlots::new(dir.path(), 1);
        let first = slots.take(|| panic!("one slot was free")).await.unwrap();
        {
            let waiting = slots.take(|| {});
            tokio::pin!(waiting);
            assert!(
                tokio::time::timeout(Duration::from_millis(200), &mut waiting)
                    .await
                    .is_err()
            );
        } // the waiter gives up here
        drop(first);
        assert!(slots.try_take().unwrap().is_some(), "the slot stayed taken");
    }
}
