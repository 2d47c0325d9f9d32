//! Cluster mode (kube-rs): the `controller` turns VirtualMachineInstances into launcher pods
//! and mirrors the pods' phase into VMI status; the `node` daemon reads each local
//! launcher's status through its control socket and writes it into VMI status.
//!
//! `render-pod` prints the controller's objects for a VMI file ([`render`]).
//!
//! Pure parts: [`launcher_pod`] (VMI -> Pod and Secret) and [`status`] ((pod, launcher status) -> VMI
//! status). Effects are thin: [`kube_ops`] (status patches with optimistic concurrency),
//! [`controller`] and [`node`] (kube-rs runtime Controllers). This module owns the API
//! objects; it must not touch network namespaces, libvirt or local processes (that is the
//! launcher's and the local runtime's job).

pub mod controller;
pub mod kube_ops;
pub mod launcher_pod;
pub mod metrics;
pub mod node;
pub mod render;
pub mod status;

#[cfg(test)]
mod bench;
#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tests;

use crate::deviceplugin;
use clap::Args;
use futures::{Stream, StreamExt};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use launcher_pod::{BootSlotsConfig, LauncherPodConfig};
use metrics::{CONTROLLER_METRICS_ADDR, Metrics, NODE_METRICS_ADDR};
use std::collections::HashMap;
use std::fmt::Display;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vmpod::statedir::DEFAULT_NODE_STATE_ROOT;

/// `vmpod-handler controller` options.
#[derive(Args)]
pub struct ControllerArgs {
    /// The image launcher pods run.
    #[arg(
        long,
        env = "VMPOD_LAUNCHER_IMAGE",
        default_value = "localhost/vmpod:dev"
    )]
    pub launcher_image: String,
    /// Node directory holding per-pod state directories (a hostPath in launcher pods).
    #[arg(long, default_value = DEFAULT_NODE_STATE_ROOT)]
    pub state_root: String,
    /// Extended resource giving /dev/kvm (served by `vmpod-handler node`).
    #[arg(long, env = "VMPOD_KVM_RESOURCE", default_value = deviceplugin::KVM_RESOURCE)]
    pub kvm_resource: String,
    /// Extended resource giving /dev/net/tun.
    #[arg(long, env = "VMPOD_TUN_RESOURCE", default_value = deviceplugin::TUN_RESOURCE)]
    pub tun_resource: String,
    /// Extended resource giving /dev/vhost-net.
    #[arg(long, env = "VMPOD_VHOST_NET_RESOURCE", default_value = deviceplugin::VHOST_NET_RESOURCE)]
    pub vhost_net_resource: String,
    /// No device plugin: mount /dev/kvm and /dev/net/tun as hostPath char devices instead
    /// of requesting the resources above (works where the runtime lets a container open
    /// them; no /dev/vhost-net).
    #[arg(long, env = "VMPOD_DEVICE_HOSTPATH")]
    pub device_hostpath: bool,
    /// Where Prometheus scrapes `GET /metrics` (use 0.0.0.0:9153 to expose it off the host).
    #[arg(long, default_value = CONTROLLER_METRICS_ADDR)]
    pub metrics_addr: SocketAddr,
    /// Give masquerade VMIs' launcher Pods `securityContext.sysctls`
    /// net.ipv6.conf.all.forwarding=1, so their VMs get IPv6 behind NAT66 in a
    /// dual-stack cluster. Only where every node's kubelet lists the sysctl in
    /// `--allowed-unsafe-sysctls` (else it rejects the Pods); without it such VMs get IPv4
    /// alone.
    #[arg(long, env = "VMPOD_MASQUERADE_IPV6_FORWARDING_SYSCTL")]
    pub masquerade_ipv6_forwarding_sysctl: bool,
    #[command(flatten)]
    pub boot_slots: BootSlotArgs,
}

/// The node boot slots launcher pods share (controller and `render-pod`).
#[derive(Args, Clone, Debug)]
pub struct BootSlotArgs {
    /// How many guests may boot at once on each node, from their domain's start to their
    /// first DHCP lease (the others' launchers wait, status reason "waiting for a boot
    /// slot"). 0: no limit, the default, since the controller cannot know each node's CPU
    /// count (under TCG a boot is CPU-bound: about the nodes' core count suits).
    #[arg(long, env = "VMPOD_MAX_CONCURRENT_BOOTS", default_value_t = 0)]
    pub max_concurrent_boots: u32,
    /// The node directory of the boot-slot lock files (a hostPath in launcher pods).
    /// Neither inside --state-root (the node daemon removes what there names no pod) nor
    /// holding it (each launcher pod would see the others' state dirs).
    #[arg(long, default_value = vmpod::statedir::DEFAULT_NODE_BOOT_SLOTS_DIR)]
    pub boot_slots_dir: String,
    /// The longest a guest holds its boot slot without leasing, in seconds.
    #[arg(long, env = "VMPOD_BOOT_SLOT_TIMEOUT", default_value_t = 30)]
    pub boot_slot_timeout: u64,
}

impl BootSlotArgs {
    /// The launcher pods' boot slots, with launcher pods' state dirs under `state_root`;
    /// `None` without a limit.
    pub fn config(&self, state_root: &str) -> anyhow::Result<Option<BootSlotsConfig>> {
        let Some(count) = NonZeroU32::new(self.max_concurrent_boots) else {
            return Ok(None);
        };
        let dir = Path::new(&self.boot_slots_dir);
        anyhow::ensure!(
            dir.is_absolute(),
            "--boot-slots-dir {}: not an absolute path (a hostPath must be)",
            dir.display()
        );
        anyhow::ensure!(
            !dir.starts_with(state_root),
            "--boot-slots-dir {}: inside --state-root {state_root}, whose entries the node \
             daemon removes when they name no pod; use a directory beside it (default {})",
            dir.display(),
            vmpod::statedir::DEFAULT_NODE_BOOT_SLOTS_DIR
        );
        anyhow::ensure!(
            !Path::new(state_root).starts_with(dir),
            "--boot-slots-dir {}: holds --state-root {state_root}, so every launcher pod \
             would mount every other pod's state dir; use a directory beside it (default {})",
            dir.display(),
            vmpod::statedir::DEFAULT_NODE_BOOT_SLOTS_DIR
        );
        Ok(Some(BootSlotsConfig {
            host_dir: self.boot_slots_dir.clone(),
            count,
            timeout_seconds: self.boot_slot_timeout,
        }))
    }
}

impl ControllerArgs {
    /// How the controller builds launcher pods, from these options.
    pub fn launcher_pod_config(self) -> anyhow::Result<LauncherPodConfig> {
        let boot_slots = self.boot_slots.config(&self.state_root)?;
        let config = LauncherPodConfig {
            image: self.launcher_image,
            state_root: self.state_root,
            kvm_resource: Some(self.kvm_resource),
            tun_resource: Some(self.tun_resource),
            vhost_net_resource: Some(self.vhost_net_resource),
            masquerade_ipv6_forwarding_sysctl: self.masquerade_ipv6_forwarding_sysctl,
            boot_slots,
        };
        Ok(if self.device_hostpath {
            config.with_hostpath_devices()
        } else {
            config
        })
    }
}

/// `vmpod-handler node` options.
#[derive(Args)]
pub struct NodeArgs {
    /// This node's name (the DaemonSet passes spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// Node directory holding per-pod state directories.
    #[arg(long, default_value = DEFAULT_NODE_STATE_ROOT)]
    pub state_root: String,
    /// Seconds between polls of a running launcher.
    #[arg(long, default_value_t = 5)]
    pub poll_seconds: u64,
    /// Where Prometheus scrapes `GET /metrics` (use 0.0.0.0:9154 to expose it off the host).
    #[arg(long, default_value = NODE_METRICS_ADDR)]
    pub metrics_addr: SocketAddr,
    /// Kubelet's device-plugins directory, where the device plugin registers and listens.
    #[arg(long, default_value = deviceplugin::DEFAULT_DIR)]
    pub device_plugin_dir: PathBuf,
    /// How many containers on this node may hold each of vmpod.io/kvm, tun, vhost-net.
    #[arg(long, default_value_t = deviceplugin::DEFAULT_SLOTS)]
    pub device_slots: u32,
    /// Do not run the device plugin (the controller then needs --device-hostpath).
    #[arg(long)]
    pub no_device_plugin: bool,
}

/// Run the controller against the cluster in the environment (in-cluster or kubeconfig).
pub async fn run_controller(args: ControllerArgs) -> anyhow::Result<()> {
    let metrics_addr = args.metrics_addr;
    let config = args.launcher_pod_config()?;
    let metrics = serve_metrics(metrics_addr).await?;
    let client = kube::Client::try_default().await?;
    tracing::info!(image = %config.image, boot_slots = ?config.boot_slots, "controller starting");
    controller::run(client, config, metrics).await;
    Ok(())
}

/// Run the node daemon against the cluster in the environment.
pub async fn run_node(args: NodeArgs) -> anyhow::Result<()> {
    let metrics = serve_metrics(args.metrics_addr).await?;
    let client = kube::Client::try_default().await?;
    let ctx = node::NodeContext {
        client: client.clone(),
        state_root: args.state_root,
        source: node::ControlSocketSource {
            timeout: Duration::from_secs(2),
        },
        poll: Duration::from_secs(args.poll_seconds.max(1)),
        metrics,
    };
    tracing::info!(node = %args.node_name, "node daemon starting");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let plugins = (!args.no_device_plugin).then(|| {
        let config = deviceplugin::PluginConfig {
            dir: args.device_plugin_dir,
            poll: Duration::from_secs(1),
        };
        let devices = deviceplugin::node_devices(args.device_slots);
        tokio::spawn(deviceplugin::run(config, devices, stopped))
    });
    node::run(client, &args.node_name, ctx).await;
    let _ = stop.send(true);
    if let Some(plugins) = plugins {
        plugins.await?;
    }
    Ok(())
}

/// Bind `addr` (failing start-up when taken) and serve the metrics there in the background.
async fn serve_metrics(addr: SocketAddr) -> anyhow::Result<Arc<Metrics>> {
    let metrics = Arc::new(Metrics::default());
    let listener = metrics::bind(addr).await?;
    tracing::info!(%addr, "serving GET /metrics");
    tokio::spawn(metrics::serve(listener, metrics.clone()));
    Ok(metrics)
}

/// Drive a kube-rs controller stream to its end (shutdown), logging each outcome.
async fn drive<K, E, S>(results: S, role: &'static str)
where
    K: kube::Resource,
    K::DynamicType: Clone + std::fmt::Debug + Eq + std::hash::Hash,
    ObjectRef<K>: Display,
    E: Display,
    S: Stream<Item = Result<(ObjectRef<K>, Action), E>>,
{
    results
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(%obj, "{role}: reconciled"),
                Err(e) => tracing::debug!("{role}: {e}"),
            }
        })
        .await;
}

/// True when `object`'s controller owner is this VMI (same UID): the one ownership check,
/// for the controller (a name taken by someone else's object) and the node daemon (a
/// launcher pod of an earlier VMI of the same name). An owner reference without the
/// controller flag does not count.
pub(crate) fn owned_by(
    object: &impl kube::ResourceExt,
    vmi: &vmpod::api::VirtualMachineInstance,
) -> bool {
    object
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == vmi.metadata.uid.as_ref())
}

/// The one error policy of both reconcilers: count, log, retry after `retry`.
fn on_failure(
    object: String,
    error: &ReconcileError,
    metrics: &Metrics,
    retry: Duration,
) -> Action {
    metrics.reconcile.set_failure(error);
    tracing::warn!(
        %object,
        label = error.metric_label(),
        "reconcile failed: {error}"
    );
    Action::requeue(retry)
}

/// The first retry after a failed reconcile; each further failure in a row doubles it.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(5);
/// The longest wait between retries of a failing object.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// The wait before retrying an object after its `failures`-th failure in a row (1 is the
/// first): 5 s, 10 s, 20 s, ... up to 5 min (pure).
pub fn backoff_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    BACKOFF_FIRST
        .saturating_mul(1 << doublings)
        .min(BACKOFF_MAX)
}

/// Failures in a row, per object: a failing object is retried ever more slowly, one that
/// reconciles starts over.
#[derive(Debug, Default)]
pub struct Backoff(Mutex<HashMap<String, u32>>);

impl Backoff {
    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Count one more failure of `object`: how long before it is tried again.
    pub fn failed(&self, object: &str) -> Duration {
        let mut counts = self.counts();
        let n = counts.entry(object.to_string()).or_default();
        *n = n.saturating_add(1);
        backoff_delay(*n)
    }

    /// `object` reconciled: its next failure waits the first delay again.
    pub fn succeeded(&self, object: &str) {
        self.counts().remove(object);
    }
}

/// Why a reconcile failed. Each variant has a short label for logs and metrics.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// A call to the API server failed.
    #[error("{action} {object}: {source}")]
    Kube {
        action: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
    /// The VMI cannot be turned into a pod.
    #[error(transparent)]
    Pod(#[from] launcher_pod::LauncherPodError),
    /// The status kept changing under us.
    #[error("{object}: status patch conflicted {attempts} times in a row")]
    Conflict { object: String, attempts: u32 },
    /// The object lacks a namespace or name (not read from the API server).
    #[error("{0} has no namespace or name")]
    Unaddressable(&'static str),
}

impl ReconcileError {
    /// Map a failed API call `action` (`get`, `create`, ...) on `object` to this error.
    pub fn kube(action: &'static str, object: String) -> impl FnOnce(kube::Error) -> Self {
        move |source| ReconcileError::Kube {
            action,
            object,
            source,
        }
    }

    /// The API server's refusal when retrying cannot change it: a 4xx other than 409
    /// Conflict and 429 Too Many Requests (e.g. 422 Invalid, 403 Forbidden), in words.
    pub fn permanent(&self) -> Option<String> {
        match self {
            ReconcileError::Kube {
                action,
                object,
                source: kube::Error::Api(s),
            } if (400..500).contains(&s.code) && !matches!(s.code, 409 | 429) => Some(format!(
                "{action} {object}: {} {}: {}",
                s.code, s.reason, s.message
            )),
            _ => None,
        }
    }

    /// The label for metrics and structured logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ReconcileError::Kube { .. } => "kube",
            ReconcileError::Pod(_) => "pod_build",
            ReconcileError::Conflict { .. } => "conflict",
            ReconcileError::Unaddressable(_) => "unaddressable",
        }
    }
}

#[cfg(test)]
mod args_tests {
    use super::ControllerArgs;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ControllerArgs,
    }

    fn config(argv: &[&str]) -> super::LauncherPodConfig {
        let argv = std::iter::once("controller").chain(argv.iter().copied());
        Cli::parse_from(argv).args.launcher_pod_config().unwrap()
    }

    #[test]
    fn devices_are_the_plugins_resources_unless_hostpath_is_asked_for() {
        let c = config(&[]);
        assert_eq!(
            [c.kvm_resource, c.tun_resource, c.vhost_net_resource],
            [
                Some("vmpod.io/kvm".to_string()),
                Some("vmpod.io/tun".to_string()),
                Some("vmpod.io/vhost-net".to_string())
            ]
        );
        let c = config(&["--kvm-resource", "devices.kubevirt.io/kvm"]);
        assert_eq!(c.kvm_resource.as_deref(), Some("devices.kubevirt.io/kvm"));
        let c = config(&["--device-hostpath"]);
        assert_eq!(
            [c.kvm_resource, c.tun_resource, c.vhost_net_resource],
            [None, None, None]
        );
    }

    /// No boot limit unless asked for (the controller cannot know a node's CPU count);
    /// `--max-concurrent-boots K` limits boots in the default slot directory beside the
    /// state root; a slot directory the node daemon would clean up, or one holding the
    /// state root, is refused.
    #[test]
    fn boot_slots_only_with_max_concurrent_boots_and_never_in_the_state_root() {
        assert_eq!(config(&[]).boot_slots, None);
        assert_eq!(config(&["--max-concurrent-boots", "0"]).boot_slots, None);
        let slots = config(&["--max-concurrent-boots", "2"]).boot_slots.unwrap();
        assert_eq!(
            (
                slots.host_dir.as_str(),
                slots.count.get(),
                slots.timeout_seconds
            ),
            ("/var/run/vmpod/boot-slots", 2, 30)
        );
        let slots = config(&[
            "--max-concurrent-boots",
            "4",
            "--boot-slots-dir",
            "/srv/slots",
            "--boot-slot-timeout",
            "90",
        ])
        .boot_slots
        .unwrap();
        assert_eq!(
            (
                slots.host_dir.as_str(),
                slots.count.get(),
                slots.timeout_seconds
            ),
            ("/srv/slots", 4, 90)
        );
        let refused = |argv: &[&str]| {
            let argv = std::iter::once("controller").chain(argv.iter().copied());
            Cli::parse_from(argv)
                .args
                .launcher_pod_config()
                .unwrap_err()
                .to_string()
        };
        let err = refused(&[
            "--max-concurrent-boots",
            "1",
            "--boot-slots-dir",
            "/var/run/vmpod/pods/slots",
        ]);
        assert!(
            err.contains("--boot-slots-dir /var/run/vmpod/pods/slots: inside --state-root"),
            "{err}"
        );
        let err = refused(&[
            "--max-concurrent-boots",
            "1",
            "--boot-slots-dir",
            "/var/run/vmpod",
        ]);
        assert!(
            err.contains("--boot-slots-dir /var/run/vmpod: holds --state-root /var/run/vmpod/pods"),
            "{err}"
        );
        let err = refused(&["--max-concurrent-boots", "1", "--boot-slots-dir", "slots"]);
        assert!(err.contains("not an absolute path"), "{err}");
        // Without a limit the directory is not used, so not checked.
        assert_eq!(
            config(&["--boot-slots-dir", "/var/run/vmpod/pods"]).boot_slots,
            None
        );
    }

    #[test]
    fn the_node_serves_the_device_plugin_unless_told_not_to() {
        #[derive(Parser)]
        struct Node {
            #[command(flatten)]
            args: super::NodeArgs,
        }
        let parse = |argv: &[&str]| {
            let argv = ["node", "--node-name", "n1"]
                .into_iter()
                .chain(argv.iter().copied());
            Node::parse_from(argv).args
        };
        let n = parse(&[]);
        assert_eq!(
            n.device_plugin_dir.to_str(),
            Some("/var/lib/kubelet/device-plugins")
        );
        assert_eq!(n.device_slots, 110);
        assert!(!n.no_device_plugin);
        let n = parse(&[
            "--device-slots",
            "8",
            "--device-plugin-dir",
            "/x",
            "--no-device-plugin",
        ]);
        assert_eq!(
            (n.device_slots, n.device_plugin_dir.to_str()),
            (8, Some("/x"))
        );
        assert!(n.no_device_plugin);
    }
}
