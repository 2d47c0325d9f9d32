//! `vmpod-handler node`: for the launcher pods on this node, read each launcher's status
//! through its control socket (`<state root>/<pod uid>/control.sock`, falling back to the
//! `status.json` it last wrote) and patch the VMI's status: phase, interfaces with IPs,
//! conditions. Launcher status changes produce no API events, so each running pod is
//! polled. A restart re-lists the node's pods and recomputes everything from the launchers,
//! so nothing is lost. State directories whose pod is gone from the node are removed
//! ([`stale_state_dirs`]).

use super::kube_ops::update_status;
use super::launcher_pod::{LAUNCHER_SELECTOR, VMI_LABEL, state_dir_on_host};
use super::metrics::Metrics;
use super::status::node_status;
use super::{ReconcileError, drive, on_failure, owned_by};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use std::collections::HashSet;
use std::future::Future;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use std::time::SystemTime;
use vmpod::api::{VirtualMachineInstance, VmiPhase};
use vmpod::control::{LauncherStatus, PodIdentity};

/// Where the node daemon gets a launcher's status: the seam between kube and control.sock.
pub trait LauncherStatusSource: Send + Sync + 'static {
    /// The status of the launcher of pod `pod_uid`, whose state directory is `state_dir`,
    /// or why not.
    fn status(
        &self,
        state_dir: &Path,
        pod_uid: &str,
    ) -> impl Future<Output = Result<LauncherStatus, String>> + Send;
}

/// The real source: the control socket, else `status.json`, read without trusting the
/// state directory's content (`vmpod::control::guarded`: no symlink, FIFO or oversized
/// file is opened, the socket's peer must be the launcher status.json names, and in the
/// pod's cgroup: a tenant cannot lead the daemon to another pod's launcher).
pub struct ControlSocketSource {
    /// How long reading status.json, and then the socket, each get.
    pub timeout: Duration,
}

impl LauncherStatusSource for ControlSocketSource {
    async fn status(&self, state_dir: &Path, pod_uid: &str) -> Result<LauncherStatus, String> {
        let pod = PodIdentity::KubePod {
            uid: pod_uid.to_owned(),
        };
        vmpod::control::status_from_dir(state_dir, &pod, self.timeout)
            .await
            .map(|(status, _)| status)
            .map_err(|e| e.to_string())
    }
}

/// What every reconcile needs.
pub struct NodeContext<S> {
    /// The API client.
    pub client: Client,
    /// Node directory holding the per-pod state directories.
    pub state_root: String,
    /// Where launcher status comes from.
    pub source: S,
    /// How often a running launcher is polled.
    pub poll: Duration,
    /// Reconcile counts and the node's VMIs by phase.
    pub metrics: Arc<Metrics>,
}

/// Report one launcher pod's status into its VMI.
pub async fn reconcile<S: LauncherStatusSource>(
    pod: Arc<Pod>,
    ctx: Arc<NodeContext<S>>,
) -> Result<Action, ReconcileError> {
    let _measure = ctx.metrics.reconcile.count_and_measure();
    let ns = pod
        .namespace()
        .ok_or(ReconcileError::Unaddressable("Pod"))?;
    let Some(vmi_name) = pod.labels().get(VMI_LABEL).cloned() else {
        return Ok(Action::await_change());
    };
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &ns);
    let key = format!("{ns}/{vmi_name}");
    let vmi = vmis.get_opt(&vmi_name).await.map_err(ReconcileError::kube(
        "get",
        format!("VirtualMachineInstance {key}"),
    ))?;
    let Some(vmi) = vmi else {
        ctx.metrics.vmis.set(&key, None);
        return Ok(Action::await_change()); // deleted; garbage collection takes the pod
    };
    let ours = owned_by(pod.as_ref(), &vmi);
    let phase = vmi.status.as_ref().and_then(|s| s.phase);
    let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    if !ours || pod.metadata.deletion_timestamp.is_some() {
        ctx.metrics.vmis.set(&key, None);
        return Ok(Action::await_change());
    }
    ctx.metrics.vmis.set(&key, phase);
    if phase.is_some_and(VmiPhase::is_final) {
        return Ok(Action::await_change());
    }
    if !running {
        return Ok(Action::requeue(ctx.poll)); // the controller reports pending pods
    }
    let pod_uid = pod
        .metadata
        .uid
        .as_deref()
        .ok_or(ReconcileError::Unaddressable("Pod"))?;
    let state_dir = state_dir_on_host(&ctx.state_root, pod_uid);
    let launcher = ctx.source.status(Path::new(&state_dir), pod_uid).await;
    if let Err(why) = &launcher {
        tracing::debug!(%state_dir, "launcher status unavailable: {why}");
    }
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let written = update_status(&vmis, &vmi, |v| {
        node_status(v, &pod, launcher.as_ref().map_err(String::as_str), &now)
    })
    .await?;
    ctx.metrics.vmis.set(&key, written.phase);
    Ok(Action::requeue(ctx.poll))
}

/// Count, log and retry later.
pub fn error_policy<S>(pod: Arc<Pod>, error: &ReconcileError, ctx: Arc<NodeContext<S>>) -> Action {
    let object = format!(
        "Pod {}/{}",
        pod.namespace().unwrap_or_default(),
        pod.name_any()
    );
    on_failure(object, error, &ctx.metrics, ctx.poll)
}

/// A state directory younger than this is never removed: kubelet may have made it for a
/// pod the node daemon's watch has not delivered yet.
pub const STATE_DIR_MIN_AGE: Duration = Duration::from_secs(120);

/// The entries of the state root that belong to no pod in `live` (pod UIDs) and are older
/// than [`STATE_DIR_MIN_AGE`]: `(name, age)` in, names out (pure).
pub fn stale_state_dirs<'a>(
    entries: &'a [(String, Duration)],
    live: &HashSet<String>,
) -> Vec<&'a str> {
    entries
        .iter()
        .filter(|(name, age)| !live.contains(name) && *age >= STATE_DIR_MIN_AGE)
        .map(|(name, _)| name.as_str())
        .collect()
}

/// Remove the state directories under `root` whose pod is not in `live`; returns what was
/// removed. A missing root is an empty one.
pub fn remove_stale_state_dirs(
    root: &Path,
    live: &HashSet<String>,
) -> std::io::Result<Vec<PathBuf>> {
    let now = SystemTime::now();
    let entries: Vec<(String, Duration)> = match std::fs::read_dir(root) {
        Ok(dir) => dir
            .flatten()
            .filter_map(|e| {
                let modified = e.metadata().ok()?.modified().ok()?;
                let age = now.duration_since(modified).unwrap_or_default();
                Some((e.file_name().to_str()?.to_string(), age))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    let mut removed = Vec::new();
    for name in stale_state_dirs(&entries, live) {
        let path = root.join(name);
        std::fs::remove_dir_all(&path)?;
        tracing::info!(dir = %path.display(), "removed the state dir of a pod that is gone");
        removed.push(path);
    }
    Ok(removed)
}

/// Run the node daemon for `node_name` until SIGTERM/SIGINT.
pub async fn run<S: LauncherStatusSource>(client: Client, node_name: &str, ctx: NodeContext<S>) {
    let pods: Api<Pod> = Api::all(client);
    let config = watcher::Config::default()
        .labels(LAUNCHER_SELECTOR)
        .fields(&format!("spec.nodeName={node_name}"));
    let controller = Controller::new(pods, config);
    let store = controller.store();
    let (root, every) = (
        PathBuf::from(&ctx.state_root),
        ctx.poll.max(STATE_DIR_MIN_AGE / 4),
    );
    let janitor = tokio::spawn(async move {
        if store.wait_until_ready().await.is_err() {
            return;
        }
        loop {
            let live: HashSet<String> = store
                .state()
                .iter()
                .filter_map(|p| p.metadata.uid.clone())
                .collect();
            if let Err(e) = remove_stale_state_dirs(&root, &live) {
                tracing::warn!(root = %root.display(), "cannot remove stale state dirs: {e}");
            }
            tokio::time::sleep(every).await;
        }
    });
    let results = controller
        .shutdown_on_signal()
        .run(reconcile, error_policy, Arc::new(ctx));
    drive(results, "node").await;
    janitor.abort();
}
