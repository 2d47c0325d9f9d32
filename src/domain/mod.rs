//! VMI -> libvirt domain XML (pure), the libvirt connection (virt crate) and the
//! cloud-init NoCloud disk. Does not touch the network: it reads facts and tap names.

pub mod accel;
pub mod agent;
pub mod cloudinit;
pub mod daemons;
pub mod libvirt;
pub mod volumes;
pub mod xml;

pub use accel::{
    KvmFailure, KvmKey, KvmUnusable, KvmVerdicts, choose, domain_type, kvm_usable, probe_kvm,
};
pub use agent::{AgentError, Events, Request, VirtAgent};
pub use cloudinit::{NoCloudData, write_nocloud_disk};
pub use libvirt::{DomainEvent, DomainState, Libvirt, PausedReason, RunningDomain, StopReason};
pub use volumes::{VolumeError, prepare_volumes};
pub use xml::{Attachment, DomainEnv, DomainXml, XmlError, domain_name, domain_xml};
