//! Reaping when the launcher is PID 1 of its container: a minimal init in front of it.
//!
//! PID 1 inherits every orphan of its PID namespace: libvirtd daemonizes QEMU (and its
//! capability probes), so their exit statuses land on PID 1, and until PID 1 collects
//! them they stay zombies that libvirtd waits on ("Failed to terminate process ...:
//! Device or resource busy", tens of seconds per probe) and that a destroy hangs on.
//! The launcher's own children are waited for by tokio's process driver, per pid. A
//! `waitpid(-1)` reaper inside the same process would race it and steal those exit
//! statuses; telling the two apart needs a registry of tokio's pids, or a scan of
//! `/proc` on every SIGCHLD.
//!
//! So, when the launcher finds itself PID 1, it forks before anything else (before the
//! tokio runtime, single-threaded): the parent stays PID 1 and does nothing but
//! `waitpid(-1)` and forward termination signals to the child, which goes on to be the
//! launcher. When the launcher exits, PID 1 exits with its status. Nothing is racing:
//! PID 1 has no child of its own except the launcher, which it reaps like any other,
//! and the launcher reaps only what it spawned. Not PID 1 (a bare host, local mode),
//! the launcher's orphans go to the host's init and nothing here runs.
//!
//! Owns the PID-1 process; knows nothing of the pod.

use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, getpid};
use std::process::ExitCode;

/// Signals PID 1 passes on to the launcher (a container runtime stops a container by
/// signalling its PID 1).
const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// If this process is PID 1, fork: the child returns `None` and carries on as the
/// launcher; the parent becomes the reaper and returns the launcher's exit code when
/// it is gone. Otherwise `None` at once. Call first thing in `main`, while
/// single-threaded.
pub fn init_if_pid1() -> Option<ExitCode> {
    if getpid().as_raw() != 1 {
        return None;
    }
    let mut watched = SigSet::empty();
    for s in FORWARDED {
        watched.add(s);
    }
    watched.add(Signal::SIGCHLD);
    // Blocked before the fork, so no signal is lost in between; the child unblocks.
    if let Err(e) = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&watched), None) {
        eprintln!("vmpod-launcher: PID 1: cannot block signals ({e}); running without a reaper");
        return None;
    }
    // SAFETY: called while the process is single-threaded (first thing in main), so
    // the child may do anything.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let _ = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&watched), None);
            None
        }
        Ok(ForkResult::Parent { child }) => Some(reap_until(child, &watched)),
        Err(e) => {
            let _ = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&watched), None);
            eprintln!("vmpod-launcher: PID 1: fork failed ({e}); running without a reaper");
            None
        }
    }
}

/// PID 1's loop: forward signals to `launcher`, reap every child, and return the
/// launcher's exit code once it has been reaped.
fn reap_until(launcher: Pid, watched: &SigSet) -> ExitCode {
    loop {
        if let Some(code) = reap_all(launcher) {
            return code;
        }
        match watched.wait() {
            Ok(Signal::SIGCHLD) => {}
            Ok(sig) => {
                let _ = kill(launcher, sig);
            }
            Err(_) => {}
        }
    }
}

/// Reap every exited child; the launcher's exit code if it was among them.
fn reap_all(launcher: Pid) -> Option<ExitCode> {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == launcher => {
                return Some(ExitCode::from(u8::try_from(code).unwrap_or(1)));
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == launcher => {
                // As a shell reports it: 128 + the signal.
                return Some(ExitCode::from(128u8.wrapping_add(sig as u8)));
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}
