//! The launcher's libvirt client as a child process of its own, `vmpod-virt`: the
//! protocol between them and the launcher's side of it ([`VirtAgent`]). The agent's
//! side (`serve`) and libvirt itself live in the vmpod-virt crate (launcher/virt), so
//! neither this library nor the launcher links libvirt.
//!
//! Linking libvirt maps libvirt.so and its ~50 dependencies (gnutls, glib, libxml2, krb5,
//! curl, ICU, ...): about 11 MiB of RSS before the first call. The launcher, which owns
//! the pod network, the DHCP server and the control API for the pod's whole life, does
//! not link it; it runs `vmpod-virt`, which holds the one libvirt connection and speaks JSON lines on its stdin and stdout:
//!
//! - launcher -> agent: one [`Request`] per line, answered in order;
//! - agent -> launcher: [`Message::Reply`] for each request, and [`Message::Event`] for
//!   every domain lifecycle event, interleaved.
//!
//! The agent exits when its stdin closes (and, through the parent-death signal, when the
//! launcher dies). A libvirt call that crashes or hangs takes down the agent, never the
//! DHCP server or the control API; the launcher sees the agent's exit as the end of the
//! event stream.

use super::events::DomainEvent;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

/// The agent binary's name; the launcher finds it beside its own executable.
pub const AGENT_BINARY: &str = "vmpod-virt";
/// Overrides where the launcher looks for the agent.
pub const AGENT_ENV: &str = "VMPOD_VIRT";

/// What the launcher asks of the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Request {
    /// Connect, subscribe to lifecycle events, define the domain and start it. First;
    /// again once the domain stopped, to boot it with a new definition (the same
    /// connection and event stream).
    DefineAndStart {
        xml: String,
    },
    Shutdown,
    Destroy,
    Pause,
    Resume,
    Xml,
    IsActive,
    Undefine,
}

impl Request {
    /// The operation's name, for messages (without the XML).
    pub fn op(&self) -> &'static str {
        match self {
            Request::DefineAndStart { .. } => "defineAndStart",
            Request::Shutdown => "shutdown",
            Request::Destroy => "destroy",
            Request::Pause => "pause",
            Request::Resume => "resume",
            Request::Xml => "xml",
            Request::IsActive => "isActive",
            Request::Undefine => "undefine",
        }
    }

    /// How long the launcher waits for the answer (queueing behind another call
    /// included) before it kills the agent. Sized to what libvirt does: starting a
    /// domain can take tens of seconds when libvirtd first probes QEMU (an unusable
    /// /dev/kvm makes it re-probe for ~48 s); destroy is SIGTERM then SIGKILL to QEMU
    /// and is cut at [`DESTROY_TIMEOUT`] so a teardown that starts when the VMI's grace
    /// runs out fits in the 15 s kubelet adds; the rest are quick monitor or libvirtd
    /// calls.
    pub fn timeout(&self) -> std::time::Duration {
        match self {
            Request::DefineAndStart { .. } => START_TIMEOUT,
            Request::Destroy => DESTROY_TIMEOUT,
            Request::Shutdown
            | Request::Pause
            | Request::Resume
            | Request::Xml
            | Request::IsActive
            | Request::Undefine => QUICK_TIMEOUT,
        }
    }
}

/// See [`Request::timeout`].
pub const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
/// See [`Request::timeout`]: at most 15 s (the grace kubelet adds to the VMI's), less
/// what the rest of the teardown (daemons, network) needs.
pub const DESTROY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// See [`Request::timeout`].
pub const QUICK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A successful answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", content = "value", rename_all = "camelCase")]
pub enum Answer {
    Done,
    /// The name of the domain defined and started.
    Started(String),
    Xml(String),
    Active(bool),
}

/// One line from the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Message {
    Reply { result: Result<Answer, String> },
    Event { domain: String, event: DomainEvent },
}

/// The agent failed, or said a call failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("start {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the libvirt agent ({AGENT_BINARY}) is gone: {0}")]
    Gone(String),
    #[error("{0}")]
    Call(String),
}

/// Where the agent is: `$VMPOD_VIRT`, else beside `launcher_exe`, else on PATH.
pub fn agent_binary(launcher_exe: Option<&Path>) -> PathBuf {
    locate_agent(std::env::var_os(AGENT_ENV), launcher_exe)
}

/// [`agent_binary`] with the value of `$VMPOD_VIRT` given (empty counts as unset).
fn locate_agent(env: Option<std::ffi::OsString>, launcher_exe: Option<&Path>) -> PathBuf {
    if let Some(p) = env.filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    beside(launcher_exe, AGENT_BINARY).unwrap_or_else(|| PathBuf::from(AGENT_BINARY))
}

/// The file `name` in the directory of `exe` (the running launcher), if it is there:
/// where the pod's helpers (`vmpod-virt`, the preload library) ship.
pub(crate) fn beside(exe: Option<&Path>, name: &str) -> Option<PathBuf> {
    exe.and_then(Path::parent)
        .map(|d| d.join(name))
        .filter(|p| p.is_file())
}

/// The launcher's side: a running agent.
pub struct VirtAgent {
    child: Child,
    pid: Option<u32>,
    /// A cap on every call's own [`Request::timeout`] (tests shorten it).
    call_timeout: std::time::Duration,
    /// Requests are answered in order: one call at a time holds both ends.
    io: tokio::sync::Mutex<(ChildStdin, mpsc::UnboundedReceiver<Result<Answer, String>>)>,
    /// Killed after a call went unanswered: later calls fail at once.
    killed: std::sync::atomic::AtomicBool,
}

/// Domain lifecycle events, (domain name, event); ends when the agent exits.
pub type Events = mpsc::UnboundedReceiver<(String, DomainEvent)>;

impl VirtAgent {
    /// Start `binary --socket <libvirtd socket>`. It loads libvirt while libvirtd starts;
    /// nothing connects until [`VirtAgent::define_and_start`].
    /// Start the agent as `user` (the daemons' user: libvirtd's session socket is that
    /// user's).
    pub fn spawn(
        binary: &Path,
        socket: &Path,
        user: super::daemons::RunAs,
    ) -> Result<(VirtAgent, Events), AgentError> {
        let mut cmd = Command::new(binary);
        cmd.arg("--socket")
            .arg(socket)
            .envs(super::daemons::lean_env(false))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: `enter` makes only async-signal-safe syscalls on data prepared before
        // the fork and touches no state of the parent.
        unsafe {
            cmd.pre_exec(move || user.enter());
        }
        let spawn_err = |source| AgentError::Spawn {
            binary: binary.to_path_buf(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(spawn_err(io::Error::other("no pipes")));
        };
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let (reply_tx, reply_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<Message>(&line) {
                    Ok(Message::Event { domain, event }) => drop(ev_tx.send((domain, event))),
                    Ok(Message::Reply { result }) => drop(reply_tx.send(result)),
                    Err(e) => tracing::warn!("libvirt agent said {line:?}: {e}"),
                }
            }
        });
        Ok((
            VirtAgent {
                pid: child.id(),
                child,
                call_timeout: std::time::Duration::MAX,
                io: tokio::sync::Mutex::new((stdin, reply_rx)),
                killed: std::sync::atomic::AtomicBool::new(false),
            },
            ev_rx,
        ))
    }

    /// Send `req` and wait for its answer, at most [`Request::timeout`] (waiting for an
    /// earlier call included). Unanswered in time, the agent is killed: a late answer
    /// would be taken for the next call's, and a stuck libvirt call must not stall the
    /// launcher.
    pub async fn call(&self, req: &Request) -> Result<Answer, AgentError> {
        use std::sync::atomic::Ordering;
        if self.killed.load(Ordering::Relaxed) {
            return Err(AgentError::Gone(format!(
                "killed after an earlier call went unanswered; not sending {}",
                req.op()
            )));
        }
        let limit = req.timeout().min(self.call_timeout);
        let exchange = async {
            let mut io = self.io.lock().await;
            let (stdin, replies) = &mut *io;
            let mut line = serde_json::to_vec(req).map_err(|e| AgentError::Call(e.to_string()))?;
            line.push(b'\n');
            stdin
                .write_all(&line)
                .await
                .map_err(|e| AgentError::Gone(e.to_string()))?;
            match replies.recv().await {
                Some(r) => r.map_err(AgentError::Call),
                None => Err(AgentError::Gone("it exited".into())),
            }
        };
        match tokio::time::timeout(limit, exchange).await {
            Ok(r) => r,
            Err(_) => {
                self.killed.store(true, Ordering::Relaxed);
                if let Some(pid) = self.pid.and_then(|p| i32::try_from(p).ok()) {
                    // SAFETY: kill(2) on our own child's pid.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                Err(AgentError::Gone(format!(
                    "no answer to {} within {limit:?}; killed it",
                    req.op()
                )))
            }
        }
    }

    /// Define and start the domain; its name.
    pub async fn define_and_start(&self, xml: &str) -> Result<String, AgentError> {
        match self
            .call(&Request::DefineAndStart {
                xml: xml.to_string(),
            })
            .await?
        {
            Answer::Started(name) => Ok(name),
            other => Err(AgentError::Call(format!("unexpected answer {other:?}"))),
        }
    }

    /// A call answered with [`Answer::Done`].
    pub async fn act(&self, req: Request) -> Result<(), AgentError> {
        self.call(&req).await.map(drop)
    }

    pub async fn is_active(&self) -> Result<bool, AgentError> {
        match self.call(&Request::IsActive).await? {
            Answer::Active(a) => Ok(a),
            other => Err(AgentError::Call(format!("unexpected answer {other:?}"))),
        }
    }

    /// Close its stdin and wait for it to exit (killing it after `grace`).
    pub async fn stop(mut self, grace: std::time::Duration) {
        drop(self.io);
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!("the libvirt agent did not exit within {grace:?}; killing it");
            let _ = self.child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{PausedReason, StopReason};

    fn j<T: Serialize>(v: &T) -> String {
        serde_json::to_string(v).unwrap()
    }

    #[test]
    fn wire_format_is_stable() {
        assert_eq!(
            j(&Request::DefineAndStart { xml: "<d/>".into() }),
            r#"{"op":"defineAndStart","xml":"<d/>"}"#
        );
        assert_eq!(j(&Request::IsActive), r#"{"op":"isActive"}"#);
        for r in [
            Request::DefineAndStart { xml: String::new() },
            Request::Shutdown,
            Request::Destroy,
            Request::Pause,
            Request::Resume,
            Request::Xml,
            Request::IsActive,
            Request::Undefine,
        ] {
            assert!(
                j(&r).starts_with(&format!(r#"{{"op":"{}""#, r.op())),
                "{r:?}"
            );
        }
        assert_eq!(
            j(&Message::Reply {
                result: Ok(Answer::Started("default_vm".into()))
            }),
            r#"{"kind":"reply","result":{"Ok":{"answer":"started","value":"default_vm"}}}"#
        );
        assert_eq!(
            j(&Message::Reply {
                result: Err("boom".into())
            }),
            r#"{"kind":"reply","result":{"Err":"boom"}}"#
        );
        assert_eq!(
            j(&Message::Event {
                domain: "d".into(),
                event: DomainEvent::Stopped(StopReason::Shutdown)
            }),
            r#"{"kind":"event","domain":"d","event":{"stopped":"shutdown"}}"#
        );
    }

    #[test]
    fn agent_binary_prefers_the_env_then_the_launcher_dir() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("vmpod-launcher");
        let beside = dir.path().join(AGENT_BINARY);
        let env = |v: &str| Some(std::ffi::OsString::from(v));
        // Not beside the launcher: PATH lookup by name; the env wins whenever set.
        assert_eq!(locate_agent(None, Some(&exe)), PathBuf::from(AGENT_BINARY));
        assert_eq!(
            locate_agent(env(""), Some(&exe)),
            PathBuf::from(AGENT_BINARY)
        );
        assert_eq!(
            locate_agent(env("/opt/virt"), Some(&exe)),
            PathBuf::from("/opt/virt")
        );
        std::fs::write(&beside, "").unwrap();
        assert_eq!(locate_agent(None, Some(&exe)), beside);
        assert_eq!(locate_agent(env(""), Some(&exe)), beside);
        assert_eq!(
            locate_agent(env("/opt/virt"), Some(&exe)),
            PathBuf::from("/opt/virt")
        );
        assert_eq!(locate_agent(None, None), PathBuf::from(AGENT_BINARY));
    }

    /// The launcher's side against a stand-in agent (a shell script speaking the same
    /// lines): events and replies are told apart, errors come back as errors, and an
    /// agent that exits ends the event stream and fails the next call.
    #[tokio::test]
    async fn launcher_side_routes_replies_and_events_and_sees_the_agent_go() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("fake-virt");
        std::fs::write(
            &script,
            r#"#!/bin/sh
[ "$1" = --socket ] || exit 3
while read -r line; do
  case "$line" in
    *isActive*)
      echo '{"kind":"event","domain":"d","event":{"paused":"user"}}'
      echo '{"kind":"reply","result":{"Ok":{"answer":"active","value":true}}}' ;;
    *pause*) echo '{"kind":"reply","result":{"Err":"libvirt: pause domain d: boom"}}' ;;
    *shutdown*) exit 0 ;;
  esac
done
"#,
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (agent, mut events) = VirtAgent::spawn(
            &script,
            Path::new("/x/libvirt-sock"),
            crate::domain::daemons::RunAs::current(),
        )
        .unwrap();
        assert!(agent.is_active().await.unwrap());
        assert_eq!(
            events.recv().await,
            Some(("d".to_string(), DomainEvent::Paused(PausedReason::User)))
        );
        match agent.act(Request::Pause).await {
            Err(AgentError::Call(e)) => assert!(e.contains("boom"), "{e}"),
            other => panic!("{other:?}"),
        }
        // The stand-in exits on shutdown without answering.
        match agent.act(Request::Shutdown).await {
            Err(AgentError::Gone(_)) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(
            events.recv().await,
            None,
            "the event stream ends with the agent"
        );
        assert!(matches!(
            agent.act(Request::Resume).await,
            Err(AgentError::Gone(_))
        ));
        agent.stop(std::time::Duration::from_secs(5)).await;
    }

    /// An agent that never answers (a stand-in that only sleeps): the call gives up after
    /// the call timeout (1 s here instead of the call's own [`Request::timeout`]), fails naming the
    /// operation, and the agent is killed, so its event stream ends.
    #[tokio::test]
    async fn an_unanswered_call_times_out_and_the_agent_is_killed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("hung-virt");
        std::fs::write(&script, "#!/bin/sh\nexec sleep 1000\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (mut agent, mut events) = VirtAgent::spawn(
            &script,
            Path::new("/x/libvirt-sock"),
            crate::domain::daemons::RunAs::current(),
        )
        .unwrap();
        agent.call_timeout = std::time::Duration::from_secs(1);
        let asked = std::time::Instant::now();
        let answer = tokio::time::timeout(std::time::Duration::from_secs(30), agent.is_active())
            .await
            .expect("the call did not time out within 30 s");
        match answer {
            Err(AgentError::Gone(e)) => {
                assert_eq!(e, "no answer to isActive within 1s; killed it");
            }
            other => panic!("{other:?}"),
        }
        assert!(asked.elapsed() >= agent.call_timeout);
        // The killed agent's stdout closes, which ends the events.
        let end = tokio::time::timeout(std::time::Duration::from_secs(10), events.recv()).await;
        assert_eq!(end, Ok(None), "the agent is still alive after the timeout");
        agent.stop(std::time::Duration::from_secs(5)).await;
    }
}
