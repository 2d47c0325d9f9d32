//! The libvirt connection (virt crate): define and start the domain, lifecycle actions,
//! and domain lifecycle events turned into [`DomainEvent`]s on a channel. Talks only to
//! the libvirtd it is pointed at; never starts or stops daemons.

use std::ffi::{c_int, c_void};
use std::path::Path;
use std::sync::Once;
use tokio::sync::mpsc;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::sys;
use vmpod::domain::{DomainEvent, PausedReason, StopReason};

/// A libvirt call failed.
#[derive(Debug, thiserror::Error)]
#[error("libvirt: {what}: {source}")]
pub struct LibvirtError {
    pub what: String,
    #[source]
    pub source: virt::error::Error,
}

fn lv<T>(
    what: impl FnOnce() -> String,
    r: Result<T, virt::error::Error>,
) -> Result<T, LibvirtError> {
    r.map_err(|source| LibvirtError {
        what: what(),
        source,
    })
}

/// Map libvirt's `VIR_DOMAIN_PAUSED_*` reason (pure).
pub fn paused_reason_of(reason: u32) -> PausedReason {
    match reason {
        sys::VIR_DOMAIN_PAUSED_USER => PausedReason::User,
        sys::VIR_DOMAIN_PAUSED_IOERROR => PausedReason::IoError,
        sys::VIR_DOMAIN_PAUSED_CRASHED
        | sys::VIR_DOMAIN_PAUSED_WATCHDOG
        | sys::VIR_DOMAIN_PAUSED_API_ERROR => PausedReason::Crashed,
        sys::VIR_DOMAIN_PAUSED_UNKNOWN => PausedReason::Unknown,
        _ => PausedReason::Operation,
    }
}

/// Map libvirt's lifecycle (event, detail) pair (pure).
pub fn event_of(event: i32, detail: i32) -> DomainEvent {
    let Ok(ev) = u32::try_from(event) else {
        return DomainEvent::Other { event, detail };
    };
    let d = u32::try_from(detail).unwrap_or(u32::MAX);
    match ev {
        sys::VIR_DOMAIN_EVENT_DEFINED => DomainEvent::Defined,
        sys::VIR_DOMAIN_EVENT_UNDEFINED => DomainEvent::Undefined,
        sys::VIR_DOMAIN_EVENT_STARTED => DomainEvent::Started,
        sys::VIR_DOMAIN_EVENT_SUSPENDED => DomainEvent::Paused(match d {
            sys::VIR_DOMAIN_EVENT_SUSPENDED_IOERROR => PausedReason::IoError,
            sys::VIR_DOMAIN_EVENT_SUSPENDED_API_ERROR
            | sys::VIR_DOMAIN_EVENT_SUSPENDED_WATCHDOG => PausedReason::Crashed,
            _ => PausedReason::Unknown,
        }),
        sys::VIR_DOMAIN_EVENT_RESUMED => DomainEvent::Resumed,
        sys::VIR_DOMAIN_EVENT_SHUTDOWN => DomainEvent::ShuttingDown,
        sys::VIR_DOMAIN_EVENT_CRASHED => DomainEvent::Crashed,
        sys::VIR_DOMAIN_EVENT_STOPPED => DomainEvent::Stopped(match d {
            sys::VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN => StopReason::Shutdown,
            sys::VIR_DOMAIN_EVENT_STOPPED_DESTROYED => StopReason::Destroyed,
            sys::VIR_DOMAIN_EVENT_STOPPED_CRASHED => StopReason::Crashed,
            sys::VIR_DOMAIN_EVENT_STOPPED_MIGRATED => StopReason::Migrated,
            sys::VIR_DOMAIN_EVENT_STOPPED_SAVED => StopReason::Saved,
            sys::VIR_DOMAIN_EVENT_STOPPED_FAILED => StopReason::Failed,
            sys::VIR_DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT => StopReason::FromSnapshot,
            _ => StopReason::Unknown,
        }),
        _ => DomainEvent::Other { event, detail },
    }
}

/// Why domain `name` is paused now, asked of libvirt on `conn` (`Unknown` when it is not
/// paused any more or libvirt cannot say).
pub fn paused_reason(conn: &Connect, name: &str) -> PausedReason {
    let Ok(dom) = conn.lookup_domain_by_name(name) else {
        return PausedReason::Unknown;
    };
    let (mut state, mut reason): (c_int, c_int) = (-1, -1);
    // SAFETY: `dom` is a valid domain handle; both out-pointers point at live ints.
    let rc = unsafe { sys::virDomainGetState(dom.as_ptr(), &mut state, &mut reason, 0) };
    match (u32::try_from(state), u32::try_from(reason)) {
        (Ok(sys::VIR_DOMAIN_PAUSED), Ok(r)) if rc == 0 => paused_reason_of(r),
        _ => PausedReason::Unknown,
    }
}

static EVENT_LOOP: Once = Once::new();

/// Register libvirt's default event loop and run it on a thread of its own, once per
/// process. Must happen before the connection is opened for events to arrive.
pub fn start_event_loop() {
    EVENT_LOOP.call_once(|| {
        if let Err(e) = virt::event::event_register_default_impl() {
            tracing::error!("libvirt: register the default event loop: {e}");
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("libvirt-events".into())
            .stack_size(256 * 1024)
            .spawn(|| {
                loop {
                    if let Err(e) = virt::event::event_run_default_impl() {
                        tracing::error!("libvirt event loop: {e}");
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!("libvirt: cannot spawn the event loop thread: {e}");
        }
    });
}

/// The URI of a libvirtd listening on `socket` (session mode, private socket).
pub fn socket_uri(socket: &Path) -> String {
    format!("qemu+unix:///session?socket={}", socket.display())
}

/// An open connection to the pod's libvirtd.
pub struct Libvirt {
    conn: Connect,
    callback: Option<c_int>,
}

/// The domain the launcher runs.
pub struct RunningDomain {
    pub domain: Domain,
    pub name: String,
}

impl Libvirt {
    /// Connect to the libvirtd at `socket`, starting the event loop first.
    pub fn connect(socket: &Path) -> Result<Self, LibvirtError> {
        start_event_loop();
        let uri = socket_uri(socket);
        let conn = lv(|| format!("connect to {uri}"), Connect::open(Some(&uri)))?;
        Ok(Libvirt {
            conn,
            callback: None,
        })
    }

    /// The underlying connection, for calls not wrapped here.
    pub fn conn(&self) -> &Connect {
        &self.conn
    }

    /// Forward every domain lifecycle event on this connection to the returned channel.
    pub fn subscribe(
        &mut self,
    ) -> Result<mpsc::UnboundedReceiver<(String, DomainEvent)>, LibvirtError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let opaque = Box::into_raw(Box::new(tx)).cast::<c_void>();
        // SAFETY: libvirt's lifecycle callback has the signature of `lifecycle_cb`; the
        // generic type is what the C API takes (VIR_DOMAIN_EVENT_CALLBACK), so the cast
        // only erases the extra arguments' types. `opaque` is a leaked Box freed by
        // `free_sender` when libvirt drops the callback. The connection pointer is valid.
        let id = unsafe {
            let cb: unsafe extern "C" fn(
                sys::virConnectPtr,
                sys::virDomainPtr,
                c_int,
                c_int,
                *mut c_void,
            ) -> c_int = lifecycle_cb;
            sys::virConnectDomainEventRegisterAny(
                self.conn.as_ptr(),
                std::ptr::null_mut(),
                c_int::try_from(sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE).unwrap_or(0),
                Some(std::mem::transmute::<
                    unsafe extern "C" fn(
                        sys::virConnectPtr,
                        sys::virDomainPtr,
                        c_int,
                        c_int,
                        *mut c_void,
                    ) -> c_int,
                    unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void),
                >(cb)),
                opaque,
                Some(free_sender),
            )
        };
        if id < 0 {
            // SAFETY: registration failed, so libvirt did not take ownership of `opaque`.
            drop(unsafe { Box::from_raw(opaque.cast::<Sender>()) });
            return Err(LibvirtError {
                what: "register for domain lifecycle events".into(),
                source: virt::error::Error::last_error(),
            });
        }
        self.callback = Some(id);
        Ok(rx)
    }

    /// Undefine every defined domain that is not running: before a new definition of the
    /// pod's one domain (libvirt made up the old one's UUID, so a definition without
    /// that UUID is refused while it exists).
    pub fn undefine_inactive(&self) -> Result<(), LibvirtError> {
        let flags =
            sys::VIR_CONNECT_LIST_DOMAINS_INACTIVE | sys::VIR_CONNECT_LIST_DOMAINS_PERSISTENT;
        let stale = lv(
            || "list the inactive domains".into(),
            self.conn.list_all_domains(flags),
        )?;
        for dom in stale {
            let name = dom.name().unwrap_or_default();
            lv(|| format!("undefine domain {name}"), dom.undefine())?;
        }
        Ok(())
    }

    /// Define the domain from `xml` and start it.
    pub fn define_and_start(&self, xml: &str) -> Result<RunningDomain, LibvirtError> {
        let domain = lv(
            || "define the domain".into(),
            self.conn.define_domain_xml(xml),
        )?;
        let name = domain.name().unwrap_or_default();
        lv(|| format!("start domain {name}"), domain.create())?;
        Ok(RunningDomain { domain, name })
    }
}

impl RunningDomain {
    /// `r`, its error naming what failed: `<verb> domain <name>`.
    fn lv<T>(&self, verb: &str, r: Result<T, virt::error::Error>) -> Result<T, LibvirtError> {
        lv(|| format!("{verb} domain {}", self.name), r)
    }

    /// Ask the guest to power off (ACPI power button).
    pub fn shutdown(&self) -> Result<(), LibvirtError> {
        self.lv("shut down", self.domain.shutdown())
    }

    /// Stop QEMU now.
    pub fn destroy(&self) -> Result<(), LibvirtError> {
        self.lv("destroy", self.domain.destroy())
    }

    pub fn pause(&self) -> Result<(), LibvirtError> {
        self.lv("pause", self.domain.suspend())
    }

    pub fn resume(&self) -> Result<(), LibvirtError> {
        self.lv("resume", self.domain.resume())
    }

    /// The live domain XML as libvirt holds it.
    pub fn xml(&self) -> Result<String, LibvirtError> {
        self.lv("get the XML of", self.domain.xml_desc(0))
    }

    /// True while QEMU runs the domain.
    pub fn is_active(&self) -> Result<bool, LibvirtError> {
        self.lv("query", self.domain.is_active())
    }

    /// Remove the persistent definition (the private libvirtd dies with the pod anyway).
    pub fn undefine(&self) -> Result<(), LibvirtError> {
        self.lv("undefine", self.domain.undefine())
    }
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        if let Some(id) = self.callback.take() {
            // SAFETY: `id` came from virConnectDomainEventRegisterAny on this connection.
            unsafe { sys::virConnectDomainEventDeregisterAny(self.conn.as_ptr(), id) };
        }
    }
}

type Sender = mpsc::UnboundedSender<(String, DomainEvent)>;

unsafe extern "C" fn lifecycle_cb(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    // SAFETY: `dom` is valid for the duration of the callback; virDomainGetName returns
    // a string owned by the domain object.
    let name = unsafe {
        let p = sys::virDomainGetName(dom);
        if p.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    // SAFETY: `opaque` is the `Sender` boxed in `subscribe`, alive until `free_sender`.
    let tx = unsafe { &*opaque.cast::<Sender>() };
    let _ = tx.send((name, event_of(event, detail)));
    0
}

unsafe extern "C" fn free_sender(opaque: *mut c_void) {
    // SAFETY: libvirt calls this once, with the pointer boxed in `subscribe`.
    drop(unsafe { Box::from_raw(opaque.cast::<Sender>()) });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_mapping() {
        let c = |v: u32| i32::try_from(v).unwrap();
        assert_eq!(
            event_of(c(sys::VIR_DOMAIN_EVENT_STARTED), 0),
            DomainEvent::Started
        );
        assert_eq!(
            event_of(
                c(sys::VIR_DOMAIN_EVENT_STOPPED),
                c(sys::VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN)
            ),
            DomainEvent::Stopped(StopReason::Shutdown)
        );
        assert_eq!(
            event_of(
                c(sys::VIR_DOMAIN_EVENT_STOPPED),
                c(sys::VIR_DOMAIN_EVENT_STOPPED_CRASHED)
            ),
            DomainEvent::Stopped(StopReason::Crashed)
        );
        assert_eq!(
            event_of(99, 1),
            DomainEvent::Other {
                event: 99,
                detail: 1
            }
        );
    }

    #[test]
    fn paused_reasons() {
        use PausedReason::*;
        let c = |v: u32| i32::try_from(v).unwrap();
        for (reason, want) in [
            (sys::VIR_DOMAIN_PAUSED_USER, User),
            (sys::VIR_DOMAIN_PAUSED_IOERROR, IoError),
            (sys::VIR_DOMAIN_PAUSED_CRASHED, Crashed),
            (sys::VIR_DOMAIN_PAUSED_UNKNOWN, Unknown),
            (sys::VIR_DOMAIN_PAUSED_SAVE, Operation),
        ] {
            assert_eq!(paused_reason_of(reason), want, "{reason}");
        }
        // The event's detail alone: a plain PAUSED cannot tell a user from a KVM failure.
        let ev = |d: u32| event_of(c(sys::VIR_DOMAIN_EVENT_SUSPENDED), c(d));
        assert_eq!(
            ev(sys::VIR_DOMAIN_EVENT_SUSPENDED_PAUSED),
            DomainEvent::Paused(Unknown)
        );
        assert_eq!(
            ev(sys::VIR_DOMAIN_EVENT_SUSPENDED_IOERROR),
            DomainEvent::Paused(IoError)
        );
    }

    #[test]
    fn uri_names_the_socket() {
        assert_eq!(
            socket_uri(Path::new("/run/vmpod/libvirt/run/libvirt-sock")),
            "qemu+unix:///session?socket=/run/vmpod/libvirt/run/libvirt-sock"
        );
    }
}
