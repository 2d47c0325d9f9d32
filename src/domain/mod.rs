//! VMI -> libvirt domain XML (pure), the libvirt connection (virt crate) and the
//! cloud-init NoCloud disk. Does not touch the network: it reads facts and tap names.
