//! VMI -> libvirt domain XML (pure), the libvirt connection (virt crate) and the
//! cloud-init NoCloud disk. Does not touch the network: it reads facts and tap names.

pub mod accel;
pub mod cloudinit;
pub mod daemons;
pub mod libvirt;

pub use accel::{Accel, AccelRequest};
pub use cloudinit::{NoCloudData, write_nocloud_disk};
pub use libvirt::{DomainEvent, DomainState, Libvirt, RunningDomain, StopReason};
