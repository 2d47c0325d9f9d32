//! `status.json` for readers without the control socket (the node daemon when the
//! launcher does not answer): written off the runtime thread, newest status wins.

use anyhow::Context;
use std::path::PathBuf;
use std::sync::Mutex;
use vmpod::control::{self, LauncherStatus};

/// Writes `status.json` (atomically, fsynced) on a thread of its own, so the runtime
/// thread (DHCP server, control API, supervision) never waits on the disk. Updates
/// queued meanwhile collapse into the newest; [`StatusWriter::finish`] writes the last
/// one before the launcher exits.
pub struct StatusWriter {
    tx: Mutex<Option<std::sync::mpsc::Sender<LauncherStatus>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for StatusWriter {
    fn drop(&mut self) {
        self.finish();
    }
}

impl StatusWriter {
    pub fn start(state_dir: PathBuf) -> anyhow::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<LauncherStatus>();
        let thread = std::thread::Builder::new()
            .name("status.json".into())
            .spawn(move || {
                while let Ok(mut status) = rx.recv() {
                    while let Ok(newer) = rx.try_recv() {
                        status = newer;
                    }
                    if let Err(e) = control::write_status(&state_dir, &status) {
                        tracing::warn!("status.json: {e}");
                    }
                }
            })
            .context("start the status.json writer thread")?;
        Ok(StatusWriter {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn write(&self, status: LauncherStatus) {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = tx.as_ref() {
            let _ = tx.send(status);
        }
    }

    /// Write what is queued and stop the thread (waits for the disk: at exit only; also
    /// on drop, so an early return still leaves the last status on disk).
    pub fn finish(&self) {
        drop(self.tx.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}
