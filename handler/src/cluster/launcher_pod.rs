//! VMI -> launcher Pod (and the Secret it mounts), a pure function building k8s-openapi
//! types (a VMI it cannot turn into a Pod is a [`LauncherPodError`]); the layout is
//! CONTRACT-11 (manifests/README.md says why each privilege is there).
//!
//! - Init container `net-setup` (`vmpod-launcher net setup`): the only holder of NET_ADMIN;
//!   rewires the pod interface, writes `net/<iface>.json` into the state dir, creates the
//!   persistent tap, exits.
//! - Container `compute` (`vmpod-launcher run`): drops ALL capabilities and adds back only
//!   [`COMPUTE_CAPABILITIES`] (never SYS_ADMIN or NET_ADMIN); not privileged, no privilege
//!   escalation, seccomp RuntimeDefault.
//! - The VMI is handed over as a file: the controller stores the launcher's view of the VMI
//!   (JSON, without user data) in the pod annotation `vmpod.io/vmi`, and a downward-API
//!   volume projects it to `/etc/vmpod/vmi/vmi.yaml`, which `VMPOD_VMI` names.
//! - User data: each `cloudInitNoCloud` volume's user and network data move into the Secret
//!   `<pod>-cloudinit` (owned by the VMI), mounted at `/etc/vmpod/secrets/<secret>/`
//!   (`VMPOD_SECRETS_DIR`); the handed VMI names it with KubeVirt's `secretRef` /
//!   `networkDataSecretRef`.
//! - State dir (control socket, status, network cache only): the hostPath
//!   `<state root>` mounted at `/var/run/vmpod` with `subPathExpr: $(POD_UID)`, so the node
//!   daemon finds it at `<state root>/<pod uid>` and removes it when the pod is gone.
//! - Scratch (disks, overlays, cloud-init image, console log, libvirt's files): an emptyDir
//!   at `/var/lib/vmpod/scratch` (`VMPOD_SCRATCH_DIR`) whose sizeLimit follows from the VMI
//!   ([`scratch_size_bytes`]).
//! - Boot slots (the controller's `--max-concurrent-boots K`, K > 0; [`BootSlotsConfig`]):
//!   the node directory of the slot files, shared by every launcher pod on the node, as the
//!   hostPath `boot-slots` (DirectoryOrCreate) at `/var/lib/vmpod/boot-slots` in `compute`,
//!   which `vmpod-launcher run --boot-slots-dir ... --boot-slots K --boot-slot-timeout S`
//!   names. Without K: none of these, the Pod as before.
//! - memory = guest memory + [`memory_overhead_bytes`] (requests and limits);
//! - /dev/kvm and /dev/vhost-net (compute) and /dev/net/tun (both containers) as the
//!   extended resources `vmpod.io/kvm`, `vhost-net`, `tun` of the node daemon's device
//!   plugin (`crate::deviceplugin`); only tun with `vmpod.io/acceleration: emulation` (TCG
//!   uses neither KVM nor vhost-net). With `--device-hostpath` instead: /dev/kvm and
//!   /dev/net/tun as hostPath char devices (a device cgroup may refuse them to an
//!   unprivileged container) and no /dev/vhost-net (not every host has it);
//! - an owner reference to the VMI, so deleting the VMI deletes the pod and the Secret.
//!
//! Images named by the VMI are mounted as Kubernetes image volumes (Kubernetes 1.33+,
//! ImageVolume), read-only, under `/var/lib/vmpod/images` (`VMPOD_IMAGES_DIR`):
//! `kernelBoot.container.image` at `kernel-boot`, with the VMI handed to the launcher
//! rewritten to kernelBoot-level absolute paths there; each `containerDisk.image` at
//! `<volume name>`, where `vmpod::domain::volumes` looks for it (`containerDisk.path` stays
//! relative to the image).

use crate::deviceplugin;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, DownwardAPIVolumeFile, DownwardAPIVolumeSource, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HostPathVolumeSource, ImageVolumeSource, ObjectFieldSelector, Pod,
    PodSecurityContext, PodSpec, ResourceRequirements, SeccompProfile, Secret, SecretVolumeSource,
    SecurityContext, Sysctl, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde_json::Value;
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use vmpod::api::{
    AccelerationRequest, CloudInitNoCloudSource, KernelBoot, LocalObjectReference, PodInterface,
    QuantityError, ValidVmi, VirtualMachineInstance, quantity_bytes,
};
use vmpod::statedir::{DEFAULT_NODE_STATE_ROOT, DEFAULT_STATE_DIR};

/// Label on launcher pods naming their VMI.
pub const VMI_LABEL: &str = "vmpod.io/vmi";
/// `app.kubernetes.io/name` of launcher pods.
pub const APP_NAME: &str = "vmpod-launcher";
/// Label selector matching every launcher pod.
pub const LAUNCHER_SELECTOR: &str = "app.kubernetes.io/name=vmpod-launcher";
/// Pod annotation holding the VMI the launcher runs (JSON).
pub const VMI_ANNOTATION: &str = "vmpod.io/vmi";
/// Directory of the projected VMI file inside the pod.
pub const VMI_DIR_IN_POD: &str = "/etc/vmpod/vmi";
/// The projected VMI file's name.
pub const VMI_FILE: &str = "vmi.yaml";
/// The launcher's scratch directory (an emptyDir) inside the pod.
pub const SCRATCH_DIR_IN_POD: &str = "/var/lib/vmpod/scratch";
/// Where Secrets named by the handed VMI are mounted, one directory per Secret.
pub const SECRETS_DIR_IN_POD: &str = "/etc/vmpod/secrets";
/// Where image volumes are mounted inside the pod.
pub const IMAGE_MOUNT_ROOT: &str = "/var/lib/vmpod/images";
/// The image volume holding `kernelBoot.container.image`.
pub const KERNEL_BOOT_IMAGE_VOLUME: &str = "kernel-boot";
/// Where the node's boot-slot directory is mounted in `compute` (with boot slots).
pub const BOOT_SLOTS_DIR_IN_POD: &str = "/var/lib/vmpod/boot-slots";
/// Seconds the launcher gets beyond the VMI's grace period to tear down its network.
pub const LAUNCHER_TEARDOWN_SECONDS: i64 = 15;
/// Secret keys for cloud-init data (KubeVirt's `secretRef` keys).
pub const USER_DATA_KEY: &str = "userdata";
pub const NETWORK_DATA_KEY: &str = "networkdata";
/// The env var carrying the pod's UID (downward API), used by `subPathExpr`.
pub const POD_UID_ENV: &str = "POD_UID";

/// Capabilities the compute container adds back after dropping ALL, each with the reason
/// (manifests/README.md explains each and what breaks without it). Never SYS_ADMIN or
/// NET_ADMIN.
pub const COMPUTE_CAPABILITIES: &[(&str, &str)] = &[
    (
        "NET_BIND_SERVICE",
        "the DHCP server binds UDP port 67 on the pod bridge",
    ),
    (
        "SETUID",
        "libvirtd, QEMU and vmpod-virt run as QEMU's uid 107, not root",
    ),
    ("SETGID", "... and its gid 107"),
    (
        "CHOWN",
        "hands uid 107 the files the launcher makes for QEMU (libvirt tree, disks, cloud-init)",
    ),
    (
        "DAC_OVERRIDE",
        "the launcher reads what libvirtd and QEMU create 0700/0600 (pid file, console socket, caps cache)",
    ),
    (
        "KILL",
        "signals libvirtd and QEMU, which run as another uid (107)",
    ),
    (
        "NET_RAW",
        "router advertisements for the VM's IPv6 go out on a raw ICMPv6 socket on the pod bridge",
    ),
];
/// `net setup`'s arguments for the VMI's pod interface (as validation read it): with the
/// VMI's own `macAddress`, that MAC is cached with the facts, so the DHCP server (reading
/// the cache) answers the MAC the VM really has; with the masquerade binding, its VM
/// network and forwarded ports.
fn net_setup_args(iface: Option<&PodInterface>) -> Vec<String> {
    let mut args = vec!["net".to_string(), "setup".to_string()];
    let Some(iface) = iface else {
        return args;
    };
    if let Some(mac) = &iface.mac {
        args.extend(["--vm-mac".to_string(), mac.to_string()]);
    }
    if let Some(m) = &iface.masquerade {
        args.extend([
            "--binding".to_string(),
            "masquerade".to_string(),
            "--vm-network".to_string(),
            m.vm_network.to_string(),
            "--vm-ipv6-network".to_string(),
            m.vm_network6.to_string(),
        ]);
        for p in &m.ports {
            args.extend(["--port".to_string(), p.to_string()]);
        }
    }
    args
}

/// The Pod's `securityContext`: with `--masquerade-ipv6-forwarding-sysctl` and a VMI
/// masquerading its pod interface, the sysctls NAT66 needs (IPv6 forwarding, which only
/// `/proc/sys` sets and a container cannot write; the runtime sets it in the pod's
/// namespace before any container starts).
fn pod_security_context(
    iface: Option<&PodInterface>,
    config: &LauncherPodConfig,
) -> Option<PodSecurityContext> {
    let masquerade = iface.is_some_and(|i| i.masquerade.is_some());
    (config.masquerade_ipv6_forwarding_sysctl && masquerade).then(|| PodSecurityContext {
        sysctls: Some(vec![Sysctl {
            name: vmpod::net::masquerade::IPV6_FORWARDING_SYSCTL.into(),
            value: "1".into(),
        }]),
        ..PodSecurityContext::default()
    })
}

/// Capabilities the `net-setup` init container adds back after dropping ALL.
pub const NET_SETUP_CAPABILITIES: &[(&str, &str)] = &[(
    "NET_ADMIN",
    "rewires the pod interface (addresses, bridge, tap, per-device settings) via netlink",
)];

const MI: u64 = 1 << 20;
/// Fixed part of the overhead: vmpod-launcher (~30Mi incl. DHCP server), libvirtd (~40Mi),
/// QEMU's own code and device state (~70Mi) and ~10Mi of headroom (page cache of the
/// console log and the cloud-init disk).
pub const FIXED_OVERHEAD_BYTES: u64 = 150 * MI;
/// Per vCPU: QEMU thread stacks and vCPU state.
pub const PER_VCPU_OVERHEAD_BYTES: u64 = 8 * MI;
/// With forced emulation: TCG's translation block cache.
pub const TCG_OVERHEAD_BYTES: u64 = 128 * MI;
/// Scratch: what the guest may write into one containerDisk's qcow2 overlay.
pub const CONTAINER_DISK_OVERLAY_BYTES: u64 = 1024 * MI;
/// Scratch: the console log and its one rotated copy (the launcher rotates at 4Mi).
pub const CONSOLE_LOG_BYTES: u64 = 8 * MI;
/// Scratch: libvirt's config, sockets, logs and caches (the capabilities cache is ~200Ki).
pub const SCRATCH_BASE_BYTES: u64 = 64 * MI;
/// Scratch: a cloud-init disk beyond its files (FAT metadata; the image is at least 1Mi).
pub const CLOUD_INIT_DISK_BYTES: u64 = MI;

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
    /// Give a masquerade VMI's pod `securityContext.sysctls`
    /// `net.ipv6.conf.all.forwarding=1` (`--masquerade-ipv6-forwarding-sysctl`), so NAT66
    /// works in a dual-stack cluster. Off by default: the kubelet rejects the Pod unless
    /// its `--allowed-unsafe-sysctls` lists the sysctl. Without it, a dual-stack
    /// masquerade VM gets IPv4 alone (see `vmpod::net::masquerade::ipv6_off`).
    pub masquerade_ipv6_forwarding_sysctl: bool,
    /// The node's boot slots (`--max-concurrent-boots` > 0); `None`: boots not limited.
    pub boot_slots: Option<BootSlotsConfig>,
}

/// How launcher pods share a node's boot slots (the launcher's `boot_slots`): the slot
/// files are in `host_dir` on each node, a hostPath every launcher pod there mounts.
#[derive(Clone, Debug, PartialEq)]
pub struct BootSlotsConfig {
    /// The node directory of the slot files (hostPath, DirectoryOrCreate: the kubelet
    /// makes it root's, 0755; `compute` runs as uid 0 and makes the files in it).
    pub host_dir: String,
    /// How many guests of a node boot at once.
    pub count: NonZeroU32,
    /// The longest a guest holds its slot without leasing, in seconds.
    pub timeout_seconds: u64,
}

impl BootSlotsConfig {
    /// `vmpod-launcher run`'s arguments naming the slots as mounted in the pod.
    fn launcher_args(&self) -> [String; 6] {
        [
            "--boot-slots-dir".into(),
            BOOT_SLOTS_DIR_IN_POD.into(),
            "--boot-slots".into(),
            self.count.to_string(),
            "--boot-slot-timeout".into(),
            self.timeout_seconds.to_string(),
        ]
    }
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
            image: "localhost/vmpod:dev".into(),
            state_root: DEFAULT_NODE_STATE_ROOT.into(),
            kvm_resource: Some(deviceplugin::KVM_RESOURCE.into()),
            tun_resource: Some(deviceplugin::TUN_RESOURCE.into()),
            vhost_net_resource: Some(deviceplugin::VHOST_NET_RESOURCE.into()),
            masquerade_ipv6_forwarding_sysctl: false,
            boot_slots: None,
        }
    }
}

/// Why a VMI cannot become a pod.
#[derive(Debug, thiserror::Error)]
pub enum LauncherPodError {
    /// The VMI lacks `metadata.{name,namespace,uid}` (not read from the API server).
    #[error("VMI has no metadata.{0}")]
    MissingMetadata(&'static str),
    /// A quantity does not parse.
    #[error("VMI {vmi}: {path}: {source}")]
    Quantity {
        vmi: String,
        path: String,
        source: QuantityError,
    },
    /// A cloud-init volume's data cannot be read.
    #[error("VMI {vmi}: {path}: {why}")]
    CloudInit {
        vmi: String,
        path: String,
        why: String,
    },
    /// The VMI handed to the launcher does not serialise to JSON.
    #[error("VMI {vmi}: the handed VMI is not JSON: {source}")]
    Json {
        vmi: String,
        source: serde_json::Error,
    },
    /// The VMI asks for a shape the launcher pod cannot hold.
    #[error("VMI {vmi}: {path}: {why}")]
    Unsupported {
        vmi: String,
        path: String,
        why: &'static str,
    },
}

/// The objects the controller creates for one VMI: the launcher Pod and the Secrets it
/// mounts (created first).
#[derive(Clone, Debug)]
pub struct LauncherObjects {
    pub pod: Pod,
    pub secrets: Vec<Secret>,
}

/// The launcher pod's name for VMI `vmi_name`.
pub fn launcher_pod_name(vmi_name: &str) -> String {
    format!("{APP_NAME}-{vmi_name}")
}

/// The Secret holding a launcher pod's cloud-init data.
pub fn cloud_init_secret_name(pod_name: &str) -> String {
    format!("{pod_name}-cloudinit")
}

/// The node directory that is the state dir of the pod with UID `pod_uid`:
/// `<root>/<pod uid>` (the hostPath's `subPathExpr: $(POD_UID)`).
pub fn state_dir_on_host(state_root: &str, pod_uid: &str) -> String {
    format!("{}/{pod_uid}", state_root.trim_end_matches('/'))
}

/// Memory the pod needs beyond guest memory:
/// `150Mi + guest/512 (page tables, rounded up to whole Mi) + 8Mi * vCPUs (+ 128Mi with
/// vmpod.io/acceleration: emulation)`.
pub fn memory_overhead_bytes(
    guest_bytes: u64,
    vcpus: u32,
    acceleration: AccelerationRequest,
) -> u64 {
    let tcg = if acceleration == AccelerationRequest::Emulation {
        TCG_OVERHEAD_BYTES
    } else {
        0
    };
    FIXED_OVERHEAD_BYTES
        .saturating_add(guest_bytes.div_ceil(512).next_multiple_of(MI))
        .saturating_add(PER_VCPU_OVERHEAD_BYTES.saturating_mul(u64::from(vcpus)))
        .saturating_add(tcg)
}

/// The scratch emptyDir's sizeLimit: every emptyDisk's capacity, [`CONTAINER_DISK_OVERLAY_BYTES`]
/// per containerDisk, the cloud-init disk ([`CloudInitPlan::disk_bytes`]), the console log
/// and [`SCRATCH_BASE_BYTES`], rounded up to whole Mi.
pub fn scratch_size_bytes(
    vmi: &VirtualMachineInstance,
    cloud_init: Option<&CloudInitPlan>,
) -> Result<u64, LauncherPodError> {
    let mut total = SCRATCH_BASE_BYTES + CONSOLE_LOG_BYTES;
    for (i, vol) in vmi.spec.volumes.iter().enumerate() {
        if let Some(ed) = &vol.empty_disk {
            let bytes =
                quantity_bytes(&ed.capacity.0).map_err(|source| LauncherPodError::Quantity {
                    vmi: vmi_key(vmi),
                    path: format!("spec.volumes[{i}].emptyDisk.capacity"),
                    source,
                })?;
            total = total.saturating_add(bytes);
        }
        if vol.container_disk.is_some() {
            total = total.saturating_add(CONTAINER_DISK_OVERLAY_BYTES);
        }
    }
    if let Some(ci) = cloud_init {
        total = total.saturating_add(ci.disk_bytes());
    }
    Ok(total.next_multiple_of(MI))
}

/// Where a cloudInitNoCloud volume's data comes from once the pod exists.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CloudInitPlan {
    /// Index of the volume in `spec.volumes`.
    pub volume: usize,
    /// What goes into the controller's Secret (`userdata`, `networkdata`), from the VMI's
    /// inline data; empty when the VMI names Secrets of its own for both.
    pub data: BTreeMap<String, ByteString>,
    /// The VMI volume's `cloudInitNoCloud` as handed to the launcher: `secretRef` and
    /// `networkDataSecretRef` only.
    pub handed: CloudInitNoCloudSource,
    /// Secrets to mount at `/etc/vmpod/secrets/<name>/`.
    pub mounts: Vec<String>,
    /// How many Secrets of the VMI's own are referenced (their size is unknown here).
    pub referenced: usize,
}

impl CloudInitPlan {
    /// Scratch bytes for the NoCloud disk: its data plus [`CLOUD_INIT_DISK_BYTES`]; 1Mi per
    /// Secret the VMI names itself.
    pub fn disk_bytes(&self) -> u64 {
        let inline: usize = self.data.values().map(|b| b.0.len()).sum();
        CLOUD_INIT_DISK_BYTES + inline as u64 + MI * self.referenced as u64
    }
}

/// The VMI's one cloudInitNoCloud volume, split into inline data (into `secret`) and
/// Secrets the VMI names (`secretRef`, `networkDataSecretRef`, passed through). A second
/// cloudInitNoCloud volume is an error.
pub fn cloud_init_plan(
    vmi: &VirtualMachineInstance,
    secret: &str,
) -> Result<Option<CloudInitPlan>, LauncherPodError> {
    let mut plan: Option<CloudInitPlan> = None;
    for (i, vol) in vmi.spec.volumes.iter().enumerate() {
        let Some(ci) = &vol.cloud_init_no_cloud else {
            continue;
        };
        let path = format!("spec.volumes[{i}].cloudInitNoCloud");
        if plan.is_some() {
            return Err(LauncherPodError::Unsupported {
                vmi: vmi_key(vmi),
                path,
                why: "a second cloudInitNoCloud volume (the pod holds one)",
            });
        }
        let mut handed = CloudInitNoCloudSource::default();
        let mut p = CloudInitPlan {
            volume: i,
            ..CloudInitPlan::default()
        };
        for (key, plain, b64, b64_field, reference, handed_ref) in [
            (
                USER_DATA_KEY,
                &ci.user_data,
                &ci.user_data_base64,
                "userDataBase64",
                &ci.secret_ref,
                &mut handed.secret_ref,
            ),
            (
                NETWORK_DATA_KEY,
                &ci.network_data,
                &ci.network_data_base64,
                "networkDataBase64",
                &ci.network_data_secret_ref,
                &mut handed.network_data_secret_ref,
            ),
        ] {
            if let Some(r) = reference {
                *handed_ref = Some(r.clone());
                if !p.mounts.contains(&r.name) {
                    p.mounts.push(r.name.clone());
                }
                p.referenced += 1;
                continue;
            }
            let bytes = match (plain, b64) {
                (Some(text), _) => ByteString(text.as_bytes().to_vec()),
                // A Secret's data is base64 on the wire: decoding it the same way checks it.
                (None, Some(b)) => serde_json::from_value(Value::String(b.trim().to_string()))
                    .map_err(|e| LauncherPodError::CloudInit {
                        vmi: vmi_key(vmi),
                        path: format!("{path}.{b64_field}"),
                        why: format!("not base64: {e}"),
                    })?,
                (None, None) if key == USER_DATA_KEY => ByteString(Vec::new()),
                (None, None) => continue,
            };
            p.data.insert(key.to_string(), bytes);
            *handed_ref = Some(LocalObjectReference {
                name: secret.to_string(),
            });
        }
        p.handed = handed;
        if !p.data.is_empty() {
            p.mounts.insert(0, secret.to_string());
        }
        plan = Some(p);
    }
    Ok(plan)
}

fn vmi_key(vmi: &VirtualMachineInstance) -> String {
    format!(
        "{}/{}",
        vmi.metadata.namespace.as_deref().unwrap_or_default(),
        vmi.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The VMI as the launcher must see it: defaults written out, image-held files rewritten to
/// their mount paths, and only the metadata the launcher uses (name, namespace, uid,
/// `vmpod.io/` annotations). User data is still in it: [`handed_vmi`] moves it out.
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

/// The VMI handed to the launcher, as JSON text: [`launcher_vmi`] with the cloudInitNoCloud
/// volume's data replaced by the Secret references of `cloud_init`.
pub fn handed_vmi(
    vmi: &VirtualMachineInstance,
    cloud_init: Option<&CloudInitPlan>,
) -> Result<String, LauncherPodError> {
    let mut handed = launcher_vmi(vmi);
    if let Some(ci) = cloud_init
        && let Some(vol) = handed.spec.volumes.get_mut(ci.volume)
    {
        vol.cloud_init_no_cloud = Some(ci.handed.clone());
    }
    // Through a Value: its keys come out sorted, so the annotation is stable text.
    serde_json::to_value(&handed)
        .map(|v| v.to_string())
        .map_err(|source| LauncherPodError::Json {
            vmi: vmi_key(vmi),
            source,
        })
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

/// The launcher pod for `vmi` and the Secret holding its cloud-init data.
pub fn launcher_objects(
    valid: &ValidVmi,
    config: &LauncherPodConfig,
) -> Result<LauncherObjects, LauncherPodError> {
    let vmi: &VirtualMachineInstance = valid;
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
    let quantity_err = |path: &str, source| LauncherPodError::Quantity {
        vmi: format!("{namespace}/{name}"),
        path: path.to_string(),
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
    let pod_name = launcher_pod_name(name);
    let secret_name = cloud_init_secret_name(&pod_name);
    let cloud_init = cloud_init_plan(vmi, &secret_name)?;

    // Mounts both containers share: the state dir (keyed by pod UID) and the VMI file.
    let state_mount = VolumeMount {
        sub_path_expr: Some(format!("$({POD_UID_ENV})")),
        ..mount("state", DEFAULT_STATE_DIR, false)
    };
    let vmi_mount = mount("vmi", VMI_DIR_IN_POD, true);
    let mut volumes = vec![
        Volume {
            host_path: Some(HostPathVolumeSource {
                path: config.state_root.clone(),
                type_: Some("DirectoryOrCreate".into()),
            }),
            ..volume("state")
        },
        Volume {
            downward_api: Some(DownwardAPIVolumeSource {
                items: Some(vec![DownwardAPIVolumeFile {
                    path: VMI_FILE.into(),
                    field_ref: Some(field_ref(&format!(
                        "metadata.annotations['{VMI_ANNOTATION}']"
                    ))),
                    ..DownwardAPIVolumeFile::default()
                }]),
                ..DownwardAPIVolumeSource::default()
            }),
            ..volume("vmi")
        },
        Volume {
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity(bytes_quantity(scratch_size_bytes(
                    vmi,
                    cloud_init.as_ref(),
                )?))),
                ..EmptyDirVolumeSource::default()
            }),
            ..volume("scratch")
        },
    ];
    let mut compute_mounts = vec![
        state_mount.clone(),
        vmi_mount.clone(),
        mount("scratch", SCRATCH_DIR_IN_POD, false),
    ];
    let mut init_mounts = vec![state_mount, vmi_mount];
    let mut compute_args = vec!["run".to_string()];
    if let Some(slots) = &config.boot_slots {
        volumes.push(Volume {
            host_path: Some(HostPathVolumeSource {
                path: slots.host_dir.clone(),
                type_: Some("DirectoryOrCreate".into()),
            }),
            ..volume("boot-slots")
        });
        compute_mounts.push(mount("boot-slots", BOOT_SLOTS_DIR_IN_POD, false));
        compute_args.extend(slots.launcher_args());
    }
    let mut init_resources = ResourceRequirements::default();
    for (dev, host, resource, init_too) in [
        ("kvm", "/dev/kvm", &config.kvm_resource, false),
        ("tun", "/dev/net/tun", &config.tun_resource, true),
        (
            "vhost-net",
            "/dev/vhost-net",
            &config.vhost_net_resource,
            false,
        ),
    ] {
        if dev != "tun" && acceleration == AccelerationRequest::Emulation {
            continue; // TCG uses neither; a request would keep the pod off nodes without them
        }
        match resource {
            Some(r) => {
                requests.insert(r.clone(), "1".into());
                limits.insert(r.clone(), "1".into());
                if init_too {
                    for side in [&mut init_resources.requests, &mut init_resources.limits] {
                        side.get_or_insert_default()
                            .insert(r.clone(), Quantity("1".into()));
                    }
                }
            }
            None if dev == "vhost-net" => {}
            None => {
                volumes.push(Volume {
                    host_path: Some(HostPathVolumeSource {
                        path: host.into(),
                        type_: Some("CharDevice".into()),
                    }),
                    ..volume(dev)
                });
                let device = mount(dev, host, false);
                if init_too {
                    init_mounts.push(device.clone());
                }
                compute_mounts.push(device);
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
    for (i, vol) in vmi.spec.volumes.iter().enumerate() {
        if let Some(cd) = &vol.container_disk {
            if vol.name == KERNEL_BOOT_IMAGE_VOLUME {
                return Err(LauncherPodError::Unsupported {
                    vmi: format!("{namespace}/{name}"),
                    path: format!("spec.volumes[{i}].name"),
                    why: "\"kernel-boot\" is the kernelBoot image's mount; rename the volume",
                });
            }
            images.push((
                format!("disk-{}", vol.name),
                cd.image.clone(),
                format!("{IMAGE_MOUNT_ROOT}/{}", vol.name),
            ));
        }
    }
    for (name, image, mount_path) in images {
        volumes.push(Volume {
            image: Some(ImageVolumeSource {
                reference: Some(image),
                pull_policy: Some("IfNotPresent".into()),
            }),
            ..volume(&name)
        });
        compute_mounts.push(mount(&name, &mount_path, true));
    }
    let mut owner = vmi
        .controller_owner_ref(&())
        .ok_or(LauncherPodError::MissingMetadata("name"))?;
    owner.block_owner_deletion = Some(true);
    let mut secrets = Vec::new();
    if let Some(ci) = &cloud_init {
        if !ci.data.is_empty() {
            let mut secret = Secret {
                data: Some(ci.data.clone()),
                type_: Some("Opaque".into()),
                ..Secret::default()
            };
            secret.metadata.name = Some(secret_name.clone());
            secret.metadata.namespace = Some(namespace.to_string());
            secret.metadata.labels = Some(BTreeMap::from([
                ("app.kubernetes.io/name".to_string(), APP_NAME.to_string()),
                (VMI_LABEL.to_string(), name.to_string()),
            ]));
            secret.metadata.owner_references = Some(vec![owner.clone()]);
            secrets.push(secret);
        }
        for (i, mounted) in ci.mounts.iter().enumerate() {
            let name = format!("secret-{i}");
            volumes.push(Volume {
                secret: Some(SecretVolumeSource {
                    secret_name: Some(mounted.clone()),
                    default_mode: Some(0o400),
                    ..SecretVolumeSource::default()
                }),
                ..volume(&name)
            });
            compute_mounts.push(mount(
                &name,
                &format!("{SECRETS_DIR_IN_POD}/{mounted}"),
                true,
            ));
        }
    }
    let handed = handed_vmi(vmi, cloud_init.as_ref())?;
    let grace = vmi.spec.grace_period_seconds() + LAUNCHER_TEARDOWN_SECONDS;
    let env = vec![
        EnvVar {
            name: POD_UID_ENV.into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(field_ref("metadata.uid")),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        env_var("VMPOD_VMI", &format!("{VMI_DIR_IN_POD}/{VMI_FILE}")),
        env_var("VMPOD_STATE_DIR", DEFAULT_STATE_DIR),
        env_var("VMPOD_LOG", "info"),
    ];
    let mut compute_env = env.clone();
    compute_env.extend([
        env_var("VMPOD_SCRATCH_DIR", SCRATCH_DIR_IN_POD),
        env_var("VMPOD_SECRETS_DIR", SECRETS_DIR_IN_POD),
        env_var("VMPOD_IMAGES_DIR", IMAGE_MOUNT_ROOT),
    ]);
    let quantities = |m: BTreeMap<String, String>| -> BTreeMap<String, Quantity> {
        m.into_iter().map(|(k, v)| (k, Quantity(v))).collect()
    };
    let launcher = |name: &str, args: Vec<String>, caps: &[(&str, &str)]| Container {
        name: name.into(),
        image: Some(config.image.clone()),
        command: Some(vec!["vmpod-launcher".into()]),
        args: Some(args),
        security_context: Some(security_context(caps)),
        ..Container::default()
    };
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(pod_name),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/name".to_string(), APP_NAME.to_string()),
                (VMI_LABEL.to_string(), name.to_string()),
                ("vmpod.io/vmi-uid".to_string(), uid.to_string()),
            ])),
            annotations: Some(BTreeMap::from([(VMI_ANNOTATION.to_string(), handed)])),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            termination_grace_period_seconds: Some(grace),
            node_selector: Some(vmi.spec.node_selector.clone()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            init_containers: Some(vec![Container {
                env: Some(env),
                resources: Some(init_resources),
                volume_mounts: Some(init_mounts),
                ..launcher(
                    "net-setup",
                    net_setup_args(valid.pod_interface()),
                    NET_SETUP_CAPABILITIES,
                )
            }]),
            containers: vec![Container {
                env: Some(compute_env),
                resources: Some(ResourceRequirements {
                    requests: Some(quantities(requests)),
                    limits: Some(quantities(limits)),
                    ..ResourceRequirements::default()
                }),
                volume_mounts: Some(compute_mounts),
                ..launcher("compute", compute_args, COMPUTE_CAPABILITIES)
            }],
            volumes: Some(volumes),
            security_context: pod_security_context(valid.pod_interface(), config),
            ..PodSpec::default()
        }),
        status: None,
    };
    Ok(LauncherObjects { pod, secrets })
}

fn volume(name: &str) -> Volume {
    Volume {
        name: name.into(),
        ..Volume::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

fn env_var(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn field_ref(path: &str) -> ObjectFieldSelector {
    ObjectFieldSelector {
        field_path: path.into(),
        ..ObjectFieldSelector::default()
    }
}

/// Root in the container, but unprivileged: every capability dropped and only `caps`
/// added back, no privilege escalation, the runtime's default seccomp profile.
fn security_context(caps: &[(&str, &str)]) -> SecurityContext {
    SecurityContext {
        run_as_user: Some(0),
        privileged: Some(false),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: Some(caps.iter().map(|(name, _)| (*name).to_string()).collect()),
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..SecurityContext::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, Volume};
    use serde_json::json;
    use vmpod::api::{check, load_vmi};

    /// `vmi` through validation, as the controller hands it to [`launcher_objects`].
    fn valid(vmi: &VirtualMachineInstance) -> ValidVmi {
        check(vmi.clone()).unwrap_or_else(|e| panic!("{e:?}"))
    }

    pub(crate) fn vmi(extra_spec: &str) -> VirtualMachineInstance {
        let text = format!(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\n\
             metadata: {{name: vm1, namespace: ns1, uid: 00000000-0000-4000-8000-000000000001, \
             annotations: {{vmpod.io/acceleration: emulation, kubectl.kubernetes.io/last-applied-configuration: x}}}}\n\
             spec:\n  domain:\n    memory: {{guest: 512Mi}}\n    cpu: {{cores: 2}}\n{extra_spec}"
        );
        load_vmi(&text).unwrap()
    }

    #[test]
    fn net_setup_args_carry_the_masquerade_binding_and_ports() {
        let masq = vmi(
            "    devices:\n      interfaces:\n        - name: default\n          masquerade: {}\n          \
             ports: [{name: http, port: 80}, {port: 53, protocol: UDP}]\n  \
             networks:\n    - name: default\n      pod: {vmNetworkCIDR: 10.9.0.0/24, vmIPv6NetworkCIDR: \
             \"fd10:9::/64\"}\n",
        );
        assert_eq!(
            net_setup_args(valid(&masq).pod_interface()),
            [
                "net",
                "setup",
                "--binding",
                "masquerade",
                "--vm-network",
                "10.9.0.0/24",
                "--vm-ipv6-network",
                "fd10:9::/64",
                "--port",
                "tcp/80",
                "--port",
                "udp/53"
            ]
        );
        assert_eq!(
            net_setup_args(valid(&vmi("")).pod_interface()),
            ["net", "setup"]
        );
    }

    /// With `--masquerade-ipv6-forwarding-sysctl`, a masquerade VMI's Pod asks for IPv6
    /// forwarding; a bridge VMI's Pod, or any Pod without the flag, asks for no sysctl.
    #[test]
    fn the_ipv6_forwarding_sysctl_is_asked_for_masquerade_with_the_flag_only() {
        let masq = vmi(
            "    devices:\n      interfaces:\n        - name: default\n          masquerade: {}\n  \
             networks:\n    - name: default\n      pod: {}\n",
        );
        let bridge = vmi(
            "    devices:\n      interfaces:\n        - name: default\n          bridge: {}\n  \
             networks:\n    - name: default\n      pod: {}\n",
        );
        let on = LauncherPodConfig {
            masquerade_ipv6_forwarding_sysctl: true,
            ..LauncherPodConfig::default()
        };
        let sysctls = |vmi: &VirtualMachineInstance, config: &LauncherPodConfig| {
            let pod = launcher_objects(&valid(vmi), config).unwrap().pod;
            let v = serde_json::to_value(pod.spec.unwrap()).unwrap();
            v.get("securityContext").cloned()
        };
        assert_eq!(
            sysctls(&masq, &on),
            Some(json!({"sysctls": [{"name": "net.ipv6.conf.all.forwarding", "value": "1"}]}))
        );
        assert_eq!(sysctls(&masq, &LauncherPodConfig::default()), None);
        assert_eq!(sysctls(&bridge, &on), None);
    }

    /// With boot slots (`--max-concurrent-boots 3`), `compute` alone mounts the node's slot
    /// directory (one hostPath shared by every launcher pod, no per-pod sub path) and
    /// `run` names it; that is all that changes. Without, the Pod has none of it.
    #[test]
    fn boot_slots_add_the_node_directory_and_the_launcher_arguments_only_when_limited() {
        let vmi = vmi("");
        let limited = LauncherPodConfig {
            boot_slots: Some(BootSlotsConfig {
                host_dir: "/var/run/vmpod/boot-slots".into(),
                count: NonZeroU32::new(3).unwrap(),
                timeout_seconds: 45,
            }),
            ..LauncherPodConfig::default()
        };
        let mut with = launcher_objects(&valid(&vmi), &limited).unwrap().pod;
        let dir = volume(&with, "boot-slots").host_path.as_ref().unwrap();
        assert_eq!(dir.path, "/var/run/vmpod/boot-slots");
        assert_eq!(dir.type_.as_deref(), Some("DirectoryOrCreate"));
        let c = container(&with);
        let slot_mount = volume_mount(c, "boot-slots");
        assert_eq!(
            (
                slot_mount.mount_path.as_str(),
                slot_mount.read_only,
                &slot_mount.sub_path,
                &slot_mount.sub_path_expr
            ),
            ("/var/lib/vmpod/boot-slots", None, &None, &None),
            "read-write (the launcher locks and makes the files), the whole directory"
        );
        assert_eq!(
            c.args.as_deref().unwrap(),
            [
                "run",
                "--boot-slots-dir",
                "/var/lib/vmpod/boot-slots",
                "--boot-slots",
                "3",
                "--boot-slot-timeout",
                "45"
            ]
        );
        assert!(!mounts(init_container(&with)).contains_key("boot-slots"));

        let without = pod(&vmi);
        let spec = without.spec.as_ref().unwrap();
        assert!(
            spec.volumes
                .iter()
                .flatten()
                .all(|v| v.name != "boot-slots")
        );
        assert!(!mounts(container(&without)).contains_key("boot-slots"));
        assert_eq!(container(&without).args.as_deref().unwrap(), ["run"]);
        // The rest is the same Pod.
        let spec = with.spec.as_mut().unwrap();
        spec.volumes
            .as_mut()
            .unwrap()
            .retain(|v| v.name != "boot-slots");
        let compute = &mut spec.containers[0];
        compute
            .volume_mounts
            .as_mut()
            .unwrap()
            .retain(|m| m.name != "boot-slots");
        compute.args = Some(vec!["run".into()]);
        assert_eq!(with, without);
    }

    fn pod(vmi: &VirtualMachineInstance) -> Pod {
        launcher_objects(&valid(vmi), &LauncherPodConfig::default())
            .unwrap()
            .pod
    }

    fn container(pod: &Pod) -> &Container {
        &pod.spec.as_ref().unwrap().containers[0]
    }

    fn init_container(pod: &Pod) -> &Container {
        &pod.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0]
    }

    fn volume<'a>(pod: &'a Pod, name: &str) -> &'a Volume {
        let vols = pod.spec.as_ref().unwrap().volumes.as_ref().unwrap();
        vols.iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    }

    fn volume_mount<'a>(c: &'a Container, name: &str) -> &'a VolumeMount {
        let mounts = c.volume_mounts.as_ref().unwrap();
        mounts
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("{}: no mount {name}", c.name))
    }

    fn mounts(c: &Container) -> BTreeMap<&str, &str> {
        c.volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| (m.name.as_str(), m.mount_path.as_str()))
            .collect()
    }

    fn env<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
        c.env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.as_deref())
    }

    const CLOUD_INIT: &str = concat!(
        "    devices: {disks: [{name: ci}]}\n",
        "  volumes: [{name: ci, cloudInitNoCloud: {userData: \"#cloud-config\\npassword: s3cret\\n\", ",
        "networkDataBase64: dmVyc2lvbjogMgo=}}]\n",
    );

    #[test]
    fn overhead_formula() {
        assert_eq!(
            memory_overhead_bytes(256 * MI, 1, AccelerationRequest::Auto),
            (150 + 1 + 8) * MI,
            "page tables round up to 1Mi"
        );
        let guest = 512 * MI;
        assert_eq!(
            memory_overhead_bytes(guest, 2, AccelerationRequest::Auto),
            150 * MI + MI + 16 * MI
        );
        assert_eq!(
            memory_overhead_bytes(guest, 2, AccelerationRequest::Emulation),
            (150 + 1 + 16 + 128) * MI
        );
    }

    #[test]
    fn pod_carries_memory_devices_state_dir_and_owner() {
        let vmi = vmi("    resources: {requests: {cpu: 500m}, limits: {memory: 1Gi}}\n");
        let hostpath = LauncherPodConfig::default().with_hostpath_devices();
        let pod = launcher_objects(&valid(&vmi), &hostpath).unwrap().pod;
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
        let m = mounts(c);
        assert!(!m.contains_key("kvm"), "not with emulation");
        assert!(!m.contains_key("vhost-net"), "never as a hostPath");
        assert_eq!(m["tun"], "/dev/net/tun");
        assert_eq!(m["scratch"], SCRATCH_DIR_IN_POD);
        let init = mounts(init_container(&pod));
        assert_eq!(init["tun"], "/dev/net/tun", "net setup creates the tap");
        assert!(!init.contains_key("kvm"));
        assert!(!init.contains_key("scratch"));
        let mut vmi_kvm = vmi.clone();
        set_acceleration(&mut vmi_kvm, "auto");
        let pod = launcher_objects(&valid(&vmi_kvm), &hostpath).unwrap().pod;
        assert_eq!(mounts(container(&pod))["kvm"], "/dev/kvm");
        assert!(!mounts(init_container(&pod)).contains_key("kvm"));
        let kvm = volume(&pod, "kvm");
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

    /// The `vmpod.io/` resources of `c`, in requests and in limits.
    fn device_resources(c: &Container) -> [Vec<(&str, &str)>; 2] {
        let res = c.resources.as_ref().unwrap();
        [&res.requests, &res.limits].map(|map| {
            map.iter()
                .flatten()
                .filter(|(k, _)| k.starts_with("vmpod.io/"))
                .map(|(k, v)| (k.as_str(), v.0.as_str()))
                .collect()
        })
    }

    #[test]
    fn devices_come_from_the_device_plugin_by_default() {
        let mut vmi = vmi("");
        set_acceleration(&mut vmi, "auto");
        let with_kvm = pod(&vmi);
        set_acceleration(&mut vmi, "emulation");
        let emulated = pod(&vmi);
        let tun = vec![("vmpod.io/tun", "1")];
        for (pod, compute) in [
            (
                &with_kvm,
                vec![
                    ("vmpod.io/kvm", "1"),
                    ("vmpod.io/tun", "1"),
                    ("vmpod.io/vhost-net", "1"),
                ],
            ),
            (&emulated, tun.clone()),
        ] {
            assert_eq!(device_resources(container(pod)), [compute.clone(), compute]);
            assert_eq!(
                device_resources(init_container(pod)),
                [tun.clone(), tun.clone()],
                "net-setup creates the tap"
            );
            let vols = pod.spec.as_ref().unwrap().volumes.as_ref().unwrap();
            assert!(
                vols.iter().all(|v| v
                    .host_path
                    .as_ref()
                    .is_none_or(|h| h.path == DEFAULT_NODE_STATE_ROOT)),
                "no hostPath devices: {vols:?}"
            );
        }
    }

    #[test]
    fn state_dir_is_a_host_path_keyed_by_pod_uid_in_both_containers() {
        let pod = pod(&vmi(""));
        let state = volume(&pod, "state").host_path.as_ref().unwrap();
        assert_eq!(state.path, DEFAULT_NODE_STATE_ROOT);
        assert_eq!(state.type_.as_deref(), Some("DirectoryOrCreate"));
        for c in [container(&pod), init_container(&pod)] {
            let m = volume_mount(c, "state");
            assert_eq!(m.mount_path, DEFAULT_STATE_DIR, "{}", c.name);
            assert_eq!(m.sub_path_expr.as_deref(), Some("$(POD_UID)"), "{}", c.name);
            let uid = c
                .env
                .as_ref()
                .unwrap()
                .iter()
                .find(|e| e.name == POD_UID_ENV)
                .unwrap();
            let field = uid.value_from.as_ref().unwrap().field_ref.as_ref().unwrap();
            assert_eq!(field.field_path, "metadata.uid");
            assert_eq!(env(c, "VMPOD_STATE_DIR"), Some(DEFAULT_STATE_DIR));
        }
        assert_eq!(
            state_dir_on_host("/var/run/vmpod/pods/", "0b1c"),
            "/var/run/vmpod/pods/0b1c"
        );
    }

    /// Deliverable (e): least privilege, on the rendered Pod.
    #[test]
    fn compute_container_has_no_net_admin_no_sys_admin_and_is_not_privileged() {
        let pod = pod(&vmi(CLOUD_INIT));
        let c = container(&pod);
        assert_eq!(c.name, "compute");
        assert_eq!(c.args.as_deref().unwrap(), ["run"]);
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.privileged, Some(false));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        let caps = sc.capabilities.as_ref().unwrap();
        assert_eq!(caps.drop.as_deref().unwrap(), ["ALL"]);
        let add = caps.add.as_deref().unwrap();
        for forbidden in ["NET_ADMIN", "SYS_ADMIN", "ALL"] {
            assert!(
                !add.iter().any(|a| a == forbidden),
                "{forbidden} in {add:?}"
            );
        }
        assert_eq!(
            add,
            [
                "NET_BIND_SERVICE",
                "SETUID",
                "SETGID",
                "CHOWN",
                "DAC_OVERRIDE",
                "KILL",
                "NET_RAW"
            ]
        );

        let init = init_container(&pod);
        assert_eq!(init.name, "net-setup");
        assert_eq!(init.args.as_deref().unwrap(), ["net", "setup"]);
        let isc = init.security_context.as_ref().unwrap();
        assert_eq!(isc.privileged, Some(false));
        assert_eq!(isc.allow_privilege_escalation, Some(false));
        let icaps = isc.capabilities.as_ref().unwrap();
        assert_eq!(icaps.drop.as_deref().unwrap(), ["ALL"]);
        assert_eq!(icaps.add.as_deref().unwrap(), ["NET_ADMIN"]);
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.host_network, None);
        assert_eq!(spec.host_pid, None);
    }

    #[test]
    fn the_vmi_is_handed_over_as_a_projected_file_without_user_data() {
        let objects =
            launcher_objects(&valid(&vmi(CLOUD_INIT)), &LauncherPodConfig::default()).unwrap();
        let pod = &objects.pod;
        let c = container(pod);
        assert_eq!(env(c, "VMPOD_VMI"), Some("/etc/vmpod/vmi/vmi.yaml"));
        assert_eq!(
            env(init_container(pod), "VMPOD_VMI"),
            Some("/etc/vmpod/vmi/vmi.yaml")
        );
        let item = &volume(pod, "vmi")
            .downward_api
            .as_ref()
            .unwrap()
            .items
            .as_ref()
            .unwrap()[0];
        assert_eq!(item.path, "vmi.yaml");
        assert_eq!(
            item.field_ref.as_ref().unwrap().field_path,
            "metadata.annotations['vmpod.io/vmi']"
        );
        let handed = &pod.metadata.annotations.as_ref().unwrap()[VMI_ANNOTATION];
        assert!(!handed.contains("s3cret"), "user data leaked: {handed}");
        let doc: Value = serde_json::from_str(handed).unwrap();
        assert_eq!(doc["metadata"]["name"], "vm1");
        assert_eq!(
            doc["metadata"]["uid"],
            "00000000-0000-4000-8000-000000000001"
        );
        assert_eq!(
            doc["metadata"]["annotations"].as_object().unwrap().len(),
            1,
            "only vmpod.io/ annotations: {doc}"
        );
        assert_eq!(
            doc["spec"]["terminationGracePeriodSeconds"], 30,
            "defaulted"
        );
        assert_eq!(
            doc["spec"]["volumes"][0]["cloudInitNoCloud"],
            json!({"secretRef": {"name": "vmpod-launcher-vm1-cloudinit"},
                   "networkDataSecretRef": {"name": "vmpod-launcher-vm1-cloudinit"}})
        );

        // The Secret: decoded data, owned by the VMI, mounted read-only, mode 0400.
        let [secret] = objects.secrets.as_slice() else {
            panic!("one Secret: {:?}", objects.secrets)
        };
        assert_eq!(
            secret.metadata.name.as_deref(),
            Some("vmpod-launcher-vm1-cloudinit")
        );
        assert_eq!(secret.metadata.namespace.as_deref(), Some("ns1"));
        assert_eq!(
            secret.metadata.owner_references.as_ref().unwrap()[0].uid,
            "00000000-0000-4000-8000-000000000001"
        );
        let data = secret.data.as_ref().unwrap();
        assert_eq!(data[USER_DATA_KEY].0, b"#cloud-config\npassword: s3cret\n");
        assert_eq!(data[NETWORK_DATA_KEY].0, b"version: 2\n");
        let vol = volume(pod, "secret-0").secret.as_ref().unwrap();
        assert_eq!(
            vol.secret_name.as_deref(),
            Some("vmpod-launcher-vm1-cloudinit")
        );
        assert_eq!(vol.default_mode, Some(0o400));
        assert_eq!(
            mounts(c)["secret-0"],
            "/etc/vmpod/secrets/vmpod-launcher-vm1-cloudinit"
        );
        assert_eq!(env(c, "VMPOD_SECRETS_DIR"), Some(SECRETS_DIR_IN_POD));
        assert!(!mounts(init_container(pod)).contains_key("secret-0"));
    }

    #[test]
    fn scratch_is_an_empty_dir_sized_from_the_vmi() {
        let vmi = vmi(concat!(
            "    devices: {disks: [{name: root}, {name: data}]}\n",
            "  volumes: [{name: root, containerDisk: {image: reg/disk:1}}, ",
            "{name: data, emptyDisk: {capacity: 2Gi}}]\n",
        ));
        let expected = 64 * MI + 8 * MI + 1024 * MI + 2048 * MI;
        assert_eq!(scratch_size_bytes(&vmi, None).unwrap(), expected);
        let pod = pod(&vmi);
        let dir = volume(&pod, "scratch").empty_dir.as_ref().unwrap();
        assert_eq!(
            dir.size_limit.as_ref().unwrap().0,
            format!("{}Mi", expected / MI)
        );
        assert_eq!(dir.medium, None, "node disk, not memory");
        assert_eq!(
            env(container(&pod), "VMPOD_SCRATCH_DIR"),
            Some(SCRATCH_DIR_IN_POD)
        );
        // cloud-init: its data plus 1Mi, rounded up to whole Mi.
        let with_ci = super::tests::vmi(CLOUD_INIT);
        let ci = cloud_init_plan(&with_ci, "s").unwrap();
        assert_eq!(
            scratch_size_bytes(&with_ci, ci.as_ref()).unwrap(),
            64 * MI + 8 * MI + 2 * MI
        );
        let bad = super::tests::vmi("  volumes: [{name: d, emptyDisk: {capacity: lots}}]\n");
        let err = scratch_size_bytes(&bad, None).unwrap_err().to_string();
        assert!(err.contains("spec.volumes[0].emptyDisk.capacity"), "{err}");
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
        let pod = launcher_objects(&valid(&vmi), &cfg).unwrap().pod;
        let image_of = |name: &str| {
            volume(&pod, name)
                .image
                .as_ref()
                .unwrap()
                .reference
                .clone()
                .unwrap()
        };
        assert_eq!(image_of("kernel-boot"), "reg/kernel:1");
        assert_eq!(image_of("disk-root"), "reg/disk:1");
        let vols = pod.spec.as_ref().unwrap().volumes.as_ref().unwrap();
        assert!(
            vols.iter().all(|v| v.name != "tun"),
            "device plugin instead"
        );
        let res = container(&pod).resources.as_ref().unwrap();
        assert_eq!(
            res.limits.as_ref().unwrap()["devices.kubevirt.io/tun"].0,
            "1"
        );
        let init_res = init_container(&pod).resources.as_ref().unwrap();
        assert_eq!(
            init_res.limits.as_ref().unwrap()["devices.kubevirt.io/tun"].0,
            "1"
        );
        assert!(
            !init_res
                .limits
                .as_ref()
                .unwrap()
                .contains_key("devices.kubevirt.io/kvm")
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
        let c = container(&pod);
        let disk = volume_mount(c, "disk-root");
        assert_eq!(disk.mount_path, "/var/lib/vmpod/images/root");
        assert_eq!(disk.read_only, Some(true));
        assert_eq!(env(c, "VMPOD_IMAGES_DIR"), Some(IMAGE_MOUNT_ROOT));
    }

    #[test]
    fn a_container_disk_named_like_the_kernel_image_mount_is_refused() {
        let vmi = vmi(concat!(
            "    devices: {disks: [{name: kernel-boot}]}\n",
            "  volumes: [{name: kernel-boot, containerDisk: {image: reg/disk:1}}]\n",
        ));
        let err = launcher_objects(&valid(&vmi), &LauncherPodConfig::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("spec.volumes[0].name"), "{err}");
    }

    #[test]
    fn cloud_init_data_that_is_not_base64_is_refused_with_its_path() {
        let vmi = vmi(concat!(
            "    devices: {disks: [{name: ci}]}\n",
            "  volumes: [{name: ci, cloudInitNoCloud: {userDataBase64: \"not base64!\"}}]\n",
        ));
        // Validation refuses it before the controller builds a pod; the plan, reading
        // the data, names the field too.
        let refused = check(vmi.clone()).unwrap_err();
        assert_eq!(
            refused[0].to_string(),
            "spec.volumes[0].cloudInitNoCloud.userDataBase64: is not base64"
        );
        let err = cloud_init_plan(&vmi, "s").unwrap_err().to_string();
        assert!(
            err.contains("spec.volumes[0].cloudInitNoCloud.userDataBase64: not base64"),
            "{err}"
        );
    }

    #[test]
    fn a_vmi_not_from_the_api_server_is_refused() {
        let mut v = vmi("");
        v.metadata.uid = None;
        assert!(matches!(
            launcher_objects(&valid(&v), &LauncherPodConfig::default()),
            Err(LauncherPodError::MissingMetadata("uid"))
        ));
    }
}
