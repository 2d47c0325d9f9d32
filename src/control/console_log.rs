//! The VM's serial console log, bounded without losing a byte. QEMU does not write
//! `console.log` itself: the domain's `<log file=...>` is `console.fifo`, a FIFO in the
//! scratch dir that libvirtd (uid 107) opens and hands to QEMU. The launcher holds the
//! FIFO open (read-write: opening it never blocks libvirtd, and QEMU restarting never
//! ends it) and a thread of its own copies what arrives to `console.log`. When the next
//! chunk would take the file past the cap, the chunk is split at the cap,
//! `console.log` is renamed to `console.log.1` (replacing the older one) and a new
//! `console.log` is opened: every byte read is in exactly one of the two files, and they
//! hold at most twice the cap. [`ConsoleLog::rotate`] starts a new file on demand (each
//! boot), after copying what the FIFO still holds from the boot before. No file I/O runs
//! on the async runtime; a full disk loses only what cannot be written, and rotating
//! then frees the older file.
//!
//! Owns the FIFO, the copier thread and the rotation; the file names are in
//! [`super::state`].

use crate::statedir::ScratchDir;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

type Waiters = Arc<Mutex<Vec<oneshot::Sender<io::Result<()>>>>>;

/// The running copier: FIFO in, `console.log` (rotated) out.
pub struct ConsoleLog {
    /// Written to wake the thread for a rotation; dropped to end it.
    wake: Option<UnixStream>,
    waiting: Waiters,
    thread: Option<std::thread::JoinHandle<()>>,
    fifo: PathBuf,
}

impl ConsoleLog {
    /// Make `<dir>/console.fifo` (writable by `writer`, the uid/gid libvirtd and QEMU run
    /// as; `None`: this process's own), open it, and start copying to a new
    /// `<dir>/console.log` (an earlier launcher's becomes `console.log.1`), rotating
    /// past `max` bytes.
    pub fn start(dir: &Path, max: u64, writer: Option<(u32, u32)>) -> io::Result<ConsoleLog> {
        let fifo = ScratchDir::new(dir).console_fifo();
        let named = |e: io::Error, what: &str, p: &Path| {
            io::Error::new(e.kind(), format!("{what} {}: {e}", p.display()))
        };
        match std::fs::remove_file(&fifo) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(named(e, "remove", &fifo));
            }
            _ => {}
        }
        nix::unistd::mkfifo(
            &fifo,
            nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        )
        .map_err(|e| named(e.into(), "mkfifo", &fifo))?;
        if let Some((uid, gid)) = writer {
            std::os::unix::fs::chown(&fifo, Some(uid), Some(gid))
                .map_err(|e| named(e, "chown", &fifo))?;
        }
        // Read-write: never blocks, and there is always a writer, so no EOF between boots.
        let input = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&fifo)
            .map_err(|e| named(e, "open", &fifo))?;
        let mut copier = Copier {
            dir: dir.to_path_buf(),
            max,
            out: None,
            len: 0,
        };
        copier.open()?;
        if copier.len > 0 {
            copier.rotate()?;
        }
        let (wake, woken) = UnixStream::pair()?;
        woken.set_nonblocking(true)?;
        let waiting = Waiters::default();
        let waiters = waiting.clone();
        let thread = std::thread::Builder::new()
            .name("console-log".into())
            .spawn(move || copier.run(&input, &woken, &waiters))?;
        Ok(ConsoleLog {
            wake: Some(wake),
            waiting,
            thread: Some(thread),
            fifo,
        })
    }

    /// The FIFO the domain's console log goes to.
    pub fn fifo(&self) -> &Path {
        &self.fifo
    }

    /// Copy what the FIFO holds, then start a new `console.log` (the current one becomes
    /// `console.log.1`), off the runtime thread.
    pub async fn rotate(&self) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(tx);
        let mut wake = self.wake.as_ref().ok_or(io::ErrorKind::BrokenPipe)?;
        wake.write_all(b"r")?;
        rx.await
            .map_err(|_| io::Error::other("the console log thread ended"))?
    }
}

impl Drop for ConsoleLog {
    /// Copy what the FIFO still holds and end the thread.
    fn drop(&mut self) {
        drop(self.wake.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Copier {
    dir: PathBuf,
    max: u64,
    out: Option<File>,
    len: u64,
}

impl Copier {
    fn log(&self) -> PathBuf {
        ScratchDir::new(&self.dir).console_log()
    }

    fn open(&mut self) -> io::Result<()> {
        let path = self.log();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", path.display())))?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        self.len = file.metadata()?.len();
        self.out = Some(file);
        Ok(())
    }

    /// `console.log` -> `console.log.1`, and a new `console.log`.
    fn rotate(&mut self) -> io::Result<()> {
        self.out = None;
        let (log, previous) = (
            self.log(),
            ScratchDir::new(&self.dir).console_log_previous(),
        );
        std::fs::rename(&log, &previous).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("rename {} to {}: {e}", log.display(), previous.display()),
            )
        })?;
        self.open()
    }

    /// Append `data`, splitting it at the cap: the part that fits, a rotation, the rest.
    fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let room = usize::try_from(self.max.saturating_sub(self.len)).unwrap_or(usize::MAX);
            if room == 0 {
                self.rotate()?;
                continue;
            }
            let (now, rest) = data.split_at(room.min(data.len()));
            let out = match &mut self.out {
                Some(f) => f,
                None => {
                    self.open()?;
                    self.out.as_mut().expect("just opened")
                }
            };
            if let Err(e) = out.write_all(now) {
                // A full disk: the older file goes, and the chunk is tried once more.
                self.rotate()?;
                let out = self.out.as_mut().expect("just opened");
                out.write_all(now).map_err(|e2| {
                    io::Error::new(e2.kind(), format!("writing the console log: {e}; {e2}"))
                })?;
            }
            self.len += now.len() as u64;
            data = rest;
        }
        Ok(())
    }

    /// Copy everything the FIFO holds now.
    fn drain(&mut self, input: &File, buf: &mut [u8]) -> io::Result<()> {
        loop {
            match (&*input).read(buf) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    if let Err(e) = self.write(&buf[..n]) {
                        tracing::warn!("console log: {n} bytes lost: {e}");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn run(mut self, input: &File, woken: &UnixStream, waiters: &Waiters) {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let mut fds = [
                PollFd::new(input.as_fd(), PollFlags::POLLIN),
                PollFd::new(woken.as_fd(), PollFlags::POLLIN),
            ];
            if let Err(e) = poll(&mut fds, PollTimeout::NONE) {
                if e == nix::errno::Errno::EINTR {
                    continue;
                }
                tracing::warn!("console log: poll: {e}");
                return;
            }
            let (data, wake) = (fds[0].any(), fds[1].any());
            if data.unwrap_or(false)
                && let Err(e) = self.drain(input, &mut buf)
            {
                tracing::warn!("console log: reading the console FIFO: {e}");
                return;
            }
            if wake.unwrap_or(false) {
                let mut b = [0u8; 64];
                let ended = matches!((&*woken).read(&mut b), Ok(0));
                let drained = self.drain(input, &mut buf);
                if ended {
                    return;
                }
                let rotated = drained.and_then(|()| self.rotate());
                let pending = std::mem::take(
                    &mut *waiters
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                );
                for tx in pending {
                    let _ = tx.send(match &rotated {
                        Ok(()) => Ok(()),
                        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer (QEMU's side) writes 3.5 times the cap in odd-sized chunks; a rotation is
    /// asked for in between. Every byte is in console.log.1 + console.log, in order, and
    /// neither file passes the cap.
    #[tokio::test]
    async fn every_byte_lands_once_and_no_file_passes_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let max = 1000;
        let log = ConsoleLog::start(dir.path(), max, None).unwrap();
        let mut qemu = OpenOptions::new().append(true).open(log.fifo()).unwrap();
        let all: Vec<u8> = (0..3500u32).map(|i| (i % 251) as u8).collect();
        let (first, second) = all.split_at(1700);
        for chunk in first.chunks(333) {
            qemu.write_all(chunk).unwrap();
        }
        log.rotate().await.unwrap();
        // After the rotation the old boot's bytes are all in console.log.1.
        let previous = std::fs::read(ScratchDir::new(dir.path()).console_log_previous()).unwrap();
        assert_eq!(previous, &first[1000..]);
        for chunk in second.chunks(77) {
            qemu.write_all(chunk).unwrap();
        }
        drop(log); // copies what is left
        let previous = std::fs::read(ScratchDir::new(dir.path()).console_log_previous()).unwrap();
        let current = std::fs::read(ScratchDir::new(dir.path()).console_log()).unwrap();
        assert!(previous.len() as u64 <= max && current.len() as u64 <= max);
        // The last 1800 bytes: 1000 in .1 (rotated at the cap), 800 in console.log.
        assert_eq!([previous, current].concat(), second);
    }
}
