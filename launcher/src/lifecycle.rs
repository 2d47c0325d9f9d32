//! The launcher's lifecycle: which phase a domain state is, how the launcher exits once
//! the domain is gone (pure), and the [`PhaseOwner`], the one place the launcher decides a
//! control API action by [`Phase::apply`]. The API task only forwards an action; the
//! launcher's main task, which publishes the phase, decides it, has the domain do it and
//! answers, one action at a time. No libvirt here: the domain is behind [`Domain`].

use crate::accel_fallback::Pause;
use crate::backend::ActionRequest;
use std::collections::VecDeque;
use tokio::sync::mpsc;
use vmpod::control::{BackendError, LauncherStatus, LifecycleAction, Phase};
use vmpod::domain::{DomainState, StopReason};

/// The answer to an action that comes in once the launcher is tearing down.
pub const SHUTTING_DOWN: &str = "the launcher is shutting down";

/// What carries a lifecycle action out on the domain: the libvirt client in `run`, a
/// recording stand-in in the tests.
pub trait Domain {
    /// Do `action`: a shutdown returns once the guest was asked, the rest once done.
    async fn act(&mut self, action: LifecycleAction) -> Result<(), BackendError>;
}

/// The phase the owner decides on, and where it publishes what an action changed: the
/// launcher's status (and status.json) in `run`, a plain status in the tests.
pub trait StatusBoard {
    fn phase(&self) -> Phase;
    fn publish(&self, f: impl FnOnce(&mut LauncherStatus));
}

/// The owner of the VM's phase for the control API's lifecycle actions (see the module
/// doc). It lives in the launcher's main task: while there is no domain yet (network,
/// boot) it refuses what the phase forbids and holds the rest; once the domain runs it
/// serves them in order.
pub struct PhaseOwner {
    requests: mpsc::Receiver<ActionRequest>,
    /// Allowed by the phase, but asked before the domain was there to do it.
    held: VecDeque<ActionRequest>,
}

impl PhaseOwner {
    pub fn new(requests: mpsc::Receiver<ActionRequest>) -> Self {
        PhaseOwner {
            requests,
            held: VecDeque::new(),
        }
    }

    /// The next request from the control API (cancel-safe: a `select!` branch).
    pub async fn recv(&mut self) -> Option<ActionRequest> {
        self.requests.recv().await
    }

    /// A request while there is no domain to act on: refused now when the phase forbids
    /// it, else held for [`PhaseOwner::serve_held`].
    pub fn hold(&mut self, board: &impl StatusBoard, (action, reply): ActionRequest) {
        match board.phase().apply(action) {
            Err(conflict) => {
                let _ = reply.send(Err(conflict.into()));
            }
            Ok(_) => self.held.push_back((action, reply)),
        }
    }

    /// Serve the requests held while the domain was not there, now that it is.
    pub async fn serve_held(&mut self, board: &impl StatusBoard, domain: &mut impl Domain) {
        while let Some(request) = self.held.pop_front() {
            let _answered = serve(board, domain, request).await;
        }
    }

    /// Stop taking requests: what is queued or held is refused, and so is every later
    /// one (the control API answers 409 [`SHUTTING_DOWN`]).
    pub fn close(mut self) {
        self.requests.close();
        let queued = std::iter::from_fn(|| self.requests.try_recv().ok());
        for (_, reply) in self.held.drain(..).chain(queued) {
            let _ = reply.send(Err(BackendError::Conflict(SHUTTING_DOWN.into())));
        }
    }
}

/// Serve one request: decide it by [`Phase::apply`] on the phase now, have `domain` do
/// it, publish the phase it led to and answer with it. Decided and done in the task that
/// owns the phase, so a second request is decided on the phase the first led to, never on
/// the same one. A shutdown only asks the guest: the phase stays until it powers off (and
/// a kill, or a shutdown with a shorter grace, may follow).
pub async fn serve(
    board: &impl StatusBoard,
    domain: &mut impl Domain,
    (action, reply): ActionRequest,
) -> Result<Phase, BackendError> {
    let result = decide_and_do(board, domain, action).await;
    let _ = reply.send(result.clone());
    result
}

async fn decide_and_do(
    board: &impl StatusBoard,
    domain: &mut impl Domain,
    action: LifecycleAction,
) -> Result<Phase, BackendError> {
    let now = board.phase();
    let next = now.apply(action)?;
    domain.act(action).await?;
    match action {
        LifecycleAction::Shutdown { .. } => return Ok(now),
        LifecycleAction::Pause => board.publish(|s| {
            let pause = Pause::requested();
            s.set_phase(next, Some(pause.message));
            s.pause_reason = Some(pause.reason);
        }),
        LifecycleAction::Resume => board.publish(|s| s.set_phase(next, None)),
        LifecycleAction::Kill => board.publish(|s| {
            s.set_phase(next, reason_of(DomainState::Stopped(StopReason::Destroyed)));
        }),
    }
    Ok(next)
}

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
    use crate::backend::{LauncherBackend, Shared, lock};
    use std::sync::{Arc, Mutex};
    use vmpod::control::{Backend, NetworkReport, PauseReason};

    /// A status the owner publishes to, as the launcher's `Ctx`.
    struct Board(Arc<Mutex<Shared>>);

    impl StatusBoard for Board {
        fn phase(&self) -> Phase {
            lock(&self.0).status.phase
        }
        fn publish(&self, f: impl FnOnce(&mut LauncherStatus)) {
            lock(&self.0).update_status(f);
        }
    }

    /// The domain: records what it was asked to do; `yield`s first, as libvirt takes a
    /// while, so that a racing request gets its chance.
    #[derive(Default)]
    struct Recorder(Vec<LifecycleAction>);

    impl Domain for Recorder {
        async fn act(&mut self, action: LifecycleAction) -> Result<(), BackendError> {
            tokio::task::yield_now().await;
            self.0.push(action);
            Ok(())
        }
    }

    /// The control API's backend and the owner on the other end of its channel, with the
    /// VM in `phase`.
    fn launcher(phase: Phase) -> (LauncherBackend, Board, PhaseOwner) {
        let mut status = LauncherStatus::pending("vm1");
        status.set_phase(phase, None);
        let shared = Arc::new(Mutex::new(Shared {
            status,
            status_version: Default::default(),
            network: NetworkReport { interfaces: vec![] },
            dhcp: vec![],
            ipv6: vec![],
            domain_xml: String::new(),
        }));
        let (tx, rx) = mpsc::channel(8);
        let backend = LauncherBackend {
            shared: shared.clone(),
            actions: tx,
            console_log: "/nonexistent/console.log".into(),
            console_socket: "/nonexistent/console.sock".into(),
        };
        (backend, Board(shared), PhaseOwner::new(rx))
    }

    /// `actions` asked at once through the control API's backend, which then goes away
    /// (and the owner's queue ends with it); what each got.
    async fn ask(
        backend: LauncherBackend,
        actions: impl IntoIterator<Item = LifecycleAction>,
    ) -> Vec<Result<(), BackendError>> {
        futures::future::join_all(actions.into_iter().map(|a| backend.lifecycle(a))).await
    }

    /// Two API requests at once, served by the owner; what each got, what the domain was
    /// asked to do and the status published.
    async fn race(
        phase: Phase,
        first: LifecycleAction,
        second: LifecycleAction,
    ) -> (
        [Result<(), BackendError>; 2],
        Vec<LifecycleAction>,
        LauncherStatus,
    ) {
        let (backend, board, mut owner) = launcher(phase);
        let mut domain = Recorder::default();
        let (answers, ()) = tokio::join!(ask(backend, [first, second]), async {
            while let Some(request) = owner.recv().await {
                let _answered = serve(&board, &mut domain, request).await;
            }
        });
        let status = lock(&board.0).status.clone();
        let answers = <[_; 2]>::try_from(answers).expect("two answers");
        (answers, domain.0, status)
    }

    #[tokio::test]
    async fn racing_actions_are_decided_one_after_the_other_by_the_owner() {
        use LifecycleAction::*;
        // Both asked while Running: the second is decided on the phase the first led to,
        // not on the Running both were asked in.
        let ([a, b], done, status) = race(Phase::Running, Pause, Pause).await;
        assert_eq!(a, Ok(()));
        assert_eq!(
            b,
            Err(BackendError::Conflict(
                "cannot pause a VM in phase Paused".into()
            ))
        );
        assert_eq!(done, [Pause], "the domain is paused once");
        assert_eq!(
            (status.phase, status.pause_reason),
            (Phase::Paused, Some(PauseReason::User))
        );

        let ([a, b], done, status) = race(Phase::Running, Pause, Resume).await;
        assert_eq!((a, b), (Ok(()), Ok(())), "resume sees the pause done");
        assert_eq!(done, [Pause, Resume]);
        assert_eq!((status.phase, status.pause_reason), (Phase::Running, None));

        // A kill reaching Succeeded ends it for the resume behind it.
        let ([a, b], done, status) = race(Phase::Paused, Kill, Resume).await;
        assert_eq!(a, Ok(()));
        assert_eq!(
            b,
            Err(BackendError::Conflict(
                "cannot resume a VM in phase Succeeded".into()
            ))
        );
        assert_eq!(done, [Kill]);
        assert_eq!(status.phase, Phase::Succeeded);
        assert_eq!(status.reason.as_deref(), Some("domain destroyed"));
    }

    #[tokio::test]
    async fn a_shutdown_only_asks_so_a_kill_may_follow() {
        use LifecycleAction::*;
        let shutdown = Shutdown {
            grace_period_seconds: Some(60),
        };
        let ([a, b], done, status) = race(Phase::Running, shutdown, Kill).await;
        assert_eq!((a, b), (Ok(()), Ok(())));
        assert_eq!(done, [shutdown, Kill]);
        assert_eq!(status.phase, Phase::Succeeded);
    }

    #[tokio::test]
    async fn before_the_domain_forbidden_actions_are_refused_and_the_rest_held() {
        use LifecycleAction::*;
        let (backend, board, mut owner) = launcher(Phase::Pending);
        let (answers, ()) = tokio::join!(ask(backend, [Kill]), async {
            while let Some(request) = owner.recv().await {
                owner.hold(&board, request);
            }
        });
        assert_eq!(
            answers,
            [Err(BackendError::Conflict(
                "cannot kill a VM in phase Pending".into()
            ))]
        );

        // Scheduled (booting again under TCG): the kill waits for the domain.
        let (backend, board, mut owner) = launcher(Phase::Scheduled);
        let mut domain = Recorder::default();
        let (answer, ()) = tokio::join!(backend.lifecycle(Kill), async {
            let request = owner.recv().await.expect("a request");
            owner.hold(&board, request);
            assert!(domain.0.is_empty(), "no domain yet");
            owner.serve_held(&board, &mut domain).await;
        });
        assert_eq!(answer, Ok(()));
        assert_eq!(domain.0, [Kill]);
    }

    #[tokio::test]
    async fn once_closed_every_request_is_refused() {
        use LifecycleAction::*;
        let (backend, board, mut owner) = launcher(Phase::Scheduled);
        let shutting_down = Err(BackendError::Conflict(SHUTTING_DOWN.into()));
        // One held, one still queued when the launcher tears down.
        let (held, queued, ()) =
            tokio::join!(backend.lifecycle(Kill), backend.lifecycle(Kill), async {
                let request = owner.recv().await.expect("a request");
                owner.hold(&board, request);
                tokio::task::yield_now().await;
                owner.close();
            });
        assert_eq!((&held, &queued), (&shutting_down, &shutting_down));
        assert_eq!(backend.lifecycle(Kill).await, shutting_down, "later ones");
    }

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
