//! A recording fake [`Backend`] for tests of the control API and of its callers (the
//! handler, vmpodctl): it keeps a [`LauncherStatus`] in memory, applies lifecycle actions
//! to its phase the way the launcher does, and records every action it was asked for.
//! No VM, no libvirt; the console files are whatever paths the test gives it.

use super::action::LifecycleAction;
use super::server::{Backend, BackendError};
use super::types::{LauncherStatus, NetworkReport, Phase};
use std::path::PathBuf;
use std::sync::Mutex;

/// See the module doc.
#[derive(Debug)]
pub struct FakeBackend {
    state: Mutex<FakeState>,
    console_log: PathBuf,
    console_socket: PathBuf,
}

#[derive(Debug)]
struct FakeState {
    status: LauncherStatus,
    network: NetworkReport,
    domain_xml: String,
    actions: Vec<LifecycleAction>,
    fail_with: Option<String>,
}

impl FakeBackend {
    pub fn new(
        status: LauncherStatus,
        network: NetworkReport,
        domain_xml: impl Into<String>,
        console_log: PathBuf,
        console_socket: PathBuf,
    ) -> Self {
        FakeBackend {
            state: Mutex::new(FakeState {
                status,
                network,
                domain_xml: domain_xml.into(),
                actions: Vec::new(),
                fail_with: None,
            }),
            console_log,
            console_socket,
        }
    }

    /// The lifecycle actions asked for so far, in order (refused ones included).
    pub fn actions(&self) -> Vec<LifecycleAction> {
        self.lock().actions.clone()
    }

    /// Make every later call fail with `message` (a 500), or succeed again with `None`.
    pub fn fail_with(&self, message: Option<&str>) {
        self.lock().fail_with = message.map(str::to_string);
    }

    /// Set the phase directly, as a domain event would.
    pub fn set_phase(&self, phase: Phase, reason: Option<&str>) {
        self.lock().status.set_phase(phase, reason.map(str::to_string));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn read<T>(&self, f: impl FnOnce(&FakeState) -> T) -> Result<T, BackendError> {
        let state = self.lock();
        match &state.fail_with {
            Some(m) => Err(BackendError::Failed(m.clone())),
            None => Ok(f(&state)),
        }
    }
}

/// The phase `action` leads to from `phase`, or why it does not apply.
pub fn next_phase(phase: Phase, action: LifecycleAction) -> Result<Phase, String> {
    use LifecycleAction::*;
    match (phase, action) {
        (p, _) if p.is_terminal() => Err(format!("the VM is already {p}")),
        (Phase::Running | Phase::Paused, Shutdown { .. }) => Ok(Phase::Succeeded),
        (Phase::Running, Pause) => Ok(Phase::Paused),
        (Phase::Paused, Resume) => Ok(Phase::Running),
        (_, Kill) => Ok(Phase::Failed),
        (p, a) => Err(format!("cannot {} a VM that is {p}", a.name())),
    }
}

impl Backend for FakeBackend {
    async fn status(&self) -> Result<LauncherStatus, BackendError> {
        self.read(|s| s.status.clone())
    }

    async fn network(&self) -> Result<NetworkReport, BackendError> {
        self.read(|s| s.network.clone())
    }

    async fn domain_xml(&self) -> Result<String, BackendError> {
        self.read(|s| s.domain_xml.clone())
    }

    async fn lifecycle(&self, action: LifecycleAction) -> Result<(), BackendError> {
        let mut state = self.lock();
        state.actions.push(action);
        if let Some(m) = &state.fail_with {
            return Err(BackendError::Failed(m.clone()));
        }
        let next = next_phase(state.status.phase, action).map_err(BackendError::Conflict)?;
        let reason = matches!(action, LifecycleAction::Kill).then(|| "killed".to_string());
        state.status.set_phase(next, reason);
        Ok(())
    }

    fn console_log(&self) -> PathBuf {
        self.console_log.clone()
    }

    fn console_socket(&self) -> PathBuf {
        self.console_socket.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_transitions() {
        let shutdown = LifecycleAction::Shutdown { grace_period_seconds: None };
        assert_eq!(next_phase(Phase::Running, LifecycleAction::Pause), Ok(Phase::Paused));
        assert_eq!(next_phase(Phase::Paused, LifecycleAction::Resume), Ok(Phase::Running));
        assert_eq!(next_phase(Phase::Paused, shutdown), Ok(Phase::Succeeded));
        assert_eq!(next_phase(Phase::Pending, LifecycleAction::Kill), Ok(Phase::Failed));
        let e = next_phase(Phase::Running, LifecycleAction::Resume).unwrap_err();
        assert_eq!(e, "cannot resume a VM that is Running");
        assert!(next_phase(Phase::Succeeded, LifecycleAction::Kill).is_err());
    }
}
