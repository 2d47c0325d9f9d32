//! Defaults for a `VirtualMachineInstance` and the accessors consumers call (guest memory in
//! bytes, vCPUs, binding, acceleration). Defaulting fills only what is absent and never
//! reorders lists, so field paths stay valid. Pure.

use super::quantity::{QuantityError, quantity_bytes};
use super::types::*;
use crate::net::Binding;
use crate::net::IpCidr;
use crate::net::masquerade::{ForwardPort, MasqueradeOptions, Protocol, check_vm_network};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use std::fmt;
use std::path::Path;

/// Guest memory when neither `memory.guest` nor a memory request or limit is set.
pub const DEFAULT_GUEST_MEMORY: &str = "256Mi";
/// `terminationGracePeriodSeconds` when unset (KubeVirt's default too).
pub const DEFAULT_GRACE_PERIOD_SECONDS: i64 = 30;
/// The network and interface added when a VMI names none (KubeVirt's auto-attached pod
/// interface).
pub const DEFAULT_NETWORK_NAME: &str = "default";

/// How the VM is accelerated, from the `vmpod.io/acceleration` annotation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AccelerationRequest {
    /// KVM when it works, else TCG emulation.
    #[default]
    Auto,
    /// KVM or fail.
    Kvm,
    /// TCG emulation even when KVM works.
    Emulation,
}

impl AccelerationRequest {
    /// Parse the annotation value.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "auto" => Some(AccelerationRequest::Auto),
            "kvm" => Some(AccelerationRequest::Kvm),
            "emulation" => Some(AccelerationRequest::Emulation),
            _ => None,
        }
    }
}

impl fmt::Display for AccelerationRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AccelerationRequest::Auto => "auto",
            AccelerationRequest::Kvm => "kvm",
            AccelerationRequest::Emulation => "emulation",
        })
    }
}

/// An interface's binding that vmpod cannot serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    /// Both `bridge` and `masquerade`.
    #[error("more than one binding (bridge, masquerade): pick one")]
    Several,
}

impl Interface {
    /// The binding; an interface naming none gets bridge.
    pub fn binding(&self) -> Result<Binding, BindingError> {
        match (&self.bridge, &self.masquerade) {
            (Some(_), Some(_)) => Err(BindingError::Several),
            (_, Some(_)) => Ok(Binding::Masquerade),
            _ => Ok(Binding::Bridge),
        }
    }

    /// `ports` as the masquerade binding forwards them; the error names the field
    /// (relative to the interface) and what is wrong with it.
    pub fn forward_ports(&self) -> Result<Vec<ForwardPort>, (String, String)> {
        self.ports
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let path = format!("ports[{i}]");
                let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
                    "TCP" => Protocol::Tcp,
                    "UDP" => Protocol::Udp,
                    other => {
                        return Err((
                            format!("{path}.protocol"),
                            format!("{other:?} is not a supported protocol (TCP, UDP)"),
                        ));
                    }
                };
                let port = u16::try_from(p.port)
                    .ok()
                    .filter(|&n| n != 0)
                    .ok_or_else(|| {
                        (
                            format!("{path}.port"),
                            format!("{} is not a port number (1-65535)", p.port),
                        )
                    })?;
                Ok(ForwardPort { protocol, port })
            })
            .collect()
    }
}

impl PodNetwork {
    /// `vmNetworkCIDR`, default `10.0.2.0/24`; the error says what is wrong with it.
    pub fn vm_network(&self) -> Result<IpCidr, String> {
        vm_network_field(self.vm_network_cidr.as_deref(), false)
    }

    /// `vmIPv6NetworkCIDR`, default `fd10:0:2::/120`; the error says what is wrong with
    /// it.
    pub fn vm_network6(&self) -> Result<IpCidr, String> {
        vm_network_field(self.vm_ipv6_network_cidr.as_deref(), true)
    }
}

/// A VM network field of the pod network (`vmNetworkCIDR`; `vmIPv6NetworkCIDR` when
/// `ipv6`): the default when unset, else the network it names, checked.
fn vm_network_field(text: Option<&str>, ipv6: bool) -> Result<IpCidr, String> {
    let defaults = MasqueradeOptions::default();
    let (family, default) = if ipv6 {
        ("IPv6", defaults.vm_network6)
    } else {
        ("IPv4", defaults.vm_network)
    };
    let Some(text) = text else {
        return Ok(default);
    };
    let net = text
        .parse::<ipnet::IpNet>()
        .ok()
        .filter(|n| n.addr().is_ipv6() == ipv6)
        .ok_or_else(|| format!("{text:?} is not an {family} CIDR like {default}"))?;
    let net = IpCidr::new(net.network(), net.prefix_len());
    check_vm_network(net, ipv6)?;
    Ok(net)
}

impl VirtualMachineInstanceSpec {
    /// The masquerade options of `iface` (its ports, its pod network's VM network).
    /// Validation reports the same problems with their field paths.
    pub fn masquerade_options(&self, iface: &Interface) -> Result<MasqueradeOptions, String> {
        let default = PodNetwork::default();
        let pod = self
            .network(&iface.name)
            .and_then(|n| n.pod.as_ref())
            .unwrap_or(&default);
        let vm_network = pod
            .vm_network()
            .map_err(|e| format!("vmNetworkCIDR: {e}"))?;
        let vm_network6 = pod
            .vm_network6()
            .map_err(|e| format!("vmIPv6NetworkCIDR: {e}"))?;
        let ports = iface
            .forward_ports()
            .map_err(|(path, e)| format!("{path}: {e}"))?;
        Ok(MasqueradeOptions {
            vm_network,
            vm_network6,
            ports,
        })
    }
}

impl Interface {
    /// The NIC model; default virtio.
    pub fn model_or_default(&self) -> InterfaceModel {
        self.model.unwrap_or(InterfaceModel::Virtio)
    }
}

impl Cpu {
    /// sockets * cores * threads, each defaulting to 1 (saturating).
    pub fn vcpus(&self) -> u32 {
        let f = |v: Option<u32>| v.unwrap_or(1);
        f(self.sockets)
            .saturating_mul(f(self.cores))
            .saturating_mul(f(self.threads))
    }
}

impl Disk {
    /// The bus after defaulting: `disk` -> virtio, `cdrom` -> sata.
    pub fn bus(&self) -> DiskBus {
        match (&self.disk, &self.cdrom) {
            (_, Some(c)) => c.bus.unwrap_or(DiskBus::Sata),
            (Some(d), None) => d.bus.unwrap_or(DiskBus::Virtio),
            (None, None) => DiskBus::Virtio,
        }
    }

    /// True when attached as a CD-ROM.
    pub fn is_cdrom(&self) -> bool {
        self.cdrom.is_some()
    }
}

impl DomainSpec {
    /// The guest memory quantity as written: `memory.guest`, else `requests.memory`, else
    /// `limits.memory`, else [`DEFAULT_GUEST_MEMORY`].
    pub fn guest_memory_quantity(&self) -> Quantity {
        let from_resources = |pick: fn(&ResourceRequirements) -> Option<&Quantity>| {
            self.resources.as_ref().and_then(pick).cloned()
        };
        self.memory
            .as_ref()
            .and_then(|m| m.guest.clone())
            .or_else(|| from_resources(|r| r.requests.get("memory")))
            .or_else(|| from_resources(|r| r.limits.get("memory")))
            .unwrap_or_else(|| Quantity(DEFAULT_GUEST_MEMORY.to_string()))
    }

    /// Guest memory in bytes.
    pub fn guest_memory_bytes(&self) -> Result<u64, QuantityError> {
        quantity_bytes(&self.guest_memory_quantity().0)
    }

    /// vCPUs (1 unless `cpu` says otherwise).
    pub fn vcpus(&self) -> u32 {
        self.cpu.as_ref().map_or(1, Cpu::vcpus)
    }

    /// ACPI is on unless `features.acpi.enabled: false`.
    pub fn acpi_enabled(&self) -> bool {
        self.features
            .as_ref()
            .and_then(|f| f.acpi.as_ref())
            .and_then(|a| a.enabled)
            .unwrap_or(true)
    }
}

impl VirtualMachineInstanceSpec {
    /// The grace period in seconds (default 30).
    pub fn grace_period_seconds(&self) -> i64 {
        self.termination_grace_period_seconds
            .unwrap_or(DEFAULT_GRACE_PERIOD_SECONDS)
    }

    /// The network an interface attaches to.
    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.name == name)
    }

    /// The volume a disk reads.
    pub fn volume(&self, name: &str) -> Option<&Volume> {
        self.volumes.iter().find(|v| v.name == name)
    }
}

impl VirtualMachineInstance {
    /// The accelerator requested by the `vmpod.io/acceleration` annotation; `None` when the
    /// value is not one of `auto`, `kvm`, `emulation` (validation reports it).
    pub fn acceleration(&self) -> Option<AccelerationRequest> {
        match self
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(super::ACCELERATION_ANNOTATION))
        {
            None => Some(AccelerationRequest::Auto),
            Some(v) => AccelerationRequest::parse(v),
        }
    }

    /// This VMI with every default written out: memory, CPU topology, grace period, the pod
    /// network with a bridge interface when none is named, bridge binding, virtio model, a
    /// virtio disk for each volume no disk names (appended in volume order, as KubeVirt's
    /// defaulting does), disk targets and buses. Fills only absent fields.
    pub fn with_defaults(mut self) -> Self {
        apply_defaults(&mut self.spec);
        self
    }
}

/// Fill absent fields of a spec with their defaults (see
/// [`VirtualMachineInstance::with_defaults`]).
pub fn apply_defaults(spec: &mut VirtualMachineInstanceSpec) {
    let domain = &mut spec.domain;
    let guest = domain.guest_memory_quantity();
    domain.memory.get_or_insert_default().guest = Some(guest);
    let cpu = domain.cpu.get_or_insert_default();
    for v in [&mut cpu.sockets, &mut cpu.cores, &mut cpu.threads] {
        v.get_or_insert(1);
    }
    spec.termination_grace_period_seconds
        .get_or_insert(DEFAULT_GRACE_PERIOD_SECONDS);
    if spec.networks.is_empty() && domain.devices.interfaces.is_empty() {
        spec.networks.push(Network {
            name: DEFAULT_NETWORK_NAME.to_string(),
            pod: Some(PodNetwork::default()),
        });
        domain.devices.interfaces.push(Interface {
            name: DEFAULT_NETWORK_NAME.to_string(),
            ..Interface::default()
        });
    }
    for iface in &mut domain.devices.interfaces {
        if iface.bridge.is_none() && iface.masquerade.is_none() {
            iface.bridge = Some(InterfaceBridge {});
        }
        iface.model.get_or_insert(InterfaceModel::Virtio);
    }
    for vol in &spec.volumes {
        if !domain.devices.disks.iter().any(|d| d.name == vol.name) {
            domain.devices.disks.push(Disk {
                name: vol.name.clone(),
                ..Disk::default()
            });
        }
    }
    for disk in &mut domain.devices.disks {
        match (&mut disk.disk, &mut disk.cdrom) {
            (_, Some(c)) => {
                c.bus.get_or_insert(DiskBus::Sata);
            }
            (Some(d), None) => {
                d.bus.get_or_insert(DiskBus::Virtio);
            }
            (None, None) => {
                disk.disk = Some(DiskTarget {
                    bus: Some(DiskBus::Virtio),
                })
            }
        }
    }
}

/// Make the launcher-local file paths absolute: `kernelBoot.kernelPath`/`initrdPath` (the
/// vmpod extension; `hostDisk.path` must be absolute already, see validation). vmpod resolves relative paths against the working
/// directory of the command that loads the manifest (`vmpodctl run`, `vmpod-handler local`),
/// so the examples, run from the repository root, find `target/guest/vmlinuz`. Paths inside
/// a `container` image are left alone. Pure: joins paths, reads nothing.
pub fn resolve_relative_paths(spec: &mut VirtualMachineInstanceSpec, base: &Path) {
    let resolve = |p: &mut String| {
        if Path::new(p.as_str()).is_relative() {
            *p = base.join(p.as_str()).to_string_lossy().into_owned();
        }
    };
    if let Some(kb) = spec.domain.kernel_boot_mut() {
        kb.kernel_path.iter_mut().for_each(resolve);
        kb.initrd_path.iter_mut().for_each(resolve);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn q(s: &str) -> Quantity {
        Quantity(s.to_string())
    }

    #[test]
    fn empty_spec_gets_every_default() {
        let spec = VirtualMachineInstance::new("a", VirtualMachineInstanceSpec::default())
            .with_defaults()
            .spec;
        assert_eq!(spec.domain.memory.unwrap().guest, Some(q("256Mi")));
        let cpu = spec.domain.cpu.unwrap();
        assert_eq!(
            (cpu.sockets, cpu.cores, cpu.threads),
            (Some(1), Some(1), Some(1))
        );
        assert_eq!(spec.termination_grace_period_seconds, Some(30));
        assert_eq!(spec.networks.len(), 1);
        assert_eq!(spec.networks[0].name, "default");
        assert!(spec.networks[0].pod.is_some());
        let iface = &spec.domain.devices.interfaces[0];
        assert_eq!(iface.name, "default");
        assert!(iface.bridge.is_some());
        assert_eq!(iface.model, Some(InterfaceModel::Virtio));
    }

    #[test]
    fn guest_memory_falls_back_to_requests_then_limits() {
        let mut d = DomainSpec {
            resources: Some(ResourceRequirements {
                requests: BTreeMap::new(),
                limits: BTreeMap::from([("memory".to_string(), q("1Gi"))]),
            }),
            ..DomainSpec::default()
        };
        assert_eq!(d.guest_memory_bytes(), Ok(1 << 30));
        d.resources
            .as_mut()
            .unwrap()
            .requests
            .insert("memory".into(), q("512Mi"));
        assert_eq!(d.guest_memory_bytes(), Ok(512 << 20));
        d.memory = Some(Memory {
            guest: Some(q("300Mi")),
        });
        assert_eq!(d.guest_memory_bytes(), Ok(300 << 20));
    }

    #[test]
    fn defaults_never_override_what_is_set() {
        let mut spec = VirtualMachineInstanceSpec {
            termination_grace_period_seconds: Some(0),
            ..Default::default()
        };
        spec.domain.cpu = Some(Cpu {
            sockets: None,
            cores: Some(2),
            threads: None,
        });
        spec.domain.devices.disks = vec![
            Disk {
                name: "a".into(),
                cdrom: Some(CdromTarget::default()),
                ..Default::default()
            },
            Disk {
                name: "b".into(),
                ..Default::default()
            },
            Disk {
                name: "c".into(),
                disk: Some(DiskTarget {
                    bus: Some(DiskBus::Scsi),
                }),
                ..Default::default()
            },
        ];
        spec.networks = vec![Network {
            name: "n".into(),
            pod: Some(PodNetwork::default()),
        }];
        spec.domain.devices.interfaces = vec![Interface {
            name: "n".into(),
            masquerade: Some(InterfaceMasquerade {}),
            model: Some(InterfaceModel::E1000),
            ..Default::default()
        }];
        apply_defaults(&mut spec);
        assert_eq!(spec.termination_grace_period_seconds, Some(0));
        assert_eq!(spec.domain.vcpus(), 2);
        let buses: Vec<_> = spec.domain.devices.disks.iter().map(Disk::bus).collect();
        assert_eq!(buses, [DiskBus::Sata, DiskBus::Virtio, DiskBus::Scsi]);
        let iface = &spec.domain.devices.interfaces[0];
        assert!(iface.bridge.is_none(), "masquerade stays masquerade");
        assert_eq!(iface.binding(), Ok(Binding::Masquerade));
        assert_eq!(iface.model, Some(InterfaceModel::E1000));
        assert_eq!(spec.networks.len(), 1);
    }

    #[test]
    fn a_volume_without_a_disk_gets_a_virtio_disk_appended() {
        let mut spec = VirtualMachineInstanceSpec::default();
        spec.domain.devices.disks = vec![Disk {
            name: "b".into(),
            cdrom: Some(CdromTarget::default()),
            ..Default::default()
        }];
        spec.volumes = ["a", "b", "c"]
            .map(|name| Volume {
                name: name.into(),
                empty_disk: Some(EmptyDiskSource { capacity: q("1Mi") }),
                ..Default::default()
            })
            .to_vec();
        apply_defaults(&mut spec);
        let disks: Vec<(&str, DiskBus, bool)> = spec
            .domain
            .devices
            .disks
            .iter()
            .map(|d| (d.name.as_str(), d.bus(), d.is_cdrom()))
            .collect();
        assert_eq!(
            disks,
            [
                ("b", DiskBus::Sata, true),
                ("a", DiskBus::Virtio, false),
                ("c", DiskBus::Virtio, false)
            ],
            "existing disks keep their place and kind"
        );
        assert!(spec.domain.devices.disks[1].disk.is_some());
    }

    #[test]
    fn acceleration_annotation() {
        let mut vmi = VirtualMachineInstance::new("a", VirtualMachineInstanceSpec::default());
        assert_eq!(vmi.acceleration(), Some(AccelerationRequest::Auto));
        for (v, want) in [
            ("kvm", Some(AccelerationRequest::Kvm)),
            ("emulation", Some(AccelerationRequest::Emulation)),
            ("tcg", None),
        ] {
            vmi.metadata.annotations = Some(BTreeMap::from([(
                crate::api::ACCELERATION_ANNOTATION.to_string(),
                v.to_string(),
            )]));
            assert_eq!(vmi.acceleration(), want, "{v}");
        }
    }

    #[test]
    fn kernel_boot_files_prefer_the_vmpod_paths() {
        let mut kb = KernelBoot {
            kernel_args: Some("console=ttyS0".into()),
            container: Some(KernelBootContainer {
                image: "img".into(),
                kernel_path: Some("/boot/vmlinuz".into()),
                initrd_path: None,
            }),
            ..Default::default()
        };
        let f = kb.files().unwrap();
        assert_eq!(f.image.as_deref(), Some("img"));
        assert_eq!(f.kernel_path, "/boot/vmlinuz");
        kb.kernel_path = Some("target/guest/vmlinuz".into());
        kb.initrd_path = Some("target/guest/initramfs.img".into());
        let f = kb.files().unwrap();
        assert_eq!(f.image, None);
        assert_eq!(f.kernel_path, "target/guest/vmlinuz");
        assert_eq!(f.initrd_path.as_deref(), Some("target/guest/initramfs.img"));
        assert_eq!(f.kernel_args.as_deref(), Some("console=ttyS0"));
        assert_eq!(KernelBoot::default().files(), None);
    }

    #[test]
    fn relative_paths_resolve_against_the_base() {
        let mut spec = VirtualMachineInstanceSpec::default();
        spec.domain.firmware = Some(Firmware {
            kernel_boot: Some(KernelBoot {
                kernel_path: Some("target/guest/vmlinuz".into()),
                initrd_path: Some("/abs/initrd".into()),
                ..Default::default()
            }),
        });
        resolve_relative_paths(&mut spec, Path::new("/repo"));
        let kb = spec.domain.firmware.unwrap().kernel_boot.unwrap();
        assert_eq!(
            kb.kernel_path.as_deref(),
            Some("/repo/target/guest/vmlinuz")
        );
        assert_eq!(kb.initrd_path.as_deref(), Some("/abs/initrd"));
    }
}
