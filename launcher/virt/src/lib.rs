//! vmpod-virt: the launcher's libvirt client, the only part of vmpod that links libvirt
//! (the virt crate). [`libvirt`] wraps the connection to the pod's libvirtd; [`serve`]
//! answers the launcher's requests (`vmpod::domain::agent`'s JSON-lines protocol) on
//! stdin and stdout. The launcher starts the `vmpod-virt` binary as a child; it cannot
//! link this crate by construction (it does not depend on it).

pub mod libvirt;
pub mod serve;
