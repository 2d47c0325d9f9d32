//! `vmpod-handler controller`: for every VMI, one launcher pod; the VMI's phase follows the
//! pod (Pending -> Scheduling -> Scheduled, and the pod's final phase). Deleting the VMI
//! deletes the pod and its Secret through their owner references (garbage collection), so
//! there is no finalizer. The Secret with the VMI's cloud-init data is created before the
//! pod that mounts it. A VMI that does not validate is marked Failed with every error and gets no
//! pod. A failing VMI is retried ever more slowly (5 s doubling to 5 min, [`Backoff`]); one
//! whose Secret or pod the API server refuses for good (a 4xx other than 409 and 429, e.g.
//! 422 Invalid) is marked Failed with the refusal, reason `FailedCreate`.

use super::kube_ops::update_status;
use super::launcher_pod::{
    LAUNCHER_SELECTOR, LauncherObjects, LauncherPodConfig, launcher_objects, launcher_pod_name,
};
use super::metrics::Metrics;
use super::status::{at_least, controller_status, failed_status, invalid_status};
use super::{Backoff, ReconcileError, drive, on_failure, owned_by};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use std::sync::Arc;
use std::time::Duration;
use vmpod::api::{VirtualMachineInstance, VmiPhase, check};

/// How long before an unchanged VMI is looked at again anyway.
pub const RESYNC: Duration = Duration::from_secs(300);

/// What every reconcile needs.
pub struct ControllerContext {
    /// The API client.
    pub client: Client,
    /// How launcher pods are built.
    pub config: LauncherPodConfig,
    /// Where reconcile runs are counted.
    pub metrics: Arc<Metrics>,
    /// Failures in a row per VMI, for the retry delay.
    pub backoff: Backoff,
}

fn object_key(vmi: &VirtualMachineInstance) -> String {
    format!(
        "VirtualMachineInstance {}/{}",
        vmi.namespace().unwrap_or_default(),
        vmi.name_any()
    )
}

/// Bring one VMI's launcher pod and status in line; a success resets its back-off.
pub async fn reconcile(
    vmi: Arc<VirtualMachineInstance>,
    ctx: Arc<ControllerContext>,
) -> Result<Action, ReconcileError> {
    let _measure = ctx.metrics.reconcile.count_and_measure();
    let result = reconcile_vmi(&vmi, &ctx).await;
    if result.is_ok() {
        ctx.backoff.succeeded(&object_key(&vmi));
    }
    result
}

async fn reconcile_vmi(
    vmi: &VirtualMachineInstance,
    ctx: &ControllerContext,
) -> Result<Action, ReconcileError> {
    let (Some(ns), Some(name)) = (vmi.metadata.namespace.clone(), vmi.metadata.name.clone()) else {
        return Err(ReconcileError::Unaddressable("VirtualMachineInstance"));
    };
    let final_phase = vmi
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .is_some_and(|p| p.is_final());
    if vmi.metadata.deletion_timestamp.is_some() || final_phase {
        return Ok(Action::await_change());
    }
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pod_name = launcher_pod_name(&name);
    let pod_ref = format!("Pod {ns}/{pod_name}");
    let mut pod = pods
        .get_opt(&pod_name)
        .await
        .map_err(ReconcileError::kube("get", pod_ref.clone()))?;
    if let Some(p) = &pod
        && !owned_by(p, vmi)
    {
        // A previous VMI of the same name still has its pod terminating.
        tracing::info!(pod = %pod_ref, "launcher pod belongs to an older VMI; waiting");
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let started = at_least(
        vmi.status.as_ref().and_then(|s| s.phase),
        VmiPhase::Scheduled,
    );
    if pod.is_none() && !started {
        let valid = match check(vmi.clone()) {
            Ok(valid) => valid,
            Err(errors) => {
                tracing::warn!(vmi = %format!("{ns}/{name}"), errors = errors.len(), "invalid VMI");
                let now = Time(k8s_openapi::jiff::Timestamp::now());
                update_status(&vmis, vmi, |v| invalid_status(v, &errors, &now)).await?;
                return Ok(Action::await_change());
            }
        };
        let LauncherObjects {
            pod: desired,
            secrets,
        } = launcher_objects(&valid, &ctx.config)?;
        let secrets_api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
        for secret in &secrets {
            match create_secret(&secrets_api, secret, vmi).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::info!(vmi = %format!("{ns}/{name}"), "a Secret of an older VMI is still there; waiting");
                    return Ok(Action::requeue(Duration::from_secs(2)));
                }
                Err(e) => return fail_if_permanent(&vmis, vmi, e).await,
            }
        }
        pod = Some(match pods.create(&PostParams::default(), &desired).await {
            Ok(p) => {
                tracing::info!(pod = %pod_ref, "created launcher pod");
                p
            }
            Err(kube::Error::Api(s)) if s.is_already_exists() => pods
                .get(&pod_name)
                .await
                .map_err(ReconcileError::kube("get", pod_ref.clone()))?,
            Err(e) => {
                let e = ReconcileError::kube("create", pod_ref)(e);
                return fail_if_permanent(&vmis, vmi, e).await;
            }
        });
    }
    update_status(&vmis, vmi, |v| {
        controller_status(v, &pod_name, pod.as_ref())
    })
    .await?;
    Ok(Action::requeue(RESYNC))
}

/// A refusal that retrying cannot change marks the VMI Failed with it (and ends its
/// reconciling); any other error is returned to be retried.
async fn fail_if_permanent(
    vmis: &Api<VirtualMachineInstance>,
    vmi: &VirtualMachineInstance,
    error: ReconcileError,
) -> Result<Action, ReconcileError> {
    let Some(message) = error.permanent() else {
        return Err(error);
    };
    tracing::warn!(vmi = %object_key(vmi), "the API server refuses its objects: {message}");
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    update_status(vmis, vmi, |v| {
        failed_status(v, "FailedCreate", message.clone(), &now)
    })
    .await?;
    Ok(Action::await_change())
}

/// Create `secret`; one that exists already is fine when this VMI owns it (an earlier
/// reconcile made it). False: it belongs to an older VMI of the same name, still being
/// garbage-collected.
async fn create_secret(
    api: &Api<Secret>,
    secret: &Secret,
    vmi: &VirtualMachineInstance,
) -> Result<bool, ReconcileError> {
    let name = secret.name_any();
    let object = format!("Secret {}/{name}", secret.namespace().unwrap_or_default());
    match api.create(&PostParams::default(), secret).await {
        Ok(_) => {
            tracing::info!(secret = %object, "created cloud-init Secret");
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.is_already_exists() => {
            let existing = api
                .get(&name)
                .await
                .map_err(ReconcileError::kube("get", object))?;
            Ok(owned_by(&existing, vmi))
        }
        Err(e) => Err(ReconcileError::kube("create", object)(e)),
    }
}

/// Count, log and retry later: the more failures in a row, the later.
pub fn error_policy(
    vmi: Arc<VirtualMachineInstance>,
    error: &ReconcileError,
    ctx: Arc<ControllerContext>,
) -> Action {
    let object = object_key(&vmi);
    let delay = ctx.backoff.failed(&object);
    on_failure(object, error, &ctx.metrics, delay)
}

/// Run the controller until SIGTERM/SIGINT.
pub async fn run(client: Client, config: LauncherPodConfig, metrics: Arc<Metrics>) {
    let vmis: Api<VirtualMachineInstance> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let ctx = Arc::new(ControllerContext {
        client,
        config,
        metrics,
        backoff: Backoff::default(),
    });
    let results = Controller::new(vmis, watcher::Config::default())
        .owns(pods, watcher::Config::default().labels(LAUNCHER_SELECTOR))
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx);
    drive(results, "controller").await;
}
