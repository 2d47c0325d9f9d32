//! Semantic validation of a loaded [`VirtualMachineInstance`]: the rules a schema cannot
//! express (quantities, cross references between disks/volumes and interfaces/networks,
//! unique names, one source or binding per item, numbers within what the launcher, QEMU and
//! libvirt can honour, a UID that can be the domain's UUID, what vmpod does not support
//! yet). Every error names its field path, e.g. `spec.domain.memory.guest: "lots" is not a
//! quantity`. Works on the manifest as written: absent fields are judged by their defaults
//! (a volume no disk names is fine: defaulting gives it a virtio disk). Pure.
//!
//! [`check`] is the one way to a [`ValidVmi`]: the defaulted VMI with what validation
//! proved carried in types (its one pod interface, binding, MAC, masquerade options, DHCP
//! extras). Code that takes a `ValidVmi` reads those facts and checks nothing again.

use super::quantity::{QuantityError, parse_quantity, quantity_bytes};
use super::types::*;
use crate::dhcp::DhcpExtras;
use crate::dhcp::config::PrivateOption;
use crate::net::masquerade::MasqueradeOptions;
use crate::net::{Binding, MacAddr};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::ops::Deref;
use std::path::Path;

/// One problem in a manifest and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field path, e.g. `spec.domain.devices.interfaces[0]`; empty for the document.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl FieldError {
    /// An error at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for FieldError {}

/// Reading `dhcpOptions` into what the DHCP server serves, the one place its NTP servers
/// and private option codes are checked: validation reports these errors (paths relative
/// to `dhcpOptions`), the launcher converts a validated VMI's options.
impl TryFrom<&DhcpOptions> for DhcpExtras {
    type Error = Vec<FieldError>;

    fn try_from(d: &DhcpOptions) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut ntp_servers = Vec::new();
        for (i, ntp) in d.ntp_servers.iter().enumerate() {
            match ntp.trim().parse::<Ipv4Addr>() {
                Ok(a) => ntp_servers.push(a),
                Err(_) => errors.push(FieldError::new(
                    index_path("ntpServers", i),
                    format!("{ntp:?} is not an IPv4 address"),
                )),
            }
        }
        let mut private_options = Vec::new();
        for (i, o) in d.private_options.iter().enumerate() {
            match PrivateOption::new(o.option.into(), o.value.clone()) {
                Some(p) => private_options.push(p),
                None => errors.push(FieldError::new(
                    format!("{}.option", index_path("privateOptions", i)),
                    format!("{} is not a private option (224 to 254)", o.option),
                )),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(DhcpExtras {
            boot_file_name: d.boot_file_name.clone(),
            tftp_server_name: d.tftp_server_name.clone(),
            ntp_servers,
            private_options,
        })
    }
}

/// A VMI that passed validation, defaulted, and the facts validation proved about it.
/// Only [`check`] makes one (the fields are private), so holding one is the proof: code
/// downstream takes it and does not check again. Reads as the [`VirtualMachineInstance`]
/// it holds; the changes it allows keep it valid.
#[derive(Clone, Debug)]
pub struct ValidVmi {
    vmi: VirtualMachineInstance,
    pod_interface: Option<PodInterface>,
}

/// The VMI's one interface on the pod network, as validation read it.
#[derive(Clone, Debug, PartialEq)]
pub struct PodInterface {
    /// Its name (`spec.domain.devices.interfaces[].name`, also its network's).
    pub name: String,
    pub binding: Binding,
    /// `macAddress`: the VM's own MAC; none takes the pod's (or a derived one).
    pub mac: Option<MacAddr>,
    /// With the masquerade binding: the VM network and the forwarded ports.
    pub masquerade: Option<MasqueradeOptions>,
    /// `dhcpOptions` as the DHCP server serves them (NTP servers as addresses, private
    /// options within 224-254); empty without.
    pub dhcp: DhcpExtras,
}

impl ValidVmi {
    /// The VMI's `metadata.name` (validation requires one).
    pub fn name(&self) -> &str {
        self.vmi.metadata.name.as_deref().unwrap_or_default()
    }

    /// The one interface on the pod network, if the VMI has a pod network.
    pub fn pod_interface(&self) -> Option<&PodInterface> {
        self.pod_interface.as_ref()
    }

    /// Make relative local file paths (hostDisk, kernelBoot) absolute against `base`.
    pub fn resolve_relative_paths(&mut self, base: &Path) {
        super::resolve_relative_paths(&mut self.vmi.spec, base);
    }

    /// The VMI's metadata, to fill in what the API server would (namespace, uid).
    pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.vmi.metadata
    }

    pub fn into_inner(self) -> VirtualMachineInstance {
        self.vmi
    }
}

impl Deref for ValidVmi {
    type Target = VirtualMachineInstance;

    fn deref(&self) -> &VirtualMachineInstance {
        &self.vmi
    }
}

/// Written as the VMI it holds (what a launcher reads back).
impl serde::Serialize for ValidVmi {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.vmi.serialize(serializer)
    }
}

/// Validate `vmi` ([`validate`]), default it, and read the facts a [`ValidVmi`] carries;
/// every problem with its field path.
pub fn check(vmi: VirtualMachineInstance) -> Result<ValidVmi, Vec<FieldError>> {
    let errors = validate(&vmi);
    if !errors.is_empty() {
        return Err(errors);
    }
    // Read from the defaulted spec: defaulting may add the pod network and interface.
    let vmi = vmi.with_defaults();
    let pod_interface = pod_interface(&vmi.spec)?;
    Ok(ValidVmi { vmi, pod_interface })
}

/// The interface on the pod network and its facts, by the same conversions validation
/// reports with their paths (validated, they succeed).
fn pod_interface(
    spec: &VirtualMachineInstanceSpec,
) -> Result<Option<PodInterface>, Vec<FieldError>> {
    let on_pod = spec
        .domain
        .devices
        .interfaces
        .iter()
        .enumerate()
        .find(|(_, i)| spec.network(&i.name).is_some_and(|n| n.pod.is_some()));
    let Some((i, iface)) = on_pod else {
        return Ok(None);
    };
    let path = index_path("spec.domain.devices.interfaces", i);
    let at_path = |message: String| vec![FieldError::new(&path, message)];
    let binding = iface.binding().map_err(|e| at_path(e.to_string()))?;
    let masquerade = match binding {
        Binding::Masquerade => Some(spec.masquerade_options(iface).map_err(at_path)?),
        Binding::Bridge => None,
    };
    let dhcp = match &iface.dhcp_options {
        None => DhcpExtras::default(),
        Some(d) => DhcpExtras::try_from(d).map_err(|errors| {
            errors
                .into_iter()
                .map(|e| FieldError::new(format!("{path}.dhcpOptions.{}", e.path), e.message))
                .collect::<Vec<_>>()
        })?,
    };
    Ok(Some(PodInterface {
        name: iface.name.clone(),
        binding,
        mac: iface.mac_address,
        masquerade,
        dhcp,
    }))
}

/// `parent.key`; a key that is not a plain identifier is written `parent["key"]`.
pub fn child_path(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match (parent.is_empty(), plain) {
        (true, true) => key.to_string(),
        (false, true) => format!("{parent}.{key}"),
        (_, false) => format!("{parent}[{key:?}]"),
    }
}

/// `parent[i]`.
pub fn index_path(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// The longest grace period vmpod honours: 2^31-1 seconds (68 years). Anything longer
/// means "never" to a person and only overflows deadline arithmetic (the launcher's
/// `Instant + grace`, the handler's pod grace `grace + 15`).
pub const MAX_GRACE_PERIOD_SECONDS: i64 = i32::MAX as i64;
/// The largest `bootOrder`: QEMU's `bootindex` is a signed 32-bit integer.
pub const MAX_BOOT_ORDER: u32 = i32::MAX as u32;
/// The most vCPUs QEMU gives a `q35` machine (the default), and of `pc` (i440fx), in the
/// QEMU the launcher image ships (7.2, Debian 12; later QEMUs raise q35's limit).
pub const MAX_VCPUS_Q35: u32 = 288;
/// See [`MAX_VCPUS_Q35`].
pub const MAX_VCPUS_PC: u32 = 255;
/// The most guest memory an x86_64 guest can address: 2^52 bytes (4Pi), the
/// architecture's physical address width.
pub const MAX_GUEST_MEMORY_BYTES: u64 = 1 << 52;
/// The largest disk QEMU's block layer opens: 2^63 bytes less 1Gi (`BDRV_MAX_LENGTH`,
/// i64::MAX aligned down to its largest alignment).
pub const MAX_DISK_BYTES: u64 = (1 << 63) - (1 << 30);

/// Every semantic problem in `vmi`, in document order; empty when it is valid.
pub fn validate(vmi: &VirtualMachineInstance) -> Vec<FieldError> {
    let mut v = Validator::default();
    v.metadata(vmi);
    let spec = &vmi.spec;
    v.domain(&spec.domain);
    v.disks_and_volumes(spec);
    v.interfaces_and_networks(spec);
    for (field, value) in [("hostname", &spec.hostname), ("subdomain", &spec.subdomain)] {
        if let Some(h) = value
            && !is_dns_label(h)
        {
            v.push(
                format!("spec.{field}"),
                format!(
                    "{h:?} is not a DNS-1123 label (lowercase letters, digits and '-', at most 63)"
                ),
            );
        }
    }
    if let Some(g) = spec.termination_grace_period_seconds {
        let path = "spec.terminationGracePeriodSeconds";
        if g < 0 {
            v.push(path, format!("{g} is negative"));
        } else if g > MAX_GRACE_PERIOD_SECONDS {
            v.push(
                path,
                format!("{g} is more than {MAX_GRACE_PERIOD_SECONDS} seconds (68 years)"),
            );
        }
    }
    v.errors
}

#[derive(Default)]
struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError::new(path, message));
    }

    /// A size: a quantity of bytes above zero and at most `max` (named by `max_what`).
    fn size(&mut self, path: &str, text: &str, max: u64, max_what: &str) -> Option<u64> {
        match quantity_bytes(text) {
            Ok(0) => {
                self.push(path, format!("{text:?} must be larger than zero"));
                None
            }
            Ok(bytes) if bytes > max => {
                self.push(path, format!("{text:?} is more than {max_what}"));
                None
            }
            Ok(bytes) => Some(bytes),
            Err(e) => {
                self.push(path, e.to_string());
                None
            }
        }
    }

    fn metadata(&mut self, vmi: &VirtualMachineInstance) {
        match vmi.metadata.name.as_deref() {
            None | Some("") => self.push("metadata.name", "required"),
            Some(name) if !is_dns_label(name) => self.push("metadata.name", not_a_dns_label(name)),
            Some(_) => {}
        }
        if let Some(uid) = vmi.metadata.uid.as_deref()
            && !is_uuid(uid)
        {
            self.push(
                "metadata.uid",
                format!(
                    "{uid:?} is not a UUID (like 6a1c7a53-6a4e-4f0e-9a55-2f4c0d5e1b10); \
                     it names the VM's domain and SMBIOS system UUID"
                ),
            );
        }
        if vmi.acceleration().is_none() {
            let key = super::ACCELERATION_ANNOTATION;
            let value = &vmi.metadata.annotations.as_ref().expect("set when invalid")[key];
            self.push(
                child_path("metadata.annotations", key),
                format!("{value:?} is not one of auto, kvm, emulation"),
            );
        }
    }

    fn domain(&mut self, domain: &DomainSpec) {
        let mut memory_limit = None;
        if let Some(res) = &domain.resources {
            for (kind, map) in [("requests", &res.requests), ("limits", &res.limits)] {
                for (name, q) in map {
                    let path = child_path(&format!("spec.domain.resources.{kind}"), name);
                    match parse_quantity(&q.0) {
                        Err(e) => self.push(path, e.to_string()),
                        Ok(p) if p.milli() < 0 => {
                            self.push(path, QuantityError::Negative(q.0.clone()).to_string())
                        }
                        Ok(p) if kind == "limits" && name == "memory" => {
                            memory_limit = Some(p.ceil_units())
                        }
                        Ok(_) => {}
                    }
                }
            }
        }
        if let Some(guest) = domain.memory.as_ref().and_then(|m| m.guest.as_ref()) {
            let path = "spec.domain.memory.guest";
            let max = "4Pi (what an x86_64 guest can address)";
            if let Some(bytes) = self.size(path, &guest.0, MAX_GUEST_MEMORY_BYTES, max) {
                if let Some(limit) = memory_limit
                    && i128::from(bytes) > limit
                {
                    self.push(path, format!("{:?} is more than limits.memory", guest.0));
                }
                if bytes < 1 << 20 {
                    self.push(path, format!("{:?} is less than 1Mi", guest.0));
                }
            }
        }
        if let Some(cpu) = &domain.cpu {
            self.cpu(cpu, domain.machine.as_ref());
        }
        if let Some(kb) = domain.kernel_boot() {
            self.kernel_boot(kb);
        }
    }

    /// Each of sockets, cores and threads at least 1, and their product within what QEMU
    /// gives the machine type.
    fn cpu(&mut self, cpu: &Cpu, machine: Option<&Machine>) {
        let machine_type = machine.map_or("", |m| m.machine_type.trim());
        let (max, machine_name) = if machine_type == "pc" || machine_type.starts_with("pc-i440fx") {
            (MAX_VCPUS_PC, "pc")
        } else {
            (MAX_VCPUS_Q35, "q35")
        };
        let mut in_range = true;
        for (name, value) in [
            ("sockets", cpu.sockets),
            ("cores", cpu.cores),
            ("threads", cpu.threads),
        ] {
            let path = format!("spec.domain.cpu.{name}");
            match value {
                Some(0) => self.push(path, "must be at least 1"),
                Some(n) if n > max => self.push(
                    path,
                    format!("{n} is more than {max} (QEMU's vCPU limit for {machine_name})"),
                ),
                _ => continue,
            }
            in_range = false;
        }
        let vcpus = u64::from(cpu.sockets.unwrap_or(1))
            * u64::from(cpu.cores.unwrap_or(1))
            * u64::from(cpu.threads.unwrap_or(1));
        if in_range && vcpus > u64::from(max) {
            self.push(
                "spec.domain.cpu",
                format!(
                    "sockets * cores * threads = {vcpus} vCPUs, more than {max} \
                     (QEMU's limit for {machine_name})"
                ),
            );
        }
    }

    fn kernel_boot(&mut self, kb: &KernelBoot) {
        let path = "spec.domain.firmware.kernelBoot";
        let local = kb.kernel_path.is_some() || kb.initrd_path.is_some();
        if let Some(c) = &kb.container {
            if local {
                self.push(
                    format!("{path}.container"),
                    "set either container or kernelPath/initrdPath at kernelBoot level, not both",
                );
            }
            if c.image.trim().is_empty() {
                self.push(format!("{path}.container.image"), "must not be empty");
            }
            if c.kernel_path.is_none() && c.initrd_path.is_none() {
                self.push(
                    format!("{path}.container"),
                    "needs kernelPath, initrdPath or both",
                );
            }
        }
        let fields = [
            ("kernelPath", &kb.kernel_path),
            ("initrdPath", &kb.initrd_path),
        ];
        let container_fields = kb.container.as_ref().map(|c| {
            [
                ("container.kernelPath", &c.kernel_path),
                ("container.initrdPath", &c.initrd_path),
            ]
        });
        for (name, value) in fields
            .into_iter()
            .chain(container_fields.into_iter().flatten())
        {
            if value.as_deref().is_some_and(|p| p.trim().is_empty()) {
                self.push(format!("{path}.{name}"), "must not be empty");
            }
        }
        if let Some(c) = container_fields {
            for (name, value) in c {
                let set = value.as_deref().filter(|p| !p.trim().is_empty());
                if let Some(why) = set.and_then(image_path_error) {
                    self.push(format!("{path}.{name}"), why);
                }
            }
        }
        if kb.files().is_none() {
            self.push(
                path,
                "no kernel to boot: set kernelPath (or container.kernelPath)",
            );
        }
    }

    fn disks_and_volumes(&mut self, spec: &VirtualMachineInstanceSpec) {
        let volumes: BTreeSet<&str> = spec.volumes.iter().map(|v| v.name.as_str()).collect();
        let mut seen = BTreeSet::new();
        let mut boot_orders = BTreeMap::new();
        for (i, disk) in spec.domain.devices.disks.iter().enumerate() {
            let path = index_path("spec.domain.devices.disks", i);
            self.unique_name(&path, &disk.name, &mut seen);
            if !volumes.contains(disk.name.as_str()) {
                self.push(
                    &path,
                    format!("no volume named {:?} in spec.volumes", disk.name),
                );
            }
            if disk.disk.is_some() && disk.cdrom.is_some() {
                self.push(&path, "set one of disk or cdrom, not both");
            }
            if let Some(order) = disk.boot_order {
                if order == 0 {
                    self.push(format!("{path}.bootOrder"), "must be at least 1");
                } else if order > MAX_BOOT_ORDER {
                    self.push(
                        format!("{path}.bootOrder"),
                        format!(
                            "{order} is more than {MAX_BOOT_ORDER} (QEMU's bootindex is a signed 32-bit integer)"
                        ),
                    );
                } else if let Some(other) = boot_orders.insert(order, i) {
                    self.push(
                        format!("{path}.bootOrder"),
                        format!("{order} is already used by spec.domain.devices.disks[{other}]"),
                    );
                }
            }
        }
        let mut seen = BTreeSet::new();
        let mut cloud_init = None;
        for (i, vol) in spec.volumes.iter().enumerate() {
            let path = index_path("spec.volumes", i);
            self.unique_name(&path, &vol.name, &mut seen);
            if vol.cloud_init_no_cloud.is_some() {
                match cloud_init {
                    Some(first) => self.push(
                        format!("{path}.cloudInitNoCloud"),
                        format!("only one cloudInitNoCloud volume is allowed (spec.volumes[{first}] has one)"),
                    ),
                    None => cloud_init = Some(i),
                }
            }
            self.volume_source(&path, vol);
        }
    }

    fn volume_source(&mut self, path: &str, vol: &Volume) {
        let sources = [
            vol.container_disk.is_some(),
            vol.cloud_init_no_cloud.is_some(),
            vol.empty_disk.is_some(),
            vol.host_disk.is_some(),
        ];
        match sources.iter().filter(|s| **s).count() {
            0 => self.push(
                path,
                "needs a source: containerDisk, cloudInitNoCloud, emptyDisk or hostDisk",
            ),
            1 => {}
            _ => self.push(path, "set exactly one source, not several"),
        }
        if let Some(c) = &vol.container_disk {
            if c.image.trim().is_empty() {
                self.push(format!("{path}.containerDisk.image"), "must not be empty");
            }
            if let Some(why) = c.path.as_deref().and_then(image_path_error) {
                self.push(format!("{path}.containerDisk.path"), why);
            }
        }
        if let Some(c) = &vol.cloud_init_no_cloud {
            let p = format!("{path}.cloudInitNoCloud");
            let user = [
                c.user_data.is_some(),
                c.user_data_base64.is_some(),
                c.secret_ref.is_some(),
            ];
            match user.iter().filter(|s| **s).count() {
                0 => self.push(&p, "needs userData, userDataBase64 or secretRef"),
                1 => {}
                _ => self.push(&p, "set one of userData, userDataBase64, secretRef"),
            }
            if let Some(b) = &c.user_data_base64 {
                self.base64(&format!("{p}.userDataBase64"), b);
            }
            let network = [
                c.network_data.is_some(),
                c.network_data_base64.is_some(),
                c.network_data_secret_ref.is_some(),
            ];
            if network.iter().filter(|s| **s).count() > 1 {
                self.push(
                    &p,
                    "set one of networkData, networkDataBase64, networkDataSecretRef",
                );
            }
            if let Some(b) = &c.network_data_base64 {
                self.base64(&format!("{p}.networkDataBase64"), b);
            }
            for (field, r) in [
                ("secretRef", &c.secret_ref),
                ("networkDataSecretRef", &c.network_data_secret_ref),
            ] {
                if let Some(r) = r
                    && !is_dns_subdomain(&r.name)
                {
                    self.push(
                        format!("{p}.{field}.name"),
                        format!("{:?} is not a Secret name", r.name),
                    );
                }
            }
        }
        let max_disk = "8Ei - 1Gi (the largest disk QEMU opens)";
        if let Some(e) = &vol.empty_disk {
            let p = format!("{path}.emptyDisk.capacity");
            self.size(&p, &e.capacity.0, MAX_DISK_BYTES, max_disk);
        }
        if let Some(h) = &vol.host_disk {
            let p = format!("{path}.hostDisk");
            if let Some(why) = host_path_error(&h.path) {
                self.push(format!("{p}.path"), why);
            }
            match (&h.capacity, h.disk_type) {
                (Some(c), _) => {
                    self.size(&format!("{p}.capacity"), &c.0, MAX_DISK_BYTES, max_disk);
                }
                (None, HostDiskType::DiskOrCreate) => {
                    self.push(format!("{p}.capacity"), "required for type DiskOrCreate")
                }
                (None, HostDiskType::Disk) => {}
            }
        }
    }

    fn base64(&mut self, path: &str, text: &str) {
        if !is_base64(text) {
            self.push(path, "is not base64");
        }
    }

    fn interfaces_and_networks(&mut self, spec: &VirtualMachineInstanceSpec) {
        let interfaces = &spec.domain.devices.interfaces;
        let iface_names: BTreeSet<&str> = interfaces.iter().map(|i| i.name.as_str()).collect();
        let mut seen = BTreeSet::new();
        let mut macs = BTreeMap::new();
        for (i, iface) in interfaces.iter().enumerate() {
            let path = index_path("spec.domain.devices.interfaces", i);
            self.unique_name(&path, &iface.name, &mut seen);
            if spec.network(&iface.name).is_none() {
                self.push(
                    &path,
                    format!("no network named {:?} in spec.networks", iface.name),
                );
            }
            match iface.binding() {
                Ok(Binding::Bridge) if !iface.ports.is_empty() => self.push(
                    format!("{path}.ports"),
                    "ports are forwarded by the masquerade binding only",
                ),
                Ok(_) => {}
                Err(e) => self.push(&path, e.to_string()),
            }
            if let Err((field, e)) = iface.forward_ports() {
                self.push(format!("{path}.{field}"), e);
            }
            // The syntax was checked when it was read (MacAddr's deserializer).
            if let Some(mac) = iface.mac_address {
                let p = format!("{path}.macAddress");
                if mac.is_multicast() {
                    self.push(p, format!("\"{mac}\" is a multicast address"));
                } else if let Some(other) = macs.insert(mac, i) {
                    self.push(
                        p,
                        format!("\"{mac}\" is already used by interfaces[{other}]"),
                    );
                }
            }
            if let Some(d) = &iface.dhcp_options {
                self.dhcp_options(&format!("{path}.dhcpOptions"), d);
            }
        }
        let mut seen = BTreeSet::new();
        let mut pod_networks = 0;
        for (i, net) in spec.networks.iter().enumerate() {
            let path = index_path("spec.networks", i);
            self.unique_name(&path, &net.name, &mut seen);
            match &net.pod {
                None => self.push(&path, "needs a source: pod"),
                Some(pod) => {
                    pod_networks += 1;
                    if let Err(e) = pod.vm_network() {
                        self.push(format!("{path}.pod.vmNetworkCIDR"), e);
                    }
                    if let Err(e) = pod.vm_network6() {
                        self.push(format!("{path}.pod.vmIPv6NetworkCIDR"), e);
                    }
                }
            }
            if pod_networks > 1 && net.pod.is_some() {
                self.push(format!("{path}.pod"), "only one pod network is allowed");
            }
            if !iface_names.contains(net.name.as_str()) {
                self.push(
                    &path,
                    format!(
                        "no interface named {:?} in spec.domain.devices.interfaces",
                        net.name
                    ),
                );
            }
        }
    }

    fn dhcp_options(&mut self, path: &str, d: &DhcpOptions) {
        if let Err(errors) = DhcpExtras::try_from(d) {
            for e in errors {
                self.push(format!("{path}.{}", e.path), e.message);
            }
        }
        let mut seen = BTreeSet::new();
        for (i, o) in d.private_options.iter().enumerate() {
            if PrivateOption::new(o.option.into(), "").is_some() && !seen.insert(o.option) {
                self.push(
                    format!(
                        "{}.option",
                        index_path(&format!("{path}.privateOptions"), i)
                    ),
                    format!("{} is set twice", o.option),
                );
            }
        }
        for (name, value) in [
            ("bootFileName", &d.boot_file_name),
            ("tftpServerName", &d.tftp_server_name),
        ] {
            if value.as_deref().is_some_and(|v| v.len() > 255) {
                self.push(
                    format!("{path}.{name}"),
                    "is longer than 255 bytes (a DHCP option's limit)",
                );
            }
        }
    }

    /// A name that is a DNS label (it becomes part of file paths and device aliases) and
    /// is not used twice in its list.
    fn unique_name<'a>(&mut self, path: &str, name: &'a str, seen: &mut BTreeSet<&'a str>) {
        if name.is_empty() {
            self.push(format!("{path}.name"), "must not be empty");
        } else if !is_dns_label(name) {
            self.push(format!("{path}.name"), not_a_dns_label(name));
        } else if !seen.insert(name) {
            self.push(format!("{path}.name"), format!("{name:?} is used twice"));
        }
    }
}

fn not_a_dns_label(name: &str) -> String {
    format!(
        "{name:?} is not a DNS-1123 label (lowercase letters, digits and '-', \
         starting and ending with a letter or digit, at most 63)"
    )
}

/// What is wrong with a path inside an image (containerDisk `path`, kernelBoot
/// `container.kernelPath`/`initrdPath`): it is taken relative to the image's root (a
/// leading `/` is allowed, as KubeVirt writes `/disk/x.img`) and may not climb out of it.
pub fn image_path_error(path: &str) -> Option<&'static str> {
    if path.trim_start_matches('/').trim().is_empty() {
        Some("must name a file inside the image")
    } else if path.split('/').any(|c| c == "..") {
        Some("must not contain '..' (the path is inside the image)")
    } else {
        None
    }
}

/// What is wrong with a hostDisk path: it is a node path, absolute, with no `..`.
pub fn host_path_error(path: &str) -> Option<&'static str> {
    if path.trim().is_empty() {
        Some("must not be empty")
    } else if !path.starts_with('/') {
        Some("must be an absolute path on the node")
    } else if path.split('/').any(|c| c == "..") {
        Some("must not contain '..'")
    } else {
        None
    }
}

/// RFC 1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 bytes.
fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A UUID in its canonical text form: 8-4-4-4-12 hex digits (any case).
fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// RFC 1123 subdomain (a Secret's name): dot-separated labels, at most 253 bytes.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Standard base64 with padding, whitespace allowed between groups.
fn is_base64(s: &str) -> bool {
    let chars: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let body_len = chars.iter().take_while(|b| **b != b'=').count();
    let padding = &chars[body_len..];
    chars.len().is_multiple_of(4)
        && padding.len() <= 2
        && padding.iter().all(|b| *b == b'=')
        && chars[..body_len]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::DhcpPrivateOption;

    /// dhcpOptions become typed extras once; a code over 255 is refused with its path,
    /// never dropped.
    #[test]
    fn dhcp_options_convert_or_name_each_bad_field() {
        let private = |option, value: &str| DhcpPrivateOption {
            option,
            value: value.into(),
        };
        let good = DhcpOptions {
            boot_file_name: Some("pxelinux.0".into()),
            ntp_servers: vec![" 10.0.0.123".into()],
            private_options: vec![private(224, "a"), private(254, "b")],
            ..Default::default()
        };
        let extras = DhcpExtras::try_from(&good).unwrap();
        assert_eq!(extras.ntp_servers, [Ipv4Addr::new(10, 0, 0, 123)]);
        let codes: Vec<u8> = extras.private_options.iter().map(|p| p.option()).collect();
        assert_eq!(codes, [224, 254]);
        assert_eq!(extras.boot_file_name.as_deref(), Some("pxelinux.0"));

        let bad = DhcpOptions {
            ntp_servers: vec!["10.0.0.1".into(), "ntp.example".into()],
            private_options: vec![private(300, "x"), private(223, "y"), private(240, "z")],
            ..Default::default()
        };
        let errors: Vec<String> = DhcpExtras::try_from(&bad)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            errors,
            [
                r#"ntpServers[1]: "ntp.example" is not an IPv4 address"#,
                "privateOptions[0].option: 300 is not a private option (224 to 254)",
                "privateOptions[1].option: 223 is not a private option (224 to 254)",
            ]
        );
    }

    /// A manifest with `interfaces` and `networks` (YAML flow lists).
    fn manifest(interfaces: &str, networks: &str) -> VirtualMachineInstance {
        super::super::load_vmi(&format!(
            "apiVersion: vmpod.io/v1alpha1\nkind: VirtualMachineInstance\n\
             metadata: {{name: web}}\n\
             spec:\n  domain:\n    devices: {{interfaces: {interfaces}}}\n\
             \x20 networks: {networks}\n"
        ))
        .expect("a manifest")
    }

    /// What a ValidVmi carries about its pod interface, read once by validation.
    #[test]
    fn a_valid_vmi_carries_its_pod_interface_typed() {
        // Neither interfaces nor networks: defaulting adds the pod network, bridged.
        let plain = check(manifest("[]", "[]")).unwrap();
        let iface = plain.pod_interface().expect("the default pod interface");
        assert_eq!(
            (iface.name.as_str(), iface.binding, iface.mac),
            ("default", Binding::Bridge, None)
        );
        assert_eq!(
            (&iface.masquerade, &iface.dhcp),
            (&None, &DhcpExtras::default())
        );
        assert_eq!(plain.name(), "web");

        let masq = check(manifest(
            "[{name: n1, masquerade: {}, macAddress: '02:00:00:00:00:07', ports: [{port: 80}], \
             dhcpOptions: {ntpServers: [10.0.0.1], privateOptions: [{option: 240, value: hi}]}}]",
            "[{name: n1, pod: {vmNetworkCIDR: 10.9.0.0/24}}]",
        ))
        .unwrap();
        let iface = masq.pod_interface().unwrap();
        assert_eq!(iface.binding, Binding::Masquerade);
        assert_eq!(iface.mac, Some("02:00:00:00:00:07".parse().unwrap()));
        let m = iface.masquerade.as_ref().expect("masquerade options");
        assert_eq!(m.vm_network.to_string(), "10.9.0.0/24");
        assert_eq!(m.ports.len(), 1);
        assert_eq!(iface.dhcp.ntp_servers, [Ipv4Addr::new(10, 0, 0, 1)]);
        assert_eq!(
            iface.dhcp.private_options,
            [PrivateOption::new(240, "hi").unwrap()]
        );
    }

    /// The launcher trusts this: a ValidVmi has at most one interface on the pod network.
    #[test]
    fn no_valid_vmi_has_two_pod_interfaces() {
        let errors = check(manifest(
            "[{name: a}, {name: b}]",
            "[{name: a, pod: {}}, {name: b, pod: {}}]",
        ))
        .unwrap_err();
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            errors,
            ["spec.networks[1].pod: only one pod network is allowed"]
        );
        let bad_ntp = check(manifest(
            "[{name: a, dhcpOptions: {ntpServers: [ntp.example]}}]",
            "[{name: a, pod: {}}]",
        ))
        .unwrap_err();
        assert_eq!(
            bad_ntp[0].to_string(),
            r#"spec.domain.devices.interfaces[0].dhcpOptions.ntpServers[0]: "ntp.example" is not an IPv4 address"#
        );
    }

    #[test]
    fn paths() {
        assert_eq!(child_path("", "spec"), "spec");
        assert_eq!(child_path("spec", "domain"), "spec.domain");
        assert_eq!(
            child_path("metadata.annotations", "vmpod.io/acceleration"),
            r#"metadata.annotations["vmpod.io/acceleration"]"#
        );
        assert_eq!(index_path("spec.volumes", 2), "spec.volumes[2]");
    }

    #[test]
    fn base64_and_labels() {
        assert!(is_base64("aGVsbG8="));
        assert!(is_base64("aGVs\nbG8h"));
        assert!(!is_base64("aGVsbG8"));
        assert!(!is_base64("a=b="));
        assert!(!is_base64("****"));
        assert!(is_dns_label("testguest-1"));
        assert!(!is_dns_label("Test"));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_uuid("6a1c7a53-6a4e-4f0e-9a55-2f4c0d5e1B10"));
        assert!(!is_uuid("uid-1"));
        assert!(!is_uuid("6a1c7a536a4e4f0e9a552f4c0d5e1b10"));
        assert!(!is_uuid("6a1c7a53-6a4e-4f0e-9a55-2f4c0d5e1b1g"));
    }

    #[test]
    fn image_paths_stay_inside_the_image_and_host_paths_are_absolute_and_clean() {
        type PathCheck = fn(&str) -> Option<&'static str>;
        let cases: [(PathCheck, &str, bool); 12] = [
            (image_path_error, "/disk/x.img", true),
            (image_path_error, "disk/x.img", true),
            (image_path_error, "boot/vmlinuz..old", true),
            (image_path_error, "/disk/../../etc/shadow", false),
            (image_path_error, "..", false),
            (image_path_error, "", false),
            (image_path_error, "/", false),
            (host_path_error, "/var/lib/disks/a.img", true),
            (host_path_error, "a.img", false),
            (host_path_error, "./a.img", false),
            (host_path_error, "/var/lib/disks/../../dev/sda", false),
            (host_path_error, "", false),
        ];
        for (error, path, ok) in cases {
            assert_eq!(error(path).is_none(), ok, "{path:?}: {:?}", error(path));
        }
    }

    #[test]
    fn a_minimal_vmi_is_valid() {
        let vmi = VirtualMachineInstance::new("a", VirtualMachineInstanceSpec::default());
        assert_eq!(validate(&vmi), []);
    }
}
