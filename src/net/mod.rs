//! The pod network: discover -> plan -> apply, the cached facts, and bindings.
//!
//! [`InterfaceFacts`] is what the pod's CNI gave us, captured once before anything is
//! changed; it is the single source of truth for DHCP and the domain XML afterwards.
//! This module owns links, addresses, routes and per-link settings inside the pod's
//! network namespace, the anti-spoofing nftables table of each tap, the masquerade
//! binding's NAT table, and the `<state-dir>/net/` cache. It must not start processes
//! other than `nft` (never `ip`: links, addresses, routes and settings go through netlink
//! and `/dev/net/tun`; nftables rules go to `nft` as JSON through the `nftables` crate,
//! see [`antispoof`] and [`masquerade`]), must not write
//! `/proc/sys` (read-only in a container) and must not talk to libvirt.
//!
//! - [`discover`] reads one interface into [`InterfaceFacts`] ([`snapshot`] decodes the
//!   netlink dumps, also used by `vmpodctl net inspect`).
//! - [`plan`] is pure: facts + [`Binding`] + [`PlanOptions`] -> `Vec<`[`NetOp`]`>`;
//!   [`plan_teardown`] is its inverse.
//! - [`apply`] executes ops idempotently.
//! - [`cache`] stores the facts atomically (fsynced) before the first destructive op;
//!   it records the namespace it was made in, and a cache from another namespace
//!   (sandbox recreated, state directory kept) is stale and ignored. Put the state
//!   directory on tmpfs (an `emptyDir` with `medium: Memory`): the namespace it
//!   describes dies with the node anyway, and on tmpfs the fsyncs cost nothing.
//! - [`setup`] / [`teardown`] tie them together for `vmpod-launcher net`.
//!
//! # Bridge binding
//!
//! The pod interface loses its addresses (both families: the VM takes over the pod's
//! identity; the IPv6 facts stay cached for DHCPv6/RA later) and gets a derived, locally
//! administered MAC; bridge `k6t-<iface>` and tap `tap-<iface>` (vnet_hdr, owned by
//! QEMU's uid) are created with the pod MTU and enslaved; the bridge gets
//! `169.254.75.10/32` for the DHCP server and answers ARP only for its own address
//! (`arp_ignore=1`, `arp_announce=2`). Before the tap and the pod interface go up, the
//! tap's anti-spoofing rules are in place ([`antispoof`]: the VM's MAC and IPv4 address
//! only, no DHCP across the bridge). The pod interface loses its IPv6 link-local
//! address while it is a bridge port: it derives from the MAC the VM now uses and
//! would collide.
//!
//! # Per-link settings without `/proc/sys`
//!
//! A container runtime mounts `/proc/sys` read-only unless the container is
//! privileged, so the init container that holds NET_ADMIN still cannot write sysctls,
//! and Pod-level `securityContext.sysctls` cannot name links that do not exist yet.
//! Everything goes through `RTM_SETLINK` instead:
//! - IPv4 devconf (`arp_ignore`, `arp_announce`) is settable by netlink:
//!   `IFLA_AF_SPEC` / `AF_INET` / `IFLA_INET_CONF` ([`NetOp::Ipv4Conf`]).
//! - For IPv6 the kernel takes only `IFLA_INET6_ADDR_GEN_MODE` and
//!   `IFLA_INET6_TOKEN` by netlink; `disable_ipv6`, `autoconf` and `accept_ra` are
//!   `/proc/sys` only. So the plan stops wanting them. What it needed them for:
//!   - no link-local address on the pod interface (it would collide with the VM's):
//!     `addr_gen_mode none` (no new one on the next up or MAC change) and removing the
//!     one there ([`NetOp::Ipv6AddrGenMode`], [`NetOp::DelIpv6LinkLocal`]). Teardown
//!     puts the original mode back and bounces the link, and the kernel makes the
//!     original link-local address again.
//!   - no SLAAC address or RA routes on the bridge ports: a bridge port never
//!     receives IPv6 itself (the bridge takes every frame), so `autoconf`/`accept_ra`
//!     on the pod interface and the tap had nothing to stop; `addr_gen_mode none`
//!     keeps them without a link-local address.
//!   - the bridge: nothing in the pod speaks IPv6 on it yet, so it gets
//!     `addr_gen_mode none` (no link-local address) instead of keeping one with
//!     `autoconf`/`accept_ra` off. What that does not stop, measured on 6.18 with a
//!     router advertisement sent into a bridge set up this way: the bridge still takes
//!     a SLAAC address (from its own derived MAC, never the VM's, so no collision) and
//!     a default route from the router. Only the pod's own IPv6 traffic would use
//!     them; the VM's is bridged and does not care, and CNI plugins give pods IPv6
//!     statically rather than advertise into them. When it matters (DHCPv6/RA for the
//!     VM), an nftables rule dropping RAs at the bridge's input is the netlink-era
//!     equivalent of `accept_ra=0`, one more op of the plan.
//!
//! Reading `/proc/sys` (to record the pod interface's original settings) works
//! read-only.
//! Routes through the pod interface disappear with its addresses; the VM gets them by
//! DHCP, and teardown restores them (on-link routes first, so a Calico-style
//! `/32` with gateway `169.254.1.1` comes back).
//!
//! # No dummy `eth0`
//!
//! KubeVirt renames the pod NIC and leaves a dummy `eth0` holding the pod's MAC and
//! addresses so that a later CNI `CHECK` finds them. We keep the real NIC named `eth0`
//! and give the addresses to the VM only. Why: (1) a dummy holding the pod IP makes the
//! pod itself own the VM's address: packets from pod processes (the DHCP server, a
//! debugging shell, probes run in the pod) to the VM's IP would be delivered locally
//! instead of to the VM, and the pod would answer ARP/NDP for it; (2) kubelet does not
//! call `CHECK` through the CRI runtimes (containerd, CRI-O) during a pod's life, and
//! `DEL` works by interface name and container id, which still match; (3) teardown puts
//! `eth0` back exactly (MAC, addresses, routes), so a `CHECK` after the VM is gone
//! passes. The cost: a `CHECK` issued while the VM runs would fail; if a runtime starts
//! doing that, a dummy can be added as one more `NetOp` in the bridge plan.
//!
//! # Masquerade binding
//!
//! The pod interface keeps its IP and MAC. Bridge `k6t-<iface>` holds the gateway of the
//! VM's private network (`vmNetworkCIDR`, default `10.0.2.0/24`), tap `tap-<iface>` is its
//! only port, the VM's NIC gets a MAC derived from the pod's. The pod routes between
//! them: `forwarding=1` on the pod interface and the bridge, `route_localnet=1` on the
//! bridge, all per link by netlink ([`NetOp::Ipv4Conf`]): the kernel decides forwarding
//! by the receiving link's own setting, so `net.ipv4.ip_forward` (a `/proc/sys` write)
//! is not needed, measured by the launcher tests. The NAT is one nftables table
//! ([`NetOp::Nat`], see [`masquerade`]); teardown drops it ([`NetOp::DelNatTable`]),
//! deletes the links and puts the pod interface's `forwarding` back. DHCP serves the
//! VM's view of the facts ([`masquerade::MasqueradeOptions::vm_facts`]).
//!
//! In a pod with IPv6 the VM gets a private IPv6 address too (`vmIPv6NetworkCIDR`,
//! default `fd10:0:2::/120`): the bridge holds its gateway and the link-local address
//! the router advertisements come from ([`ipv6::bridge_link_local`]), the NAT table
//! (family `inet`) holds the IPv6 rules made by the same code as the IPv4 ones, and
//! IPv6 forwarding, which has no per-link switch and no netlink verb, is the one
//! `/proc/sys` write ([`NetOp::Ipv6Forwarding`]), put back on teardown. Where it is off
//! and `/proc/sys` is read-only (a container; only the runtime can set it, from the
//! Pod's `securityContext.sysctls`), discovery records why
//! ([`CachedInterface::ipv6_off`], [`masquerade::ipv6_off`]) and the plan and the DHCP
//! servers work from the facts without IPv6 ([`CachedInterface::planned_facts`]): the VM
//! gets IPv4 alone, as in an IPv4-only pod.
//!
//! # Next bindings
//!
//! IPv6 for the VM reads the cached IPv6 facts and the bridge's link-local address.
//! `discover`, `apply` and the cache do not change.

pub mod antispoof;
pub mod apply;
pub mod cache;
pub mod discover;
mod error;
mod facts;
pub mod inspect;
pub mod ipv6;
mod lifecycle;
pub mod masquerade;
pub mod netns;
mod nft;
pub mod plan;
pub mod snapshot;
pub mod tap;

pub use apply::apply;
pub use cache::CachedInterface;
pub use discover::{discover, parse_resolv_conf};
pub use error::NetError;
pub use facts::{Binding, InterfaceFacts, IpCidr, MacAddr, NoIpv4, ParseMacError, Route};
pub use lifecycle::{SetupOptions, SetupOutcome, dry_run, setup, setup_or_reuse, teardown};
pub use plan::{
    NetOp, OriginalSettings, PlanError, PlanOptions, TapConfig, bridge_name, plan, plan_teardown,
    tap_name,
};
