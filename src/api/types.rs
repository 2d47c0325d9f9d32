//! The `VirtualMachineInstance` resource: `vmpod.io/v1alpha1`, shaped like KubeVirt's
//! `kubevirt.io/v1` VMI for every field vmpod supports (same names, same nesting, camelCase),
//! so a KubeVirt manifest needs at most an `apiVersion` change.
//!
//! Every struct denies unknown fields: a field vmpod does not support is an error naming it,
//! never silently dropped. vmpod extensions to KubeVirt's shape are marked "vmpod extension".
//! Pure data plus small accessors; defaults live in `defaults`, checks in `validate`.

use crate::net::MacAddr;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A virtual machine that runs in its own launcher pod.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "vmpod.io",
    version = "v1alpha1",
    kind = "VirtualMachineInstance",
    plural = "virtualmachineinstances",
    singular = "virtualmachineinstance",
    shortname = "vmi",
    namespaced,
    status = "VirtualMachineInstanceStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"IP","type":"string","jsonPath":".status.interfaces[0].ipAddress"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".status.nodeName"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualMachineInstanceSpec {
    /// The virtual hardware: CPU, memory, devices, firmware.
    pub domain: DomainSpec,
    /// Networks the interfaces attach to (only the pod network is supported).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<Network>,
    /// Volumes the disks read from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// Seconds between the ACPI shutdown request and a forced stop. Default 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<i64>,
    /// Labels a node must carry for the launcher pod to be scheduled there.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// The VM's hostname (served by DHCP); default: the VMI's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// With a headless Service of this name, the VM's FQDN is
    /// `<hostname>.<subdomain>.<namespace>.svc.<cluster domain>` (DHCP domain and first
    /// search domain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdomain: Option<String>,
}

/// `spec.domain`: the virtual hardware.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DomainSpec {
    /// Resource requests and limits of the launcher pod (`memory`, `cpu`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// CPU topology. Default 1 socket, 1 core, 1 thread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    /// Guest memory. Default: requests.memory, else limits.memory, else 256Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    /// Emulated machine type (e.g. `q35`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<Machine>,
    /// Firmware settings: direct kernel boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<Firmware>,
    /// Hypervisor features (ACPI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Features>,
    /// SMBIOS chassis information (type 3) the guest reads, e.g. from
    /// `/sys/class/dmi/id/chassis_*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chassis: Option<Chassis>,
    /// Disks, network interfaces and the RNG device.
    #[serde(default)]
    pub devices: Devices,
}

impl DomainSpec {
    /// `firmware.kernelBoot`, when set.
    pub fn kernel_boot(&self) -> Option<&KernelBoot> {
        self.firmware.as_ref().and_then(|f| f.kernel_boot.as_ref())
    }

    /// `firmware.kernelBoot`, when set, for rewriting in place.
    pub fn kernel_boot_mut(&mut self) -> Option<&mut KernelBoot> {
        self.firmware.as_mut().and_then(|f| f.kernel_boot.as_mut())
    }
}

/// `spec.domain.resources`: requests and limits, as in a pod.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceRequirements {
    /// Minimum resources, e.g. `memory: 512Mi`, `cpu: 500m`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, Quantity>,
    /// Maximum resources.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, Quantity>,
}

/// `spec.domain.cpu`: the vCPU topology. vCPUs = sockets * cores * threads.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cpu {
    /// Sockets. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sockets: Option<u32>,
    /// Cores per socket. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<u32>,
    /// Threads per core. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
}

/// `spec.domain.memory`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Memory {
    /// Memory the guest sees, as a Kubernetes quantity (`512Mi`, `1Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<Quantity>,
}

/// `spec.domain.machine`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Machine {
    /// QEMU machine type, e.g. `q35` or `pc`. Empty or absent: `q35`.
    #[serde(rename = "type", default)]
    pub machine_type: String,
}

/// `spec.domain.chassis`: SMBIOS chassis fields; each one absent is left to QEMU.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Chassis {
    /// Chassis manufacturer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    /// Chassis version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Chassis serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Chassis asset tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset: Option<String>,
    /// Chassis SKU number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
}

impl Chassis {
    /// The fields that are set, by their SMBIOS (and libvirt `<entry name>`) names, in
    /// the order libvirt lists them.
    pub fn entries(&self) -> Vec<(&'static str, &str)> {
        [
            ("manufacturer", &self.manufacturer),
            ("version", &self.version),
            ("serial", &self.serial),
            ("asset", &self.asset),
            ("sku", &self.sku),
        ]
        .into_iter()
        .filter_map(|(name, v)| v.as_deref().map(|v| (name, v)))
        .collect()
    }
}

/// `spec.domain.features`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Features {
    /// ACPI (needed for a graceful shutdown). Enabled unless `enabled: false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acpi: Option<FeatureState>,
}

/// A feature switch: `{}` or `{enabled: true}` turns it on.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FeatureState {
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// `spec.domain.devices`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Devices {
    /// Disks; each names a volume in `spec.volumes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<Disk>,
    /// Network interfaces; each names a network in `spec.networks`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// A virtio RNG device fed from the host's entropy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rng: Option<Rng>,
}

/// `spec.domain.devices.rng`: present means "give the guest a virtio-rng".
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rng {}

/// `spec.domain.devices.disks[]`. Exactly one of `disk` or `cdrom` (default `disk`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Disk {
    /// The volume name this disk reads.
    pub name: String,
    /// Attach as a hard disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskTarget>,
    /// Attach as a CD-ROM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdrom: Option<CdromTarget>,
    /// Boot priority, 1 first. Unique across disks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_order: Option<u32>,
    /// Serial number the guest sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

/// `disks[].disk`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiskTarget {
    /// Bus. Default `virtio`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<DiskBus>,
}

/// `disks[].cdrom`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CdromTarget {
    /// Bus. Default `sata`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<DiskBus>,
}

/// The bus a disk hangs off.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiskBus {
    /// virtio-blk.
    Virtio,
    /// AHCI.
    Sata,
    /// virtio-scsi.
    Scsi,
    /// USB mass storage.
    Usb,
}

impl DiskBus {
    /// The name used in manifests and in libvirt's `<target bus=...>`.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskBus::Virtio => "virtio",
            DiskBus::Sata => "sata",
            DiskBus::Scsi => "scsi",
            DiskBus::Usb => "usb",
        }
    }
}

/// `spec.domain.devices.interfaces[]`. The binding is one of `bridge: {}` (default for the pod
/// network) or `masquerade: {}` (NAT behind the pod IP, `ports` forwarded).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Interface {
    /// The network name this interface attaches to.
    pub name: String,
    /// Bridge binding: the VM takes over the pod's IP and MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<InterfaceBridge>,
    /// Masquerade binding: the VM gets a private address (`networks[].pod.vmNetworkCIDR`)
    /// behind the pod IP; its traffic is NATed out and `ports` are forwarded to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masquerade: Option<InterfaceMasquerade>,
    /// Masquerade binding: the ports on the pod IP forwarded to the VM; none listed
    /// forwards every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// The guest MAC, six hex bytes like `02:00:00:aa:bb:cc`. Default: the pod
    /// interface's original MAC (bridge binding), one derived from it (masquerade).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<MacAddr>,
    /// NIC model. Default `virtio`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<InterfaceModel>,
    /// Extra options the launcher's DHCP server hands the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp_options: Option<DhcpOptions>,
}

/// `interfaces[].bridge`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InterfaceBridge {}

/// `interfaces[].masquerade`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InterfaceMasquerade {}

/// `interfaces[].ports[]`: one port forwarded from the pod IP to the VM.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Port {
    /// A name for the port (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `TCP` (default) or `UDP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// The port number, 1-65535.
    pub port: i64,
}

/// The NIC model the guest sees.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum InterfaceModel {
    /// virtio-net.
    #[serde(rename = "virtio")]
    Virtio,
    /// Intel e1000.
    #[serde(rename = "e1000")]
    E1000,
    /// Intel e1000e.
    #[serde(rename = "e1000e")]
    E1000e,
    /// Realtek 8139.
    #[serde(rename = "rtl8139")]
    Rtl8139,
}

impl InterfaceModel {
    /// The name used in manifests and in libvirt's `<model type=...>`.
    pub fn as_str(self) -> &'static str {
        match self {
            InterfaceModel::Virtio => "virtio",
            InterfaceModel::E1000 => "e1000",
            InterfaceModel::E1000e => "e1000e",
            InterfaceModel::Rtl8139 => "rtl8139",
        }
    }
}

/// `interfaces[].dhcpOptions`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DhcpOptions {
    /// DHCP option 67 (boot file name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_file_name: Option<String>,
    /// DHCP option 66 (TFTP server name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tftp_server_name: Option<String>,
    /// DHCP option 42: IPv4 NTP servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ntp_servers: Vec<String>,
    /// Site-specific options 224-254 with string values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub private_options: Vec<DhcpPrivateOption>,
}

/// `dhcpOptions.privateOptions[]`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DhcpPrivateOption {
    /// Option code, 224 to 254.
    pub option: i32,
    /// Option value, sent as bytes of the string.
    pub value: String,
}

/// `spec.domain.firmware`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Firmware {
    /// Boot a kernel (and initrd) directly instead of from a disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_boot: Option<KernelBoot>,
}

/// `spec.domain.firmware.kernelBoot`. The kernel and initrd come either from `container`
/// (KubeVirt's form) or from `kernelPath`/`initrdPath` at this level (vmpod extension: files
/// on the launcher's own filesystem), never both.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KernelBoot {
    /// The kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_args: Option<String>,
    /// Where the kernel and initrd come from (KubeVirt's form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<KernelBootContainer>,
    /// vmpod extension: the kernel on the launcher's filesystem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_path: Option<String>,
    /// vmpod extension: the initrd on the launcher's filesystem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
}

/// `kernelBoot.container`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KernelBootContainer {
    /// The image holding the kernel and initrd.
    pub image: String,
    /// The kernel's path inside the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_path: Option<String>,
    /// The initrd's path inside the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
}

/// The kernel boot files resolved from either form of [`KernelBoot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelBootFiles {
    /// The image the files live in (`container.image`); `None` for launcher-local files.
    pub image: Option<String>,
    /// The kernel path (inside `image` when set, else on the launcher's filesystem).
    pub kernel_path: String,
    /// The initrd path, if any.
    pub initrd_path: Option<String>,
    /// The kernel command line, if any.
    pub kernel_args: Option<String>,
}

impl KernelBoot {
    /// The kernel and initrd to boot: the kernelBoot-level paths (vmpod extension) when set,
    /// else the container's. `None` when no kernel path is given anywhere.
    pub fn files(&self) -> Option<KernelBootFiles> {
        let (image, kernel, initrd) = match &self.container {
            Some(c) if self.kernel_path.is_none() && self.initrd_path.is_none() => (
                Some(c.image.clone()),
                c.kernel_path.clone(),
                c.initrd_path.clone(),
            ),
            _ => (None, self.kernel_path.clone(), self.initrd_path.clone()),
        };
        Some(KernelBootFiles {
            image,
            kernel_path: kernel?,
            initrd_path: initrd,
            kernel_args: self.kernel_args.clone(),
        })
    }
}

/// `spec.networks[]`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Network {
    /// The name interfaces refer to.
    pub name: String,
    /// The pod's own network (its primary interface).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodNetwork>,
}

/// `networks[].pod`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodNetwork {
    /// Masquerade binding: the VM's private IPv4 network, default `10.0.2.0/24`
    /// (gateway `.1` on the pod's bridge, the VM `.2`).
    #[serde(
        default,
        rename = "vmNetworkCIDR",
        skip_serializing_if = "Option::is_none"
    )]
    pub vm_network_cidr: Option<String>,
    /// Masquerade binding in a dual-stack pod: the VM's private IPv6 network, default
    /// `fd10:0:2::/120` (gateway `::1` on the pod's bridge, the VM `::2`).
    #[serde(
        default,
        rename = "vmIPv6NetworkCIDR",
        skip_serializing_if = "Option::is_none"
    )]
    pub vm_ipv6_network_cidr: Option<String>,
}

/// `spec.volumes[]`: a name plus exactly one source.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Volume {
    /// The name disks refer to.
    pub name: String,
    /// A disk image inside a container image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_disk: Option<ContainerDiskSource>,
    /// A NoCloud cloud-init disk built by the launcher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init_no_cloud: Option<CloudInitNoCloudSource>,
    /// A blank, sparse disk that lives as long as the VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_disk: Option<EmptyDiskSource>,
    /// A disk image file on the host (or the launcher's filesystem).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_disk: Option<HostDisk>,
}

/// `volumes[].containerDisk`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerDiskSource {
    /// The image holding the disk.
    pub image: String,
    /// The disk's path inside the image. Default: the first file under `/disk`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// `volumes[].cloudInitNoCloud`. User data is required (plain, base64 or a Secret: one
/// of them); network data is optional (plain, base64 or a Secret: at most one).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloudInitNoCloudSource {
    /// `user-data`, plain text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// `user-data`, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data_base64: Option<String>,
    /// `network-config`, plain text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data: Option<String>,
    /// `network-config`, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data_base64: Option<String>,
    /// `user-data` from a Secret (key `userdata`, else `userData`), which the pod
    /// mounts at `$VMPOD_SECRETS_DIR/<name>/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
    /// `network-config` from a Secret (key `networkdata`, else `networkData`), mounted
    /// the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data_secret_ref: Option<LocalObjectReference>,
}

/// A reference to an object in the VMI's namespace, by name.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalObjectReference {
    pub name: String,
}

/// `volumes[].emptyDisk`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmptyDiskSource {
    /// Size of the disk.
    pub capacity: Quantity,
}

/// `volumes[].hostDisk`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostDisk {
    /// The image file's path.
    pub path: String,
    /// `Disk` (must exist) or `DiskOrCreate` (created with `capacity` when missing).
    #[serde(rename = "type")]
    pub disk_type: HostDiskType,
    /// Size for `DiskOrCreate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Quantity>,
}

/// `hostDisk.type`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum HostDiskType {
    /// The file must exist.
    #[default]
    Disk,
    /// Create a sparse file of `capacity` when missing.
    DiskOrCreate,
}

/// `status`: what the handler last observed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualMachineInstanceStatus {
    /// Where the VMI is in its life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<VmiPhase>,
    /// A short machine-readable reason for the phase, e.g. `PodFailed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The node the launcher pod runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The guest's interfaces and their addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<VmiInterfaceStatus>,
    /// Conditions such as `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<VmiCondition>,
    /// vmpod extension: the name of the launcher pod (same namespace). KubeVirt keeps an
    /// `activePods` map instead; vmpod has exactly one launcher pod per VMI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launcher_pod: Option<String>,
}

/// The life cycle of a VMI, as KubeVirt names it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum VmiPhase {
    /// Accepted; no launcher pod yet.
    Pending,
    /// The launcher pod exists and waits for a node.
    Scheduling,
    /// The launcher pod has a node; the VM is not running yet.
    Scheduled,
    /// The VM runs.
    Running,
    /// The VM stopped cleanly.
    Succeeded,
    /// The VM or its pod failed.
    Failed,
}

impl VmiPhase {
    /// Every phase, in lifecycle order.
    pub const ALL: [VmiPhase; 6] = [
        VmiPhase::Pending,
        VmiPhase::Scheduling,
        VmiPhase::Scheduled,
        VmiPhase::Running,
        VmiPhase::Succeeded,
        VmiPhase::Failed,
    ];

    /// The phase's name as written in status.
    pub fn as_str(self) -> &'static str {
        match self {
            VmiPhase::Pending => "Pending",
            VmiPhase::Scheduling => "Scheduling",
            VmiPhase::Scheduled => "Scheduled",
            VmiPhase::Running => "Running",
            VmiPhase::Succeeded => "Succeeded",
            VmiPhase::Failed => "Failed",
        }
    }

    /// True for phases a VMI never leaves.
    pub fn is_final(self) -> bool {
        matches!(self, VmiPhase::Succeeded | VmiPhase::Failed)
    }
}

/// `status.interfaces[]`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VmiInterfaceStatus {
    /// The interface name from the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The guest MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The primary IP address (no prefix length).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    /// All IP addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_addresses: Vec<String>,
}

/// `status.conditions[]`, the Kubernetes condition shape.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VmiCondition {
    /// e.g. `Ready`.
    #[serde(rename = "type")]
    pub condition_type: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// When the condition was last checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<Time>,
    /// When the status last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// Machine-readable reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
