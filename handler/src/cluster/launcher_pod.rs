//! VMI -> launcher Pod, a pure function. The pod runs `vmpod-launcher` with:
//!
//! - the VMI handed over as a file: the controller stores the launcher's view of the VMI
//!   (JSON) in the pod annotation `vmpod.io/vmi`, and a downward-API volume projects that
//!   annotation to `/etc/vmpod/vmi.json`, which `VMPOD_VMI` names;
//! - memory = guest memory + [`memory_overhead_bytes`] (requests and limits);
//! - capabilities NET_ADMIN and NET_RAW (the launcher rewires the pod network);
//! - /dev/kvm, /dev/net/tun and /dev/vhost-net as the extended resources `vmpod.io/kvm`,
//!   `tun`, `vhost-net` of the node daemon's device plugin (`crate::deviceplugin`); only
//!   tun with `vmpod.io/acceleration: emulation` (TCG uses neither KVM nor vhost-net). With `--device-hostpath` instead: /dev/kvm and
//!   /dev/net/tun as hostPath char devices (a device cgroup may refuse them to an
//!   unprivileged container) and no /dev/vhost-net (not every host has it);
//! - its state directory on the hostPath `<state root>/<namespace>_<name>` mounted at
//!   `/var/run/vmpod`, so the node daemon reaches `control.sock`;
//! - an owner reference to the VMI, so deleting the VMI deletes the pod.
//!
//! Images named by the VMI are mounted as Kubernetes image volumes (Kubernetes 1.33+,
//! ImageVolume): `kernelBoot.container.image` under `/var/lib/vmpod/images/kernel-boot`,
//! with the VMI handed to the launcher rewritten to kernelBoot-level absolute paths there;
//! `containerDisk.image` at `<state dir>/container-disks/<volume>`, where
//! `vmpod::domain::volumes` looks for it (`containerDisk.path` stays relative to the image).

use crate::deviceplugin;
use k8s_openapi::api::core::v1::Pod;
use kube::Resource;
use serde_json::json;
use std::collections::BTreeMap;
use vmpod::api::{Acceleration, KernelBoot, QuantityError, VirtualMachineInstance, quantity_bytes};
use vmpod::domain::volumes::CONTAINER_DISKS;

/// Label on launcher pods naming their VMI.
pub const VMI_LABEL: &str = "vmpod.io/vmi";
/// `app.kubernetes.io/name` of launcher pods.
pub const APP_NAME: &str = "vmpod-launcher";
/// Label selector matching every launcher pod.
pub const LAUNCHER_SELECTOR: &str = "app.kubernetes.io/name=vmpod-launcher";
/// Pod annotation holding the VMI the launcher runs (JSON).
pub const VMI_ANNOTATION: &str = "vmpod.io/vmi";
/// The launcher's state directory inside the pod.
pub const STATE_DIR_IN_POD: &str = "/var/run/vmpod";
/// Where per-pod state directories live on the node.
pub const DEFAULT_STATE_ROOT: &str = "/var/run/vmpod/pods";
/// Directory of the projected VMI file inside the pod.
pub const VMI_DIR_IN_POD: &str = "/etc/vmpod";
/// Where image volumes are mounted inside the pod.
pub const IMAGE_MOUNT_ROOT: &str = "/var/lib/vmpod/images";
/// The image volume holding `kernelBoot.container.image`.
pub const KERNEL_BOOT_IMAGE_VOLUME: &str = "kernel-boot";
/// Seconds the launcher gets beyond the VMI's grace period to tear down its network.
pub const LAUNCHER_TEARDOWN_SECONDS: i64 = 15;

const MI: u64 = 1 << 20;
/// Fixed part of the overhead: vmpod-launcher (~30Mi incl. DHCP server), libvirtd (~40Mi),
/// QEMU's own code and device state (~70Mi) and ~10Mi of headroom (page cache of the
/// console log and the cloud-init disk).
pub const FIXED_OVERHEAD_BYTES: u64 = 150 * MI;
/// Per vCPU: QEMU thread stacks and vCPU state.
pub const PER_VCPU_OVERHEAD_BYTES: u64 = 8 * MI;
/// With forced emulation: TCG's translation block cache.
pub const TCG_OVERHEAD_BYTES: u64 = 128 * MI;

/// How the controller builds launcher pods.
#[derive(Clone, Debug)]
pub struct LauncherPodConfig {
    /// The image with `vmpod-launcher`, libvirt and QEMU.
    pub image: String,
    /// Node directory holding the per-pod state directories.
    pub state_root: String,
    /// Extended resource giving /dev/kvm (default `vmpod.io/kvm`); `None`: hostPath.
    pub kvm_resource: Option<String>,
    /// Extended resource giving /dev/net/tun (default `vmpod.io/tun`); `None`: hostPath.
    pub tun_resource: Option<String>,
    /// Extended resource giving /dev/vhost-net (default `vmpod.io/vhost-net`); `None`: none
    /// (libvirt then uses QEMU's userspace virtio-net).
    pub vhost_net_resource: Option<String>,
}

impl LauncherPodConfig {
    /// Devices as hostPath mounts instead of extended resources (`--device-hostpath`).
    pub fn with_hostpath_devices(self) -> Self {
        LauncherPodConfig {
            kvm_resource: None,
            tun_resource: None,
            vhost_net_resource: None,
            ..self
        }
    }
}

impl Default for LauncherPodConfig {
    fn default() -> Self {
        LauncherPodConfig {
            image: "vmpod:dev".into(),
            state_root: DEFAULT_STATE_ROOT.into(),
            kvm_resource: Some(deviceplugin::KVM_RESOURCE.into()),
            tun_resource: Some(deviceplugin::TUN_RESOURCE.into()),
            vhost_net_resource: Some(deviceplugin::VHOST_NET_RESOURCE.into()),
        }
    }
}

/// Why a VMI cannot become a pod.
#[derive(Debug, thiserror::Error)]
pub enum LauncherPodError {
    /// The VMI lacks `metadata.{name,namespace,uid}` (not read from the API server).
    #[error("VMI has no metadata.{0}")]
    MissingMetadata(&'static str),
    /// A memory quantity does not parse.
    #[error("VMI {vmi}: {path}: {source}")]
    Quantity {
        vmi: String,
        path: &'static str,
        source: QuantityError,
    },
}

/// The launcher pod's name for VMI `vmi_name`.
pub fn launcher_pod_name(vmi_name: &str) -> String {
    format!("{APP_NAME}-{vmi_name}")
}

/// The node directory that is the launcher's state dir: `<root>/<namespace>_<name>`.
pub fn state_dir_on_host(state_root: &str, namespace: &str, name: &str) -> String {
    format!("{}/{namespace}_{name}", state_root.trim_end_matches('/'))
}

/// Memory the pod needs beyond guest memory:
/// `150Mi + guest/512 (page tables, rounded up to whole Mi) + 8Mi * vCPUs (+ 128Mi with
/// vmpod.io/acceleration: emulation)`.
pub fn memory_overhead_bytes(guest_bytes: u64, vcpus: u32, acceleration: Acceleration) -> u64 {
    let tcg = if acceleration == Acceleration::Emulation {
        TCG_OVERHEAD_BYTES
    } else {
        0
    };
    FIXED_OVERHEAD_BYTES
        .saturating_add(guest_bytes.div_ceil(512).next_multiple_of(MI))
        .saturating_add(PER_VCPU_OVERHEAD_BYTES.saturating_mul(u64::from(vcpus)))
        .saturating_add(tcg)
}

/// The VMI as the launcher must see it: defaults written out, image-held files rewritten to
/// their mount paths, and only the metadata the launcher uses (name, namespace, uid,
/// `vmpod.io/` annotations).
pub fn launcher_vmi(vmi: &VirtualMachineInstance) -> VirtualMachineInstance {
    let mut out = VirtualMachineInstance::new(
        vmi.metadata.name.as_deref().unwrap_or_default(),
        vmi.spec.clone(),
    )
    .with_defaults();
    out.metadata.namespace = vmi.metadata.namespace.clone();
    out.metadata.uid = vmi.metadata.uid.clone();
    out.metadata.annotations = vmi.metadata.annotations.as_ref().map(|a| {
        a.iter()
            .filter(|(k, _)| k.starts_with("vmpod.io/"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    });
    if let Some(kb) = out.spec.domain.kernel_boot_mut() {
        rewrite_kernel_boot(kb);
    }
    out
}

/// `container: {image, kernelPath, initrdPath}` -> kernelBoot-level absolute paths under the
/// kernel-boot image mount.
fn rewrite_kernel_boot(kb: &mut KernelBoot) {
    if let Some(c) = kb.container.take() {
        let mount = format!("{IMAGE_MOUNT_ROOT}/{KERNEL_BOOT_IMAGE_VOLUME}");
        kb.kernel_path = c.kernel_path.map(|p| join_in_image(&mount, &p));
        kb.initrd_path = c.initrd_path.map(|p| join_in_image(&mount, &p));
    }
}

/// Bytes as a quantity: `672Mi` when a whole number of Mi, else plain bytes.
fn bytes_quantity(bytes: u64) -> String {
    if bytes.is_multiple_of(MI) {
        format!("{}Mi", bytes / MI)
    } else {
        bytes.to_string()
    }
}

fn join_in_image(mount: &str, inner: &str) -> String {
    format!("{mount}/{}", inner.trim_start_matches('/'))
}

/// The launcher pod for `vmi`.
pub fn launcher_pod(
    vmi: &VirtualMachineInstance,
    config: &LauncherPodConfig,
) -> Result<Pod, LauncherPodError> {
    let meta = &vmi.metadata;
    let name = meta
        .name
        .as_deref()
        .ok_or(LauncherPodError::MissingMetadata("name"))?;
    let namespace = meta
        .namespace
        .as_deref()
        .ok_or(LauncherPodError::MissingMetadata("namespace"))?;
    let uid = meta
        .uid
        .as_deref()
        .ok_or(LauncherPodError::MissingMetadata("uid"))?;
    let quantity_err = |path, source| LauncherPodError::Quantity {
        vmi: format!("{namespace}/{name}"),
        path,
        source,
    };
    let domain = &vmi.spec.domain;
    let guest = domain
        .guest_memory_bytes()
        .map_err(|e| quantity_err("spec.domain.memory.guest", e))?;
    let acceleration = vmi.acceleration().unwrap_or_default();
    let overhead = memory_overhead_bytes(guest, domain.vcpus(), acceleration);
    let resources = domain.resources.clone().unwrap_or_default();
    let request_memory = match resources.requests.get("memory") {
        Some(q) => quantity_bytes(&q.0)
            .map_err(|e| quantity_err("spec.domain.resources.requests.memory", e))?
            .max(guest),
        None => guest,
    }
    .saturating_add(overhead);
    let limit_memory = match resources.limits.get("memory") {
        Some(q) => Some(
            quantity_bytes(&q.0)
                .map_err(|e| quantity_err("spec.domain.resources.limits.memory", e))?
                .saturating_add(overhead),
        ),
        None => None,
    };
    let mut requests: BTreeMap<String, String> = resources
        .requests
        .iter()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    let mut limits: BTreeMap<String, String> = resources
        .limits
        .iter()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    requests.insert("memory".into(), bytes_quantity(request_memory));
    match limit_memory {
        Some(l) => limits.insert("memory".into(), bytes_quantity(l.max(request_memory))),
        None => limits.remove("memory"),
    };
    let mut volumes = vec![
        json!({"name": "state", "hostPath": {
            "path": state_dir_on_host(&config.state_root, namespace, name),
            "type": "DirectoryOrCreate"}}),
        json!({"name": "vmi", "downwardAPI": {"items": [{
            "path": "vmi.json",
            "fieldRef": {"fieldPath": format!("metadata.annotations['{VMI_ANNOTATION}']")}}]}}),
    ];
    let mut mounts = vec![
        json!({"name": "state", "mountPath": STATE_DIR_IN_POD}),
        json!({"name": "vmi", "mountPath": VMI_DIR_IN_POD, "readOnly": true}),
    ];
    for (dev, host, resource) in [
        ("kvm", "/dev/kvm", &config.kvm_resource),
        ("tun", "/dev/net/tun", &config.tun_resource),
        ("vhost-net", "/dev/vhost-net", &config.vhost_net_resource),
    ] {
        if dev != "tun" && acceleration == Acceleration::Emulation {
            continue; // TCG uses neither; a request would keep the pod off nodes without them
        }
        match resource {
            Some(r) => {
                requests.insert(r.clone(), "1".into());
                limits.insert(r.clone(), "1".into());
            }
            None if dev == "vhost-net" => {}
            None => {
                volumes
                    .push(json!({"name": dev, "hostPath": {"path": host, "type": "CharDevice"}}));
                mounts.push(json!({"name": dev, "mountPath": host}));
            }
        }
    }
    // (volume name, image, mount path)
    let mut images: Vec<(String, String, String)> = Vec::new();
    if let Some(kb) = domain.kernel_boot()
        && let Some(c) = &kb.container
    {
        images.push((
            KERNEL_BOOT_IMAGE_VOLUME.into(),
            c.image.clone(),
            format!("{IMAGE_MOUNT_ROOT}/{KERNEL_BOOT_IMAGE_VOLUME}"),
        ));
    }
    for vol in &vmi.spec.volumes {
        if let Some(cd) = &vol.container_disk {
            images.push((
                format!("disk-{}", vol.name),
                cd.image.clone(),
                format!("{STATE_DIR_IN_POD}/{CONTAINER_DISKS}/{}", vol.name),
            ));
        }
    }
    for (volume, image, mount_path) in images {
        volumes.push(
            json!({"name": volume, "image": {"reference": image, "pullPolicy": "IfNotPresent"}}),
        );
        mounts.push(json!({"name": volume, "mountPath": mount_path, "readOnly": true}));
    }
    let mut owner = vmi
        .controller_owner_ref(&())
        .ok_or(LauncherPodError::MissingMetadata("name"))?;
    owner.block_owner_deletion = Some(true);
    let handed = serde_json::to_string(&launcher_vmi(vmi)).expect("a VMI serialises to JSON");
    let grace = vmi.spec.grace_period_seconds() + LAUNCHER_TEARDOWN_SECONDS;
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": launcher_pod_name(name),
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/name": APP_NAME,
                VMI_LABEL: name,
                "vmpod.io/vmi-uid": uid,
            },
            "annotations": { VMI_ANNOTATION: handed },
            "ownerReferences": [owner],
        },
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": grace,
            "nodeSelector": vmi.spec.node_selector,
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "compute",
                "image": config.image,
                "command": ["vmpod-launcher"],
                "args": ["--state-dir", STATE_DIR_IN_POD],
                "env": [
                    {"name": "VMPOD_VMI", "value": format!("{VMI_DIR_IN_POD}/vmi.json")},
                    {"name": "VMPOD_LOG", "value": "info"},
                ],
                "resources": {"requests": requests, "limits": limits},
                "securityContext": {
                    "runAsUser": 0,
                    "capabilities": {"add": ["NET_ADMIN", "NET_RAW"]},
                },
                "volumeMounts": mounts,
            }],
            "volumes": volumes,
        },
    });
    Ok(serde_json::from_value(pod).expect("the launcher pod JSON matches the Pod type"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmpod::api::load_vmi;

    pub(crate) fn vmi(extra_spec: &str) -> VirtualMachineInstance {
        let text = format!(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\n\
             metadata: {{name: vm1, namespace: ns1, uid: 00000000-0000-4000-8000-000000000001, \
             annotations: {{vmpod.io/acceleration: emulation, kubectl.kubernetes.io/last-applied-configuration: x}}}}\n\
             spec:\n  domain:\n    memory: {{guest: 512Mi}}\n    cpu: {{cores: 2}}\n{extra_spec}"
        );
        load_vmi(&text).unwrap()
    }

    fn container(pod: &Pod) -> &k8s_openapi::api::core::v1::Container {
        &pod.spec.as_ref().unwrap().containers[0]
    }

    #[test]
    fn overhead_formula() {
        assert_eq!(
            memory_overhead_bytes(256 * MI, 1, Acceleration::Auto),
            (150 + 1 + 8) * MI,
            "page tables round up to 1Mi"
        );
        let guest = 512 * MI;
        assert_eq!(
            memory_overhead_bytes(guest, 2, Acceleration::Auto),
            150 * MI + MI + 16 * MI
        );
        assert_eq!(
            memory_overhead_bytes(guest, 2, Acceleration::Emulation),
            (150 + 1 + 16 + 128) * MI
        );
    }

    #[test]
    fn pod_carries_memory_caps_devices_state_dir_and_owner() {
        let vmi = vmi("    resources: {requests: {cpu: 500m}, limits: {memory: 1Gi}}\n");
        let mut vmi_kvm = vmi.clone();
        set_acceleration(&mut vmi_kvm, "auto");
        let hostpath = LauncherPodConfig::default().with_hostpath_devices();
        let pod = launcher_pod(&vmi, &hostpath).unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("vmpod-launcher-vm1"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("ns1"));
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            (
                "VirtualMachineInstance",
                "00000000-0000-4000-8000-000000000001",
                Some(true)
            )
        );
        assert_eq!(owner.block_owner_deletion, Some(true));
        assert_eq!(owner.api_version, "vmpod.io/v1alpha1");
        let c = container(&pod);
        let res = c.resources.as_ref().unwrap();
        let overhead = (150 + 1 + 16 + 128) * MI;
        let requests = res.requests.as_ref().unwrap();
        assert_eq!(
            requests["memory"].0,
            format!("{}Mi", (512 * MI + overhead) / MI)
        );
        assert_eq!(requests["cpu"].0, "500m");
        assert_eq!(
            res.limits.as_ref().unwrap()["memory"].0,
            format!("{}Mi", (1024 * MI + overhead) / MI)
        );
        let caps = c.security_context.as_ref().unwrap().capabilities.as_ref();
        assert_eq!(
            caps.unwrap().add.as_deref().unwrap(),
            ["NET_ADMIN", "NET_RAW"]
        );
        let mounts: BTreeMap<_, _> = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| (m.name.as_str(), m.mount_path.as_str()))
            .collect();
        assert_eq!(mounts["state"], "/var/run/vmpod");
        assert_eq!(mounts["tun"], "/dev/net/tun");
        assert!(!mounts.contains_key("kvm"), "not with emulation");
        assert!(!mounts.contains_key("vhost-net"), "not every host has it");
        let pod = launcher_pod(&vmi_kvm, &hostpath).unwrap();
        let mounts = container(&pod).volume_mounts.as_ref().unwrap();
        assert!(
            mounts
                .iter()
                .any(|m| m.name == "kvm" && m.mount_path == "/dev/kvm")
        );
        let vols = pod.spec.as_ref().unwrap().volumes.as_ref().unwrap();
        let state = vols.iter().find(|v| v.name == "state").unwrap();
        assert_eq!(
            state.host_path.as_ref().unwrap().path,
            "/var/run/vmpod/pods/ns1_vm1"
        );
        let kvm = vols.iter().find(|v| v.name == "kvm").unwrap();
        assert_eq!(
            kvm.host_path.as_ref().unwrap().type_.as_deref(),
            Some("CharDevice")
        );
        assert_eq!(
            pod.spec.as_ref().unwrap().termination_grace_period_seconds,
            Some(45)
        );
    }

    fn set_acceleration(vmi: &mut VirtualMachineInstance, mode: &str) {
        let annotations = vmi.metadata.annotations.get_or_insert_default();
        annotations.insert("vmpod.io/acceleration".into(), mode.into());
    }

    #[test]
    fn devices_come_from_the_device_plugin_by_default() {
        let mut vmi = vmi("");
        set_acceleration(&mut vmi, "auto");
        let with_kvm = launcher_pod(&vmi, &LauncherPodConfig::default()).unwrap();
        set_acceleration(&mut vmi, "emulation");
        let emulated = launcher_pod(&vmi, &LauncherPodConfig::default()).unwrap();
        for (pod, expected) in [
            (
                &with_kvm,
                &["vmpod.io/kvm", "vmpod.io/tun", "vmpod.io/vhost-net"][..],
            ),
            (&emulated, &["vmpod.io/tun"][..]),
        ] {
            let res = container(pod).resources.as_ref().unwrap();
            for (what, map) in [("requests", &res.requests), ("limits", &res.limits)] {
                let devices: Vec<_> = map
                    .as_ref()
                    .unwrap()
                    .iter()
                    .filter(|(k, _)| k.starts_with("vmpod.io/"))
                    .map(|(k, v)| (k.as_str(), v.0.as_str()))
                    .collect();
                let want: Vec<_> = expected.iter().map(|r| (*r, "1")).collect();
                assert_eq!(devices, want, "{what}");
            }
            let vols = pod.spec.as_ref().unwrap().volumes.as_ref().unwrap();
            assert!(
                vols.iter()
                    .all(|v| v.host_path.is_none() || v.name == "state"),
                "no hostPath devices: {vols:?}"
            );
        }
    }

    #[test]
    fn the_vmi_is_handed_over_as_a_projected_file() {
        let pod = launcher_pod(&vmi(""), &LauncherPodConfig::default()).unwrap();
        let c = container(&pod);
        let env = c.env.as_ref().unwrap();
        assert_eq!(env[0].name, "VMPOD_VMI");
        assert_eq!(env[0].value.as_deref(), Some("/etc/vmpod/vmi.json"));
        let vols = pod.spec.as_ref().unwrap().volumes.as_ref().unwrap();
        let item = &vols.iter().find(|v| v.name == "vmi").unwrap();
        let field = &item.downward_api.as_ref().unwrap().items.as_ref().unwrap()[0];
        assert_eq!(field.path, "vmi.json");
        assert_eq!(
            field.field_ref.as_ref().unwrap().field_path,
            "metadata.annotations['vmpod.io/vmi']"
        );
        let handed = &pod.metadata.annotations.as_ref().unwrap()[VMI_ANNOTATION];
        let back = vmpod::api::load_valid_vmi(handed).expect("the launcher can load it");
        assert_eq!(back.metadata.name.as_deref(), Some("vm1"));
        assert_eq!(
            back.metadata.uid.as_deref(),
            Some("00000000-0000-4000-8000-000000000001")
        );
        let annotations = back.metadata.annotations.unwrap();
        assert_eq!(
            annotations.len(),
            1,
            "only vmpod.io/ annotations: {annotations:?}"
        );
        assert_eq!(
            back.spec.termination_grace_period_seconds,
            Some(30),
            "defaulted"
        );
    }

    #[test]
    fn images_become_image_volumes_and_paths_are_rewritten() {
        let vmi = vmi(concat!(
            "    firmware: {kernelBoot: {kernelArgs: console=ttyS0, container: ",
            "{image: reg/kernel:1, kernelPath: /boot/vmlinuz, initrdPath: /boot/initrd}}}\n",
            "    devices: {disks: [{name: root}]}\n",
            "  volumes: [{name: root, containerDisk: {image: reg/disk:1}}]\n",
        ));
        let cfg = LauncherPodConfig {
            kvm_resource: Some("devices.kubevirt.io/kvm".into()),
            tun_resource: Some("devices.kubevirt.io/tun".into()),
            ..Default::default()
        };
        let pod = launcher_pod(&vmi, &cfg).unwrap();
        let vols = pod.spec.as_ref().unwrap().volumes.as_ref().unwrap();
        let image_of = |name: &str| {
            let v = vols.iter().find(|v| v.name == name).unwrap();
            v.image.as_ref().unwrap().reference.clone().unwrap()
        };
        assert_eq!(image_of("kernel-boot"), "reg/kernel:1");
        assert_eq!(image_of("disk-root"), "reg/disk:1");
        assert!(
            vols.iter().all(|v| v.name != "kvm"),
            "device plugin instead"
        );
        let res = container(&pod).resources.as_ref().unwrap();
        assert_eq!(
            res.limits.as_ref().unwrap()["devices.kubevirt.io/tun"].0,
            "1"
        );
        let handed = launcher_vmi(&vmi);
        let kb = handed.spec.domain.firmware.unwrap().kernel_boot.unwrap();
        assert_eq!(kb.container, None);
        assert_eq!(
            kb.kernel_path.as_deref(),
            Some("/var/lib/vmpod/images/kernel-boot/boot/vmlinuz")
        );
        assert_eq!(
            kb.initrd_path.as_deref(),
            Some("/var/lib/vmpod/images/kernel-boot/boot/initrd")
        );
        assert_eq!(
            handed.spec.volumes[0].container_disk.as_ref().unwrap().path,
            None,
            "the domain resolves it inside the mounted image"
        );
        let mounts = container(&pod).volume_mounts.as_ref().unwrap();
        let disk = mounts.iter().find(|m| m.name == "disk-root").unwrap();
        assert_eq!(disk.mount_path, "/var/run/vmpod/container-disks/root");
        assert_eq!(disk.read_only, Some(true));
    }

    #[test]
    fn a_vmi_not_from_the_api_server_is_refused() {
        let mut v = vmi("");
        v.metadata.uid = None;
        assert!(matches!(
            launcher_pod(&v, &LauncherPodConfig::default()),
            Err(LauncherPodError::MissingMetadata("uid"))
        ));
    }
}
