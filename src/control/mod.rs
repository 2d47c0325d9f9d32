//! The launcher's control API: HTTP/1.1 + JSON over `<state-dir>/control.sock` (mode
//! 0600), in the style of Firecracker and Cloud Hypervisor, documented in
//! `src/control/openapi.yaml` (a test keeps it equal to [`ROUTES`]).
//!
//! Every request parses into one [`Action`] ([`action::parse`], pure); the
//! [`ControlServer`] maps actions onto a [`Backend`] the launcher implements; the
//! [`ControlClient`] is the one typed client the handler and vmpodctl use. [`state`] holds
//! the atomic `status.json` writer and the local runtime root;
//! [`guarded`] reads a launcher's status from outside its pod without trusting its files,
//! and [`peer`] checks that a control socket's peer is the launcher of the pod meant.
//!
//! This module owns the socket, the HTTP framing and the response types. It owns no VM or
//! network state: it must not talk to libvirt, netlink or DHCP itself.

pub mod action;
pub mod client;
pub mod console_log;
/// Test doubles for the handler's and vmpodctl's tests; not in the shipped binaries.
#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod guarded;
pub mod peer;
pub mod server;
pub mod state;
pub mod types;

pub use action::{Action, ApiError, LifecycleAction, ROUTES, Route, StatusWait};
pub use client::{ClientError, ConsoleFollow, ConsoleStream, ControlClient};
pub use console_log::ConsoleLog;
pub use guarded::{Refused, status_from_dir};
pub use peer::{Peer, PodIdentity};
pub use server::{Backend, BackendError, ControlServer, Limits, ServerError, StatusVersion};
pub use state::{
    StatusSource, list_local, local_root, local_state_dir, read_status, status_of,
    write_json_atomic, write_status,
};
pub use types::{
    Acceleration, AntiSpoofReport, Conflict, ErrorBody, InterfaceReport, InterfaceStatus,
    LauncherStatus, NetworkReport, PauseReason, Phase, ShutdownRequest,
};

/// The OpenAPI 3 description of this API, as shipped in the repository.
pub const OPENAPI_YAML: &str = include_str!("openapi.yaml");
