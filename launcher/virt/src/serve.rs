//! The agent's side of `vmpod::domain::agent`'s protocol: requests as JSON lines on
//! stdin, answered in order on stdout, with domain lifecycle events interleaved.

use crate::libvirt::{Libvirt, RunningDomain, paused_reason};
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use vmpod::domain::DomainEvent;
use vmpod::domain::PausedReason;
use vmpod::domain::agent::{Answer, Message, Request};

/// The agent's side: read requests from `input` until it closes, answer them on `output`,
/// and forward lifecycle events there as they come.
pub fn serve(socket: &Path, input: impl BufRead, output: impl Write + Send + 'static) {
    let output = Arc::new(Mutex::new(output));
    // The connection outlives a start that fails (the launcher may start the domain
    // again, e.g. under TCG); the domain handle is the last one started.
    let mut conn: Option<Libvirt> = None;
    let mut domain: Option<RunningDomain> = None;
    for line in input.lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        let result = match serde_json::from_str::<Request>(&line) {
            Err(e) => Err(format!("bad request {line:?}: {e}")),
            Ok(Request::DefineAndStart { xml }) => {
                let lv = match conn {
                    // Again: the domain stopped or failed to start; its old definition
                    // goes first.
                    Some(ref lv) => lv
                        .undefine_inactive()
                        .map(|()| lv)
                        .map_err(|e| e.to_string()),
                    None => connect(socket, &output).map(|lv| &*conn.insert(lv)),
                };
                lv.and_then(|lv| lv.define_and_start(&xml).map_err(|e| e.to_string()))
                    .map(|d| Answer::Started(domain.insert(d).name.clone()))
            }
            Ok(req) => match &domain {
                None => Err("no domain: DefineAndStart first".into()),
                Some(dom) => call(dom, &req),
            },
        };
        send(&output, &Message::Reply { result });
    }
    tracing::debug!("stdin closed: the libvirt agent exits");
}

/// Write one message line. The launcher reading the other end is the only consumer; if
/// it is gone, so is the point of writing.
fn send<W: Write>(out: &Mutex<W>, msg: &Message) {
    let mut line = serde_json::to_vec(msg).unwrap_or_default();
    line.push(b'\n');
    let mut w = out.lock().unwrap_or_else(|p| p.into_inner());
    let _ = w.write_all(&line).and_then(|()| w.flush());
}

/// Connect and forward lifecycle events from then on.
fn connect<W: Write + Send + 'static>(
    socket: &Path,
    output: &Arc<Mutex<W>>,
) -> Result<Libvirt, String> {
    let mut lv = Libvirt::connect(socket).map_err(|e| e.to_string())?;
    let mut events = lv.subscribe().map_err(|e| e.to_string())?;
    let out = Arc::clone(output);
    let conn = lv.conn().clone();
    std::thread::Builder::new()
        .name("events".into())
        .spawn(move || {
            while let Some((domain, mut event)) = events.blocking_recv() {
                // The event's detail cannot tell a user's pause from a KVM failure;
                // libvirt's state reason can.
                if let DomainEvent::Paused(from_detail) = event {
                    event = DomainEvent::Paused(match paused_reason(&conn, &domain) {
                        PausedReason::Unknown => from_detail,
                        known => known,
                    });
                }
                send(&out, &Message::Event { domain, event });
            }
        })
        .map_err(|e| format!("spawn the event thread: {e}"))?;
    Ok(lv)
}

fn call(dom: &RunningDomain, req: &Request) -> Result<Answer, String> {
    let done = |r: Result<(), crate::libvirt::LibvirtError>| {
        r.map(|()| Answer::Done).map_err(|e| e.to_string())
    };
    match req {
        Request::DefineAndStart { .. } => Err("defineAndStart is not a call on a domain".into()),
        Request::Shutdown => done(dom.shutdown()),
        Request::Destroy => done(dom.destroy()),
        Request::Pause => done(dom.pause()),
        Request::Resume => done(dom.resume()),
        Request::Undefine => done(dom.undefine()),
        Request::Xml => dom.xml().map(Answer::Xml).map_err(|e| e.to_string()),
        Request::IsActive => dom
            .is_active()
            .map(Answer::Active)
            .map_err(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn requests_before_a_domain_and_garbage_are_answered_with_errors() {
        let input = b"{\"op\":\"pause\"}\n\nnot json\n".as_slice();
        let out = Arc::new(Mutex::new(Vec::new()));
        serve(Path::new("/nonexistent"), input, Shared(Arc::clone(&out)));
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        let msgs: Vec<Message> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(msgs.len(), 2, "{text}");
        let err = |m: &Message| match m {
            Message::Reply { result: Err(e) } => e.clone(),
            other => panic!("{other:?}"),
        };
        assert!(err(&msgs[0]).contains("DefineAndStart first"), "{text}");
        assert!(err(&msgs[1]).contains("bad request"), "{text}");
    }

    /// A writer into a shared buffer, so the test can read what `serve` wrote.
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
}
