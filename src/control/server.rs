//! The control server: accepts on `control.sock`, parses each request into an
//! [`Action`], asks the [`Backend`] and writes JSON. It owns the socket file and the HTTP
//! connections and bounds them ([`Limits`]): a request's headers and body must arrive in
//! time, and at most so many connections are served at once (beyond that, a new one is
//! closed at once). A followed or attached console is long-lived by design: once its
//! request is in, no timeout applies, and an attached console leaves the count. VM state
//! belongs to the backend (the launcher).

use super::action::{self, Action, ApiError, LifecycleAction, RequestParts, StatusWait};
use super::types::{ErrorBody, LauncherStatus, NetworkReport};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

/// Largest request body accepted (the only body is `POST /v1/shutdown`'s).
const MAX_BODY: usize = 64 * 1024;
/// How often a followed console log is checked for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// How long open connections get to finish after shutdown before they are dropped.
const DRAIN: Duration = Duration::from_secs(2);

/// How long clients get and how many are served at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A request's headers must be in within this (also a keep-alive connection's next
    /// request); otherwise the connection is closed.
    pub header_timeout: Duration,
    /// A request's body must be in within this once its headers are; otherwise 400.
    pub body_timeout: Duration,
    /// Connections served at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_connections: 32,
        }
    }
}

/// A failure the backend reports; the server answers 409 or 500 with its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The action does not fit the VM's state (e.g. resume while running).
    #[error("{0}")]
    Conflict(String),
    /// Something failed while doing it (libvirt, a file, a daemon).
    #[error("{0}")]
    Failed(String),
}

impl From<super::types::Conflict> for BackendError {
    fn from(c: super::types::Conflict) -> Self {
        BackendError::Conflict(c.to_string())
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Conflict(m) => ApiError::Conflict(m),
            BackendError::Failed(m) => ApiError::Internal(m),
        }
    }
}

/// What the launcher provides to the control API.
pub trait Backend: Send + Sync + 'static {
    fn status(&self) -> impl Future<Output = Result<LauncherStatus, BackendError>> + Send;
    /// The status's version, told of each change ([`StatusVersion::subscribe`]): the
    /// `ETag` of `GET /v1/status` and what its long poll waits on.
    fn status_version(&self) -> watch::Receiver<u64>;
    fn network(&self) -> impl Future<Output = Result<NetworkReport, BackendError>> + Send;
    /// The libvirt domain XML as defined.
    fn domain_xml(&self) -> impl Future<Output = Result<String, BackendError>> + Send;
    /// Do `action` to the domain. Shutdown returns once requested; the rest once done.
    fn lifecycle(
        &self,
        action: LifecycleAction,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// The serial console's log file (`<state-dir>/console.log`).
    fn console_log(&self) -> PathBuf;
    /// The serial console's unix socket (`<state-dir>/console.sock`, libvirt's).
    fn console_socket(&self) -> PathBuf;
}

/// The version of a backend's status. Bump it after each change, once the change is what
/// [`Backend::status`] returns: a reader takes the version first and the status after, so
/// the status it gets is never older than the version it tags it with. It starts at the
/// clock's nanoseconds, so a restarted launcher does not reuse a version a client saw.
#[derive(Debug)]
pub struct StatusVersion(watch::Sender<u64>);

impl Default for StatusVersion {
    fn default() -> Self {
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX / 2));
        StatusVersion(watch::Sender::new(start))
    }
}

impl StatusVersion {
    pub fn bump(&self) {
        self.0.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

/// Failures of the server itself (not of a request).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("binding control socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("accepting on control socket {path}: {source}")]
    Accept { path: PathBuf, source: io::Error },
}

/// A bound control socket, mode 0600, not yet serving.
#[derive(Debug)]
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    limits: Limits,
}

type Body = BoxBody<Bytes, io::Error>;

impl ControlServer {
    /// Bind `path` with mode 0600. The socket is created under a temporary name, chmod'ed
    /// and renamed into place, so no client ever sees it with looser permissions. A stale
    /// socket at `path` is replaced. Must be called inside a tokio runtime.
    pub fn bind(path: &Path) -> Result<Self, ServerError> {
        let err = |source| ServerError::Bind {
            path: path.to_path_buf(),
            source,
        };
        let file_name = path
            .file_name()
            .ok_or_else(|| err(io::Error::other("not a file path")))?;
        let tmp = path.with_file_name(format!(
            ".{}.{}.tmp",
            file_name.to_string_lossy(),
            std::process::id()
        ));
        let _ = std::fs::remove_file(&tmp);
        let listener = UnixListener::bind(&tmp).map_err(err)?;
        let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(e));
        }
        Ok(ControlServer {
            listener,
            path: path.to_path_buf(),
            limits: Limits::default(),
        })
    }

    /// Serve with `limits` instead of [`Limits::default`].
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serve `backend` until `shutdown` resolves, then stop accepting, let open
    /// connections finish (followed consoles end, attached consoles are closed) for up
    /// to two seconds, and remove the socket file.
    pub async fn serve<B: Backend>(
        self,
        backend: Arc<B>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServerError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut conns = JoinSet::new();
        let slots = Arc::new(Semaphore::new(self.limits.max_connections));
        tokio::pin!(shutdown);
        let result = loop {
            tokio::select! {
                () = &mut shutdown => break Ok(()),
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => match slots.clone().try_acquire_owned() {
                        Ok(slot) => {
                            let (b, s, l) = (backend.clone(), stop_rx.clone(), self.limits);
                            conns.spawn(serve_connection(stream, b, s, l, slot));
                        }
                        Err(_) => tracing::warn!(
                            "{}: {} connections open; closing a new one",
                            self.path.display(),
                            self.limits.max_connections
                        ),
                    },
                    Err(e) if is_transient(&e) => {
                        tracing::warn!("accepting on {}: {e}; retrying", self.path.display());
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(source) => break Err(ServerError::Accept { path: self.path.clone(), source }),
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        };
        let _ = stop_tx.send(true);
        let _ =
            tokio::time::timeout(DRAIN, async { while conns.join_next().await.is_some() {} }).await;
        conns.shutdown().await;
        let _ = std::fs::remove_file(&self.path);
        result
    }
}

/// Accept errors that pass: out of file descriptors, a client that gave up, a signal.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::ECONNABORTED
                | libc::EINTR
        )
    )
}

/// One connection, holding its `slot` until it ends (or is upgraded to a console).
async fn serve_connection<B: Backend>(
    stream: UnixStream,
    backend: Arc<B>,
    mut stop: watch::Receiver<bool>,
    limits: Limits,
    slot: OwnedSemaphorePermit,
) {
    let stop_for_requests = stop.clone();
    let service = hyper::service::service_fn(move |req| {
        let backend = backend.clone();
        let stop = stop_for_requests.clone();
        async move {
            let resp = handle(req, backend, stop, limits.body_timeout).await;
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let _slot = slot;
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => return log_conn_end(r),
        _ = stop.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
    }
    log_conn_end(conn.await);
}

fn log_conn_end(r: Result<(), hyper::Error>) {
    if let Err(e) = r {
        tracing::debug!("control connection ended: {e}");
    }
}

/// One request, start to end: parse, act, respond.
async fn handle<B: Backend>(
    req: Request<Incoming>,
    backend: Arc<B>,
    stop: watch::Receiver<bool>,
    body_timeout: Duration,
) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let result = async {
        let upgrade = upgrade_protocol(req.headers()).map(str::to_string);
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .map(str::to_string)
        };
        let (if_none_match, prefer) = (header("if-none-match"), header("prefer"));
        let query = req.uri().query().map(str::to_string);
        let (parts, body) = req.into_parts();
        let body = read_body(body, &path, body_timeout).await?;
        let action = action::parse(RequestParts {
            method: &parts.method,
            path: &path,
            query: query.as_deref(),
            upgrade: upgrade.as_deref(),
            if_none_match: if_none_match.as_deref(),
            prefer: prefer.as_deref(),
            body: &body,
        })?;
        tracing::debug!(?action, "control request");
        act(action, Request::from_parts(parts, ()), backend, stop).await
    }
    .await;
    result.unwrap_or_else(|e| {
        tracing::info!("{method} {path}: {} {e}", e.status().as_u16());
        error_response(&e)
    })
}

async fn act<B: Backend>(
    action: Action,
    req: Request<()>,
    backend: Arc<B>,
    stop: watch::Receiver<bool>,
) -> Result<Response<Body>, ApiError> {
    match action {
        Action::GetStatus { wait } => status(&*backend, wait, stop).await,
        Action::GetNetwork => json(&backend.network().await?),
        Action::GetDomain => Ok(bytes_response(
            StatusCode::OK,
            "application/xml",
            backend.domain_xml().await?.into(),
        )),
        Action::Lifecycle(l) => {
            backend.lifecycle(l).await?;
            Ok(empty_response(StatusCode::NO_CONTENT))
        }
        Action::GetConsole { follow: false } => {
            let log = backend.console_log();
            let content = match tokio::fs::read(&log).await {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
                Err(e) => {
                    return Err(ApiError::Internal(format!(
                        "reading {}: {e}",
                        log.display()
                    )));
                }
            };
            Ok(bytes_response(
                StatusCode::OK,
                "application/octet-stream",
                content.into(),
            ))
        }
        Action::GetConsole { follow: true } => Ok(follow_console(backend, stop)),
        Action::AttachConsole => attach_console(req, backend.console_socket(), stop).await,
    }
}

/// `GET /v1/status`, tagged with its version (`ETag`). A long poll ([`StatusWait`]) is
/// answered once the version is not the one the client saw, `304` when it still is at the
/// end of the wait; the server stopping answers it at once.
async fn status<B: Backend>(
    backend: &B,
    wait: Option<StatusWait>,
    mut stop: watch::Receiver<bool>,
) -> Result<Response<Body>, ApiError> {
    let mut version = backend.status_version();
    if let Some(w) = wait {
        let deadline = tokio::time::sleep(Duration::from_secs(w.seconds.into()));
        tokio::pin!(deadline);
        while *version.borrow_and_update() == w.seen {
            tokio::select! {
                changed = version.changed() => if changed.is_err() { break },
                _ = stop.wait_for(|s| *s) => break,
                () = &mut deadline => {
                    let mut resp = empty_response(StatusCode::NOT_MODIFIED);
                    resp.headers_mut().insert(header::ETAG, etag(w.seen));
                    return Ok(resp);
                }
            }
        }
    }
    let tag = etag(*version.borrow());
    let mut resp = json(&backend.status().await?)?;
    resp.headers_mut().insert(header::ETAG, tag);
    Ok(resp)
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&action::etag(version)).expect("digits and quotes make a header")
}

/// `GET /v1/console?follow=true`: the log so far, then new output as it is written,
/// until the VM reaches a terminal phase, the server stops, or the client goes away.
fn follow_console<B: Backend>(backend: Arc<B>, stop: watch::Receiver<bool>) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, io::Error>>(8);
    tokio::spawn(async move {
        if let Err(e) = tail(&*backend, &tx, stop).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    let mut resp = Response::new(ChannelBody(rx).boxed());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp
}

/// A response body fed by a channel: each received chunk is one data frame.
struct ChannelBody(tokio::sync::mpsc::Receiver<Result<Bytes, io::Error>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|item| item.map(|r| r.map(Frame::data)))
    }
}

/// Send what is in the console log and what gets appended to it into `tx`. Each pass
/// reads the open log to its end; the pass after the VM is seen finished (or the server
/// stopping) is the last, so no output written before the end is lost. A rotation
/// renames the log and opens a new one (see [`super::console_log`]): once the path leads
/// to another file, the old one is read to its end (nothing is written to it after the
/// rename) and the new one followed from its start.
async fn tail<B: Backend>(
    backend: &B,
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, io::Error>>,
    stop: watch::Receiver<bool>,
) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let log = backend.console_log();
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", log.display()));
    let mut open: Option<(tokio::fs::File, u64)> = None;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let last_pass =
            *stop.borrow() || backend.status().await.is_ok_and(|s| s.phase.is_terminal());
        loop {
            let now = match tokio::fs::metadata(&log).await {
                Ok(m) => Some(m.ino()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(named(e)),
            };
            if let Some((file, _)) = &mut open {
                // The rest of the open file, replaced or not.
                loop {
                    let n = file.read(&mut buf).await.map_err(named)?;
                    if n == 0 {
                        break;
                    }
                    if tx
                        .send(Ok(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        return Ok(()); // the client went away
                    }
                }
            }
            if now.is_none() || open.as_ref().map(|(_, ino)| *ino) == now {
                break;
            }
            // First open, or the log was rotated: follow the file at the path now.
            open = match tokio::fs::File::open(&log).await {
                Ok(f) => {
                    let ino = f.metadata().await.map_err(named)?.ino();
                    Some((f, ino))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(named(e)),
            };
        }
        if last_pass || tx.is_closed() {
            return Ok(());
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
}

/// Answer 101 and proxy the upgraded connection to the serial console socket. The
/// console socket is connected first, so a missing console is a 500, not a dead stream.
async fn attach_console(
    req: Request<()>,
    socket: PathBuf,
    mut stop: watch::Receiver<bool>,
) -> Result<Response<Body>, ApiError> {
    let mut serial = UnixStream::connect(&socket).await.map_err(|e| {
        ApiError::Internal(format!(
            "connecting to serial console {}: {e}",
            socket.display()
        ))
    })?;
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!("console upgrade failed: {e}");
                return;
            }
        };
        let mut client = TokioIo::new(upgraded);
        tokio::select! {
            r = tokio::io::copy_bidirectional(&mut client, &mut serial) => {
                if let Err(e) = r {
                    tracing::debug!("console attach ended: {e}");
                }
            }
            _ = stop.wait_for(|s| *s) => {}
        }
    });
    let mut resp = empty_response(StatusCode::SWITCHING_PROTOCOLS);
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(
        header::UPGRADE,
        HeaderValue::from_static(action::CONSOLE_UPGRADE),
    );
    Ok(resp)
}

/// The `Upgrade` header's value when `Connection` asks for an upgrade.
fn upgrade_protocol(headers: &http::HeaderMap) -> Option<&str> {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !connection_upgrade {
        return None;
    }
    headers.get(header::UPGRADE).and_then(|v| v.to_str().ok())
}

async fn read_body(body: Incoming, path: &str, timeout: Duration) -> Result<Bytes, ApiError> {
    let bad = |reason: String| ApiError::BadRequest {
        path: path.to_string(),
        reason,
    };
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    tokio::time::timeout(timeout, limited.collect())
        .await
        .map_err(|_| bad(format!("the body did not arrive within {timeout:?}")))?
        .map(|c| c.to_bytes())
        .map_err(|e| bad(format!("reading body: {e}")))
}

fn json<T: serde::Serialize>(value: &T) -> Result<Response<Body>, ApiError> {
    let body = serde_json::to_vec(value)
        .map_err(|e| ApiError::Internal(format!("encoding response: {e}")))?;
    Ok(bytes_response(
        StatusCode::OK,
        "application/json",
        body.into(),
    ))
}

fn error_response(e: &ApiError) -> Response<Body> {
    let body = serde_json::to_vec(&ErrorBody {
        error: e.to_string(),
    })
    .unwrap_or_else(|_| b"{\"error\":\"unencodable error\"}".to_vec());
    let mut resp = bytes_response(e.status(), "application/json", body.into());
    if let ApiError::MethodNotAllowed { allowed, .. } = e {
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allowed));
    }
    resp
}

fn empty_response(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()).map_err(|e| match e {}).boxed());
    *resp.status_mut() = status;
    resp
}

fn bytes_response(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Full::new(body).map_err(|e| match e {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::client::ControlClient;
    use crate::control::fake::{FakeBackend, sample_network, sample_status};
    use std::time::Instant;
    use tokio::io::AsyncWriteExt;

    const SHORT: Duration = Duration::from_millis(300);

    struct Served {
        dir: tempfile::TempDir,
        socket: PathBuf,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<Result<(), ServerError>>,
    }

    /// The fake backend served with short timeouts and room for `max` connections.
    fn serve(max: usize) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let backend = Arc::new(FakeBackend::new(
            sample_status("vm1"),
            sample_network(),
            "<domain/>",
            dir.path().join("console.log"),
            dir.path().join("console.sock"),
        ));
        let socket = dir.path().join("control.sock");
        let limits = Limits {
            header_timeout: SHORT,
            body_timeout: SHORT,
            max_connections: max,
        };
        let server = ControlServer::bind(&socket).unwrap().with_limits(limits);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(backend, async {
            let _ = stopped.await;
        }));
        Served {
            dir,
            socket,
            stop: Some(stop),
            task,
        }
    }

    impl Served {
        async fn stop(mut self) {
            let _ = self.stop.take().unwrap().send(());
            self.task.await.unwrap().unwrap();
        }
    }

    /// Everything the server sends until it closes, and when it closed.
    async fn read_until_closed(stream: &mut UnixStream) -> (String, Instant) {
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got))
            .await
            .expect("the server closes the connection")
            .ok();
        (String::from_utf8_lossy(&got).into_owned(), Instant::now())
    }

    #[tokio::test]
    async fn half_a_request_is_dropped_within_the_timeouts() {
        let s = serve(4);
        // Headers never finished.
        let mut half = UnixStream::connect(&s.socket).await.unwrap();
        let sent = Instant::now();
        half.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let (_, closed) = read_until_closed(&mut half).await;
        assert!(
            closed - sent < SHORT * 5,
            "dropped after {:?}",
            closed - sent
        );

        // Headers in, the body promised and never sent.
        let mut body = UnixStream::connect(&s.socket).await.unwrap();
        body.write_all(
            b"POST /v1/shutdown HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 40\r\n\r\n{\"grace",
        )
        .await
        .unwrap();
        let sent = Instant::now();
        let (answer, closed) = read_until_closed(&mut body).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(
            answer.contains("the body did not arrive within 300ms"),
            "{answer}"
        );
        assert!(
            closed - sent < SHORT * 5,
            "dropped after {:?}",
            closed - sent
        );

        // A connection that says nothing at all.
        let mut idle = UnixStream::connect(&s.socket).await.unwrap();
        let opened = Instant::now();
        let (_, closed) = read_until_closed(&mut idle).await;
        assert!(
            closed - opened < SHORT * 5,
            "dropped after {:?}",
            closed - opened
        );
        s.stop().await;
    }

    #[tokio::test]
    async fn a_flood_beyond_the_cap_does_not_lock_out_a_client() {
        let s = serve(4);
        // Twice the cap of connections that never send a byte.
        let mut flood = Vec::new();
        for _ in 0..8 {
            flood.push(UnixStream::connect(&s.socket).await.unwrap());
        }
        // Those beyond the cap are closed at once; the first four hold their slots.
        let mut beyond = flood.pop().unwrap();
        let mut got = Vec::new();
        let n = tokio::time::timeout(SHORT / 2, beyond.read_to_end(&mut got)).await;
        assert!(
            matches!(n, Ok(Ok(0))),
            "over the cap: closed, not served: {n:?}"
        );
        // A well-behaved client gets through once the idle ones time out.
        let client = ControlClient::new(&s.socket);
        let started = Instant::now();
        let status = loop {
            match client.status().await {
                Ok(status) => break status,
                Err(e) => assert!(started.elapsed() < Duration::from_secs(5), "{e}"),
            }
        };
        assert_eq!(status.name, "vm1");
        drop(flood);
        s.stop().await;
    }

    #[tokio::test]
    async fn consoles_outlive_the_timeouts() {
        let s = serve(1);
        let log = s.dir.path().join("console.log");
        std::fs::write(&log, b"boot\n").unwrap();
        let serial = UnixListener::bind(s.dir.path().join("console.sock")).unwrap();
        let client = ControlClient::new(&s.socket);

        let mut follow = client.console_follow().await.unwrap();
        assert_eq!(&follow.next_chunk().await.unwrap().unwrap()[..], b"boot\n");
        tokio::time::sleep(SHORT * 3).await; // well past both timeouts
        let mut appender = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        std::io::Write::write_all(&mut appender, b"later\n").unwrap();
        assert_eq!(&follow.next_chunk().await.unwrap().unwrap()[..], b"later\n");
        drop(follow);

        // An attached console leaves its slot: the one slot serves the next request.
        let mut attached = loop {
            // The followed console's connection may still be closing.
            match client.console_attach().await {
                Ok(a) => break a,
                Err(_) => tokio::task::yield_now().await,
            }
        };
        let (mut vm_side, _) = serial.accept().await.unwrap();
        tokio::time::sleep(SHORT * 3).await;
        assert_eq!(client.status().await.unwrap().name, "vm1");
        vm_side.write_all(b"login: ").await.unwrap();
        let mut buf = [0u8; 7];
        attached_read_exact(&mut attached, &mut buf).await;
        assert_eq!(&buf, b"login: ");
        s.stop().await;
    }

    async fn attached_read_exact(stream: &mut crate::control::ConsoleStream, buf: &mut [u8]) {
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(buf))
            .await
            .expect("console bytes arrive")
            .unwrap();
    }
}
