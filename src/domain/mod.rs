//! VMI -> libvirt domain XML (pure), the pod's libvirtd, the launcher's side of its
//! libvirt client process ([`agent`]; the client itself, which links libvirt, is the
//! vmpod-virt crate), domain events and state, and the cloud-init NoCloud disk. Does not
//! touch the network: it reads facts and tap names.

pub mod accel;
pub mod agent;
pub mod cloudinit;
pub mod daemons;
pub mod events;
pub mod host_disks;
pub mod volumes;
pub mod xml;

pub use accel::{
    KvmFailure, KvmKey, KvmUnusable, KvmVerdicts, choose, domain_type, kvm_usable, probe_kvm,
};
pub use agent::{AgentError, Events, Request, VirtAgent};
pub use cloudinit::{NoCloudData, write_nocloud_disk};
pub use events::{DomainEvent, DomainState, PausedReason, StopReason};
pub use host_disks::{HOST_DISK_DIRS_ENV, HostDiskDirArgs, host_disks_outside};
pub use volumes::{VolumeError, prepare_volumes};
pub use xml::{Attachment, DomainEnv, DomainXml, XmlError, domain_name, domain_xml};
