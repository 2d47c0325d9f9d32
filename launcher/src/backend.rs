//! The launcher's side of the control API: status, network report and domain XML read
//! from shared state; lifecycle actions forwarded, undecided, to the launcher's main task,
//! which owns the phase, the domain and the grace-period timer (`lifecycle::PhaseOwner`).

use crate::lifecycle::SHUTTING_DOWN;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{mpsc, oneshot};
use vmpod::control::{
    AntiSpoofReport, Backend, BackendError, LauncherStatus, LifecycleAction, NetworkReport, Phase,
    StatusVersion,
};
use vmpod::dhcp::StatsHandle;
use vmpod::dhcp::v6::service::Ipv6Handle;

/// What the control API shows, updated by the main loop.
pub struct Shared {
    pub status: LauncherStatus,
    /// Bumped by each change of `status` (`Ctx::publish`): long polls wait on it.
    pub status_version: StatusVersion,
    pub network: NetworkReport,
    /// One DHCP stats handle per entry of `network.interfaces`, same order.
    pub dhcp: Vec<Option<StatsHandle>>,
    /// One DHCPv6 + RA handle per entry of `network.interfaces` (`None`: IPv4-only).
    pub ipv6: Vec<Option<Ipv6Handle>>,
    pub domain_xml: String,
}

/// A lifecycle request with the channel its answer goes back on: the phase the action
/// led to, or why it was refused or failed.
pub type ActionRequest = (
    LifecycleAction,
    oneshot::Sender<Result<Phase, BackendError>>,
);

pub struct LauncherBackend {
    pub shared: Arc<Mutex<Shared>>,
    pub actions: mpsc::Sender<ActionRequest>,
    pub console_log: PathBuf,
    pub console_socket: PathBuf,
}

impl Shared {
    /// Change the status, and tell the long polls.
    pub fn update_status(&mut self, f: impl FnOnce(&mut LauncherStatus)) {
        f(&mut self.status);
        self.status_version.bump();
    }
}

pub fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

impl Backend for LauncherBackend {
    async fn status(&self) -> Result<LauncherStatus, BackendError> {
        Ok(lock(&self.shared).status.clone())
    }

    fn status_version(&self) -> tokio::sync::watch::Receiver<u64> {
        lock(&self.shared).status_version.subscribe()
    }

    async fn network(&self) -> Result<NetworkReport, BackendError> {
        let mut report = {
            let s = lock(&self.shared);
            let mut report = s.network.clone();
            for (iface, stats) in report.interfaces.iter_mut().zip(&s.dhcp) {
                if let Some(h) = stats {
                    iface.dhcp = Some(h.snapshot());
                }
            }
            for (iface, stats) in report.interfaces.iter_mut().zip(&s.ipv6) {
                iface.ipv6 = stats.as_ref().map(Ipv6Handle::snapshot);
            }
            report
        };
        // The drop counters, live: `nft` is a process, so off the runtime thread.
        let tables: Vec<Option<String>> = report
            .interfaces
            .iter()
            .map(|i| i.anti_spoof_table().map(str::to_owned))
            .collect();
        let read = tokio::task::spawn_blocking(move || {
            tables
                .into_iter()
                .map(|t| t.map(|t| AntiSpoofReport::read(&t)))
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| BackendError::Failed(format!("reading anti-spoofing counters: {e}")))?;
        for (iface, anti) in report.interfaces.iter_mut().zip(read) {
            iface.anti_spoofing = anti;
        }
        Ok(report)
    }

    async fn domain_xml(&self) -> Result<String, BackendError> {
        Ok(lock(&self.shared).domain_xml.clone())
    }

    async fn lifecycle(&self, action: LifecycleAction) -> Result<(), BackendError> {
        // Not decided here: the owner of the phase decides, does it and answers.
        let (tx, rx) = oneshot::channel();
        self.actions
            .send((action, tx))
            .await
            .map_err(|_| BackendError::Conflict(SHUTTING_DOWN.into()))?;
        rx.await
            .map_err(|_| BackendError::Failed("the launcher dropped the request".into()))?
            .map(drop)
    }

    fn console_log(&self) -> PathBuf {
        self.console_log.clone()
    }

    fn console_socket(&self) -> PathBuf {
        self.console_socket.clone()
    }
}
