//! A recording fake [`Backend`] for tests of the control API and of its callers (the
//! handler, vmpodctl): it keeps a [`LauncherStatus`] in memory, applies lifecycle actions
//! to its phase by the launcher's own table ([`Phase::apply`]), and records every action it was asked for.
//! No VM, no libvirt; the console files are whatever paths the test gives it.

use super::action::LifecycleAction;
use super::server::{Backend, BackendError, ControlServer, ServerError, StatusVersion};
use super::types::{
    Acceleration, InterfaceReport, InterfaceStatus, LauncherStatus, NetworkReport, Phase,
};
use crate::dhcp::config::DroppedSearchDomain;
use crate::dhcp::stats::{LastClient, LeaseState};
use crate::dhcp::v4::{ClientSeen, RequestKind};
use crate::dhcp::{DEFAULT_SERVER_IP, DhcpConfig, DhcpExtras, DhcpStats};
use crate::net::antispoof::{AntiSpoofReport, DropCount, DropKind};
use crate::net::{Binding, InterfaceFacts, IpCidr, MacAddr, OriginalSettings, PlanOptions, Route};
use crate::statedir::{ScratchDir, StateDir};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// See the module doc.
#[derive(Debug)]
pub struct FakeBackend {
    state: Mutex<FakeState>,
    version: StatusVersion,
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
            version: StatusVersion::default(),
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
        self.lock()
            .status
            .set_phase(phase, reason.map(str::to_string));
        self.version.bump();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn read<T>(&self, f: impl FnOnce(&FakeState) -> T) -> Result<T, BackendError> {
        let state = self.lock();
        match &state.fail_with {
            Some(m) => Err(BackendError::Failed(m.clone())),
            None => Ok(f(&state)),
        }
    }
}

/// A [`FakeBackend`] served on `<state-dir>/control.sock` by the real [`ControlServer`]:
/// a launcher stand-in for tests of the client, the handler and vmpodctl.
pub struct FakeLauncher {
    pub backend: Arc<FakeBackend>,
    pub socket: PathBuf,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl FakeLauncher {
    /// Serve a fake with `status` and `network` from `state_dir`; its console files are
    /// `<state-dir>/console.log` and `<state-dir>/console.sock`. Needs a tokio runtime.
    pub fn start(
        state_dir: &Path,
        status: LauncherStatus,
        network: NetworkReport,
    ) -> Result<Self, ServerError> {
        let xml = format!("<domain type='qemu'><name>{}</name></domain>", status.name);
        let backend = Arc::new(FakeBackend::new(
            status,
            network,
            xml,
            ScratchDir::new(state_dir).console_log(),
            ScratchDir::new(state_dir).console_socket(),
        ));
        let server = ControlServer::bind(&StateDir::new(state_dir).control_socket())?;
        let socket = server.path().to_path_buf();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(backend.clone(), async {
            let _ = stopped.await;
        }));
        Ok(FakeLauncher {
            backend,
            socket,
            stop,
            task,
        })
    }

    /// Stop serving and wait until the server has closed its connections.
    pub async fn stop(self) -> Result<(), ServerError> {
        let _ = self.stop.send(());
        self.task
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }
}

/// A running VM `name` with one bridged interface holding 10.22.0.5, as tests expect it.
pub fn sample_status(name: &str) -> LauncherStatus {
    let mut s = LauncherStatus::pending(name);
    s.namespace = Some("default".into());
    s.acceleration = Some(Acceleration::Tcg);
    s.domain = Some(format!("default_{name}"));
    s.qemu_pid = Some(4242);
    s.interfaces.push(InterfaceStatus {
        name: "default".into(),
        mac: MacAddr([0x02, 0, 0, 0x0a, 0x16, 0x05]),
        interface_name: Some("eth0".into()),
        ip_address: Some(IpAddr::from([10, 22, 0, 5])),
        ip_addresses: vec![IpAddr::from([10, 22, 0, 5])],
    });
    s.set_phase(Phase::Running, None);
    s
}

/// The network report matching [`sample_status`], with the plan and DHCP stats the net
/// and dhcp modules compute for its facts.
pub fn sample_network() -> NetworkReport {
    let gateway = IpAddr::from([10, 22, 0, 1]);
    let facts = InterfaceFacts {
        interface: "eth0".into(),
        mac: MacAddr([0x02, 0, 0, 0x0a, 0x16, 0x05]),
        mtu: 1450,
        addresses: vec![IpCidr::new(IpAddr::from([10, 22, 0, 5]), 24)],
        routes: vec![Route {
            destination: IpCidr::new(IpAddr::from([0, 0, 0, 0]), 0),
            gateway: Some(gateway),
            metric: None,
        }],
        dns: vec![gateway],
        search: vec!["default.svc.cluster.local".into()],
        hostname: "vm1".into(),
    };
    let plan = crate::net::plan(
        &facts,
        Binding::Bridge,
        &PlanOptions::default(),
        OriginalSettings::default(),
    )
    .expect("the sample facts have an IPv4 address");
    let bridge = crate::net::bridge_name(&facts.interface);
    let config = DhcpConfig::from_facts(&facts, &bridge, DEFAULT_SERVER_IP, &DhcpExtras::default())
        .expect("the sample facts make a DHCP config");
    // A VM that got its lease, with every optional field of the stats present.
    let mut dhcp = DhcpStats::new(&config);
    dhcp.requests.discover = 1;
    dhcp.requests.request = 1;
    dhcp.replies.offer = 1;
    dhcp.replies.ack = 1;
    dhcp.lease.state = LeaseState::Bound;
    dhcp.lease.bound_at = Some(1_800_000_000);
    dhcp.lease.expires_at = Some(1_800_000_000 + u64::from(dhcp.lease.lease_secs));
    dhcp.last_client = Some(LastClient {
        seen: ClientSeen {
            chaddr: facts.mac.to_string(),
            kind: RequestKind::Request,
            xid: 0x1234_5678,
            hostname: Some("vm1".into()),
        },
        at: 1_800_000_000,
        answered: true,
    });
    dhcp.dropped_search.push(DroppedSearchDomain {
        domain: "bad..domain".into(),
        reason: "empty label".into(),
    });
    NetworkReport {
        interfaces: vec![InterfaceReport {
            name: "default".into(),
            binding: Binding::Bridge,
            facts,
            plan,
            dhcp: Some(dhcp),
            ipv6: None,
            ipv6_off: None,
            anti_spoofing: Some(AntiSpoofReport {
                table: "vmpod-as-eth0".into(),
                dropped: Some(
                    DropKind::ALL
                        .into_iter()
                        .map(|kind| DropCount {
                            kind,
                            packets: 1,
                            bytes: 64,
                        })
                        .collect(),
                ),
                unavailable: None,
            }),
        }],
    }
}

impl Backend for FakeBackend {
    async fn status(&self) -> Result<LauncherStatus, BackendError> {
        self.read(|s| s.status.clone())
    }

    fn status_version(&self) -> tokio::sync::watch::Receiver<u64> {
        self.version.subscribe()
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
        let next = state.status.phase.apply(action)?;
        let reason = matches!(action, LifecycleAction::Kill).then(|| "killed".to_string());
        state.status.set_phase(next, reason);
        drop(state);
        self.version.bump();
        Ok(())
    }

    fn console_log(&self) -> PathBuf {
        self.console_log.clone()
    }

    fn console_socket(&self) -> PathBuf {
        self.console_socket.clone()
    }
}
