//! VMI + what the launcher prepared -> libvirt domain XML. Pure: no file is read or
//! written here; the disk files, their formats and the network facts come in as
//! [`DomainEnv`]. Golden files in `src/domain/testdata/` pin the output.

use super::accel::domain_type;
use crate::api::{Chassis, DiskBus, VirtualMachineInstance};
use crate::control::Acceleration;
use crate::net::{InterfaceFacts, MacAddr};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The emulator libvirt runs.
pub const EMULATOR: &str = "/usr/bin/qemu-system-x86_64";
/// Machine type when the VMI names none (KubeVirt's default too).
pub const DEFAULT_MACHINE: &str = "q35";

/// A disk image's format, as libvirt's `<driver type=...>` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// A volume's backing file, ready to attach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedVolume {
    pub path: PathBuf,
    pub format: DiskFormat,
    pub read_only: bool,
}

/// The pod interface a VMI interface is bridged to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// The pod's cached facts (original MAC, MTU).
    pub facts: InterfaceFacts,
    /// The VM NIC's MAC, as the net phase cached it (what the DHCP server answers).
    pub mac: MacAddr,
    /// The tap the net phase created for it.
    pub tap: String,
}

/// Everything the XML needs beyond the VMI.
#[derive(Clone, Debug)]
pub struct DomainEnv {
    pub accel: Acceleration,
    /// `<state-dir>`: the console log and socket live there.
    pub state_dir: PathBuf,
    /// Prepared volumes by volume name.
    pub volumes: BTreeMap<String, PreparedVolume>,
    /// Pod attachments by VMI interface name.
    pub interfaces: BTreeMap<String, Attachment>,
    /// Where a `kernelBoot.container` image's files are found (the pod mounts them there).
    pub kernel_boot_root: PathBuf,
}

/// The XML of one domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainXml(pub String);

/// The VMI asks for something the XML cannot express.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XmlError {
    #[error("{path}: volume {volume:?} was not prepared")]
    VolumeNotPrepared { path: String, volume: String },
    #[error("{path}: no volume named {volume:?}")]
    NoSuchVolume { path: String, volume: String },
    #[error("{path}: interface {interface:?} has no pod attachment")]
    NoAttachment { path: String, interface: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// The libvirt domain name for a VMI: `<namespace>_<name>` (KubeVirt's form).
pub fn domain_name(vmi: &VirtualMachineInstance) -> String {
    let name = vmi.metadata.name.as_deref().unwrap_or("vmi");
    match vmi.metadata.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => format!("{ns}_{name}"),
        _ => name.to_string(),
    }
}

/// Escape for XML text and single- or double-quoted attributes.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

fn pesc(p: &Path) -> String {
    esc(&p.to_string_lossy())
}

/// The device name for the `index`-th disk on a bus: vda, vdb, ..., sda, ...
fn target_dev(bus: DiskBus, index: usize) -> String {
    let prefix = match bus {
        DiskBus::Virtio => "vd",
        DiskBus::Sata | DiskBus::Scsi | DiskBus::Usb => "sd",
    };
    let mut suffix = String::new();
    let mut n = index;
    loop {
        let letter = b'a' + u8::try_from(n % 26).unwrap_or(0);
        suffix.insert(0, char::from(letter));
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    format!("{prefix}{suffix}")
}

/// Build the domain XML (pure).
pub fn domain_xml(vmi: &VirtualMachineInstance, env: &DomainEnv) -> Result<DomainXml, XmlError> {
    let spec = &vmi.spec;
    let d = &spec.domain;
    let memory = d.guest_memory_bytes().map_err(|e| XmlError::Invalid {
        path: "spec.domain.memory.guest".into(),
        message: e.to_string(),
    })?;
    let cpu = d.cpu.clone().unwrap_or_default();
    let (sockets, cores, threads) = (
        cpu.sockets.unwrap_or(1),
        cpu.cores.unwrap_or(1),
        cpu.threads.unwrap_or(1),
    );
    let machine = d
        .machine
        .as_ref()
        .map(|m| m.machine_type.trim())
        .filter(|t| !t.is_empty())
        .unwrap_or(DEFAULT_MACHINE);

    let mut x = String::with_capacity(4096);
    let w = &mut x;
    // Writing to a String cannot fail.
    let _ = writeln!(w, "<domain type='{}'>", domain_type(env.accel));
    let _ = writeln!(w, "  <name>{}</name>", esc(&domain_name(vmi)));
    if let Some(uid) = vmi.metadata.uid.as_deref() {
        let _ = writeln!(w, "  <uuid>{}</uuid>", esc(uid));
    }
    let _ = writeln!(w, "  <memory unit='b'>{memory}</memory>");
    let _ = writeln!(w, "  <vcpu placement='static'>{}</vcpu>", d.vcpus());
    let chassis = d.chassis.as_ref().map(Chassis::entries).unwrap_or_default();
    if !chassis.is_empty() {
        let _ = writeln!(w, "  <sysinfo type='smbios'>");
        let _ = writeln!(w, "    <chassis>");
        for (name, value) in &chassis {
            let _ = writeln!(w, "      <entry name='{name}'>{}</entry>", esc(value));
        }
        let _ = writeln!(w, "    </chassis>");
        let _ = writeln!(w, "  </sysinfo>");
    }
    let _ = writeln!(w, "  <os>");
    let _ = writeln!(
        w,
        "    <type arch='x86_64' machine='{}'>hvm</type>",
        esc(machine)
    );
    if let Some(kb) = d.firmware.as_ref().and_then(|f| f.kernel_boot.as_ref()) {
        let files = kb.files().ok_or_else(|| XmlError::Invalid {
            path: "spec.domain.firmware.kernelBoot".into(),
            message: "kernelBoot needs kernelPath (or container.kernelPath)".into(),
        })?;
        let locate = |p: &str| match files.image {
            Some(_) => env.kernel_boot_root.join(p.trim_start_matches('/')),
            None => PathBuf::from(p),
        };
        let _ = writeln!(
            w,
            "    <kernel>{}</kernel>",
            pesc(&locate(&files.kernel_path))
        );
        if let Some(initrd) = &files.initrd_path {
            let _ = writeln!(w, "    <initrd>{}</initrd>", pesc(&locate(initrd)));
        }
        if let Some(args) = files.kernel_args.as_deref().filter(|a| !a.is_empty()) {
            let _ = writeln!(w, "    <cmdline>{}</cmdline>", esc(args));
        }
    }
    if !chassis.is_empty() {
        let _ = writeln!(w, "    <smbios mode='sysinfo'/>");
    }
    let _ = writeln!(w, "  </os>");
    let _ = writeln!(w, "  <features>");
    if d.acpi_enabled() {
        let _ = writeln!(w, "    <acpi/>");
    }
    let _ = writeln!(w, "    <apic/>");
    let _ = writeln!(w, "  </features>");
    match env.accel {
        Acceleration::Kvm => {
            let _ = writeln!(w, "  <cpu mode='host-passthrough' check='none'>");
        }
        Acceleration::Tcg => {
            let _ = writeln!(w, "  <cpu>");
        }
    }
    let _ = writeln!(
        w,
        "    <topology sockets='{sockets}' dies='1' cores='{cores}' threads='{threads}'/>"
    );
    let _ = writeln!(w, "  </cpu>");
    let _ = writeln!(w, "  <clock offset='utc'/>");
    let _ = writeln!(w, "  <on_poweroff>destroy</on_poweroff>");
    let _ = writeln!(w, "  <on_reboot>restart</on_reboot>");
    let _ = writeln!(w, "  <on_crash>destroy</on_crash>");
    let _ = writeln!(w, "  <devices>");
    let _ = writeln!(w, "    <emulator>{EMULATOR}</emulator>");
    disks(w, vmi, env)?;
    interfaces(w, vmi, env)?;
    let scratch = crate::statedir::ScratchDir::new(&env.state_dir);
    let console_sock = scratch.console_socket();
    // The launcher copies the FIFO to console.log (see control::console_log).
    let console_log = scratch.console_fifo();
    let _ = writeln!(w, "    <serial type='unix'>");
    let _ = writeln!(
        w,
        "      <source mode='bind' path='{}'/>",
        pesc(&console_sock)
    );
    let _ = writeln!(w, "      <log file='{}' append='on'/>", pesc(&console_log));
    let _ = writeln!(w, "      <target type='isa-serial' port='0'/>");
    let _ = writeln!(w, "    </serial>");
    let _ = writeln!(w, "    <console type='unix'>");
    let _ = writeln!(
        w,
        "      <source mode='bind' path='{}'/>",
        pesc(&console_sock)
    );
    let _ = writeln!(w, "      <target type='serial' port='0'/>");
    let _ = writeln!(w, "    </console>");
    if d.devices.rng.is_some() {
        let _ = writeln!(w, "    <rng model='virtio'>");
        let _ = writeln!(w, "      <backend model='random'>/dev/urandom</backend>");
        let _ = writeln!(w, "    </rng>");
    }
    let _ = writeln!(w, "    <controller type='usb' model='none'/>");
    let _ = writeln!(w, "    <memballoon model='none'/>");
    let _ = writeln!(w, "  </devices>");
    let _ = writeln!(w, "</domain>");
    Ok(DomainXml(x))
}

fn disks(w: &mut String, vmi: &VirtualMachineInstance, env: &DomainEnv) -> Result<(), XmlError> {
    let mut per_bus: BTreeMap<&'static str, usize> = BTreeMap::new();
    for (i, disk) in vmi.spec.domain.devices.disks.iter().enumerate() {
        let path = format!("spec.domain.devices.disks[{i}]");
        if vmi.spec.volume(&disk.name).is_none() {
            return Err(XmlError::NoSuchVolume {
                path,
                volume: disk.name.clone(),
            });
        }
        let vol = env
            .volumes
            .get(&disk.name)
            .ok_or_else(|| XmlError::VolumeNotPrepared {
                path: path.clone(),
                volume: disk.name.clone(),
            })?;
        let bus = disk.bus();
        let dev_prefix = if bus == DiskBus::Virtio { "vd" } else { "sd" };
        let n = per_bus.entry(dev_prefix).or_insert(0);
        let dev = target_dev(bus, *n);
        *n += 1;
        let device = if disk.is_cdrom() { "cdrom" } else { "disk" };
        let _ = writeln!(w, "    <disk type='file' device='{device}'>");
        let _ = writeln!(
            w,
            "      <driver name='qemu' type='{}' discard='unmap'/>",
            vol.format.as_str()
        );
        let _ = writeln!(w, "      <source file='{}'/>", pesc(&vol.path));
        let _ = writeln!(w, "      <target dev='{dev}' bus='{}'/>", bus.as_str());
        if vol.read_only || disk.is_cdrom() {
            let _ = writeln!(w, "      <readonly/>");
        }
        if let Some(order) = disk.boot_order {
            let _ = writeln!(w, "      <boot order='{order}'/>");
        }
        if let Some(serial) = &disk.serial {
            let _ = writeln!(w, "      <serial>{}</serial>", esc(serial));
        }
        let _ = writeln!(w, "      <alias name='ua-{}'/>", esc(&disk.name));
        let _ = writeln!(w, "    </disk>");
    }
    Ok(())
}

fn interfaces(
    w: &mut String,
    vmi: &VirtualMachineInstance,
    env: &DomainEnv,
) -> Result<(), XmlError> {
    for (i, iface) in vmi.spec.domain.devices.interfaces.iter().enumerate() {
        let path = format!("spec.domain.devices.interfaces[{i}]");
        let att = env
            .interfaces
            .get(&iface.name)
            .ok_or_else(|| XmlError::NoAttachment {
                path: path.clone(),
                interface: iface.name.clone(),
            })?;
        let _ = writeln!(w, "    <interface type='ethernet'>");
        let _ = writeln!(w, "      <mac address='{}'/>", att.mac);
        let _ = writeln!(w, "      <target dev='{}' managed='no'/>", esc(&att.tap));
        let _ = writeln!(
            w,
            "      <model type='{}'/>",
            iface.model_or_default().as_str()
        );
        let _ = writeln!(w, "      <mtu size='{}'/>", att.facts.mtu);
        let _ = writeln!(w, "      <rom enabled='no'/>");
        let _ = writeln!(w, "      <alias name='ua-{}'/>", esc(&iface.name));
        let _ = writeln!(w, "    </interface>");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_devs() {
        assert_eq!(target_dev(DiskBus::Virtio, 0), "vda");
        assert_eq!(target_dev(DiskBus::Virtio, 25), "vdz");
        assert_eq!(target_dev(DiskBus::Virtio, 26), "vdaa");
        assert_eq!(target_dev(DiskBus::Sata, 1), "sdb");
    }

    #[test]
    fn escaping() {
        assert_eq!(esc("a<b>&'\""), "a&lt;b&gt;&amp;&apos;&quot;");
    }
}
