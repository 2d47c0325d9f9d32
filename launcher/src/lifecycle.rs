//! Pure lifecycle decisions of the launcher: which phase a domain state is, and how the
//! launcher exits once the domain is gone. No I/O.

use vmpod::control::Phase;
use vmpod::domain::{DomainState, StopReason};

/// The phase the status reports for a domain state.
pub fn phase_of(state: DomainState) -> Phase {
    match state {
        DomainState::Pending => Phase::Scheduled,
        DomainState::Running | DomainState::ShuttingDown => Phase::Running,
        DomainState::Paused => Phase::Paused,
        DomainState::Stopped(StopReason::Shutdown | StopReason::Destroyed) => Phase::Succeeded,
        DomainState::Stopped(_) | DomainState::Crashed => Phase::Failed,
    }
}

/// How the launcher ends for a final domain state: `Ok(())` exits 0, `Err(reason)` exits
/// non-zero with the reason.
pub fn outcome(state: DomainState) -> Result<(), String> {
    match state {
        DomainState::Stopped(StopReason::Shutdown)
        | DomainState::Stopped(StopReason::Destroyed) => Ok(()),
        DomainState::Stopped(r) => Err(format!("domain stopped: {r:?}")),
        DomainState::Crashed => Err("guest crashed".into()),
        other => Err(format!("domain ended in state {other:?}")),
    }
}

/// The reason text the status carries for a final state.
pub fn reason_of(state: DomainState) -> Option<String> {
    match state {
        DomainState::Stopped(StopReason::Shutdown) => Some("guest powered off".into()),
        DomainState::Stopped(StopReason::Destroyed) => Some("domain destroyed".into()),
        DomainState::Stopped(r) => Some(format!("domain stopped: {r:?}")),
        DomainState::Crashed => Some("guest crashed".into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases() {
        assert_eq!(phase_of(DomainState::Running), Phase::Running);
        assert_eq!(phase_of(DomainState::ShuttingDown), Phase::Running);
        assert_eq!(phase_of(DomainState::Paused), Phase::Paused);
        assert_eq!(
            phase_of(DomainState::Stopped(StopReason::Shutdown)),
            Phase::Succeeded
        );
        assert_eq!(
            phase_of(DomainState::Stopped(StopReason::Crashed)),
            Phase::Failed
        );
        assert_eq!(phase_of(DomainState::Crashed), Phase::Failed);
    }

    #[test]
    fn outcomes() {
        assert!(outcome(DomainState::Stopped(StopReason::Shutdown)).is_ok());
        assert!(outcome(DomainState::Stopped(StopReason::Destroyed)).is_ok());
        let e = outcome(DomainState::Stopped(StopReason::Failed)).unwrap_err();
        assert!(e.contains("Failed"), "{e}");
        assert!(outcome(DomainState::Crashed).is_err());
    }
}
