//! The one way both writers change VMI status: compute from what was read, merge-patch the
//! status subresource guarded by the resourceVersion read, and on 409 Conflict re-read and
//! recompute (bounded). Effects only; the computing is the caller's pure function.

use super::ReconcileError;
use super::status::status_patch;
use kube::api::{Api, Patch, PatchParams};
use vmpod::api::{VirtualMachineInstance, VirtualMachineInstanceStatus};

/// How many times a status patch is retried after a 409.
pub const MAX_CONFLICT_RETRIES: u32 = 3;

/// Patch `vmi`'s status to `compute(vmi)`, re-reading and recomputing on conflict.
/// Returns the status now stored (sent, or already equal so nothing was sent).
pub async fn update_status(
    api: &Api<VirtualMachineInstance>,
    vmi: &VirtualMachineInstance,
    compute: impl Fn(&VirtualMachineInstance) -> VirtualMachineInstanceStatus,
) -> Result<VirtualMachineInstanceStatus, ReconcileError> {
    let name = vmi
        .metadata
        .name
        .clone()
        .ok_or(ReconcileError::Unaddressable("VirtualMachineInstance"))?;
    let object = format!(
        "VirtualMachineInstance {}/{name}",
        vmi.metadata.namespace.as_deref().unwrap_or_default()
    );
    let mut current = vmi.clone();
    for _ in 0..=MAX_CONFLICT_RETRIES {
        let desired = compute(&current);
        if current.status.as_ref() == Some(&desired) {
            return Ok(desired);
        }
        let patch = status_patch(
            current.status.as_ref(),
            &desired,
            current.metadata.resource_version.as_deref(),
        );
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(desired),
            Err(kube::Error::Api(s)) if s.is_conflict() => {
                tracing::debug!(%object, "status patch conflicted; re-reading");
                current = api
                    .get_status(&name)
                    .await
                    .map_err(ReconcileError::kube("re-read", object.clone()))?;
            }
            Err(source) => return Err(ReconcileError::kube("patch status of", object)(source)),
        }
    }
    Err(ReconcileError::Conflict {
        object,
        attempts: MAX_CONFLICT_RETRIES + 1,
    })
}
