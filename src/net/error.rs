//! The errors of the pod-network module. Each names the object it failed on.

use super::plan::{NetOp, PlanError};
use std::io;
use std::path::PathBuf;

/// What went wrong in discovery, planning, applying, the cache or teardown.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The pod interface is not in the namespace.
    #[error("pod interface {interface} not found in network namespace {netns}")]
    InterfaceNotFound { interface: String, netns: String },
    /// Every binding needs the pod's IPv4 address.
    #[error(transparent)]
    NoIpv4(#[from] super::facts::NoIpv4),
    /// A netlink request failed.
    #[error("netlink: {what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    /// Entering the namespace, opening a socket or starting the runtime failed.
    #[error("network namespace {netns}: {source}")]
    Netns {
        netns: String,
        #[source]
        source: io::Error,
    },
    /// The pod's resolv.conf could not be read.
    #[error("reading resolv.conf {path}: {source}")]
    ResolvConf {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The hostname could not be read.
    #[error("reading the pod's hostname: {0}")]
    Hostname(#[source] nix::Error),
    /// No plan can be made.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// One operation failed; the ones before it were applied.
    #[error("applying op #{index} ({op}): {source}")]
    Apply {
        index: usize,
        op: Box<NetOp>,
        #[source]
        source: Box<NetError>,
    },
    /// A link exists under our name but is something else.
    #[error("link {name} exists but is a {found}, not a {want}")]
    WrongKind {
        name: String,
        found: String,
        want: String,
    },
    /// `nft` failed on a batch (its stderr says why).
    #[error("nft {what}: {detail}")]
    Nft { what: String, detail: String },
    /// A link an op works on is missing.
    #[error("link {name} not found")]
    LinkNotFound { name: String },
    /// A sysctl could not be read.
    #[error("reading sysctl /proc/sys/{key}: {source}")]
    Sysctl {
        key: String,
        #[source]
        source: io::Error,
    },
    /// A sysctl could not be written.
    #[error(
        "writing {value} to sysctl /proc/sys/{key}: {source} (a container runtime mounts \
         /proc/sys read-only: the pod needs {}={value} in its securityContext.sysctls)",
        .key.replace('/', ".")
    )]
    SysctlWrite {
        key: String,
        value: u32,
        #[source]
        source: io::Error,
    },
    /// Creating or configuring a tap through /dev/net/tun failed.
    #[error("tap {name}: {what}: {source}")]
    Tap {
        name: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// `nft` refused or failed to run a rule set (anti-spoofing table `table`).
    #[error("nftables table bridge {table}: {source}")]
    AntiSpoofTable {
        table: String,
        #[source]
        source: nftables::helper::NftablesError,
    },
    /// Reading or writing the cache failed.
    #[error("net cache {path}: {source}")]
    Cache {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The cache was made for another binding or other plan options.
    #[error("net cache {path} was made for {cached}, not {asked}: tear down first")]
    CacheMismatch {
        path: PathBuf,
        cached: String,
        asked: String,
    },
    /// The cache file is not what we wrote.
    #[error("net cache {path} is not valid: {source}")]
    CacheFormat {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl NetError {
    pub(crate) fn netlink(what: impl Into<String>, source: rtnetlink::Error) -> Self {
        NetError::Netlink {
            what: what.into(),
            source,
        }
    }
}

/// The errno of a netlink error reply, positive (`libc::EEXIST`, ...).
pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| c.get().abs()),
        _ => None,
    }
}
