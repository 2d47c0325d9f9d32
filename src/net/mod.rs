//! The pod network: discover -> plan -> apply, the cached facts, and bindings.
//!
//! [`InterfaceFacts`] is what the pod's CNI gave us, captured once before anything is
//! changed; it is the single source of truth for DHCP and the domain XML afterwards.
//! This module owns links, addresses, routes and sysctls inside the pod's network
//! namespace. It must not start processes or talk to libvirt.

mod facts;
pub mod netns;

pub use facts::{Binding, InterfaceFacts, IpCidr, MacAddr, ParseMacError, Route};
