//! The control server: accepts on `control.sock`, parses each request into an
//! [`Action`], asks the [`Backend`] and writes JSON. It owns the socket file and the HTTP
//! connections; VM state belongs to the backend (the launcher).

use super::action::{self, Action, ApiError, LifecycleAction, RequestParts};
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
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Largest request body accepted (the only body is `POST /v1/shutdown`'s).
const MAX_BODY: usize = 64 * 1024;
/// How often a followed console log is checked for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// How long open connections get to finish after shutdown before they are dropped.
const DRAIN: Duration = Duration::from_secs(2);

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
        })
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
        tokio::pin!(shutdown);
        let result = loop {
            tokio::select! {
                () = &mut shutdown => break Ok(()),
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        conns.spawn(serve_connection(stream, backend.clone(), stop_rx.clone()));
                    }
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

async fn serve_connection<B: Backend>(
    stream: UnixStream,
    backend: Arc<B>,
    mut stop: watch::Receiver<bool>,
) {
    let stop_for_requests = stop.clone();
    let service = hyper::service::service_fn(move |req| {
        let backend = backend.clone();
        let stop = stop_for_requests.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(req, backend, stop).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
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
) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let result = async {
        let upgrade = upgrade_protocol(req.headers()).map(str::to_string);
        let query = req.uri().query().map(str::to_string);
        let (parts, body) = req.into_parts();
        let body = read_body(body, &path).await?;
        let action = action::parse(RequestParts {
            method: &parts.method,
            path: &path,
            query: query.as_deref(),
            upgrade: upgrade.as_deref(),
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
        Action::GetStatus => json(&backend.status().await?),
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
/// reads to the end of the file; the pass after the VM is seen finished (or the server
/// stopping) is the last, so no output written before the end is lost.
async fn tail<B: Backend>(
    backend: &B,
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, io::Error>>,
    stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let log = backend.console_log();
    let mut pos: u64 = 0;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let last_pass =
            *stop.borrow() || backend.status().await.is_ok_and(|s| s.phase.is_terminal());
        match tokio::fs::File::open(&log).await {
            Ok(mut file) => {
                if file.metadata().await?.len() < pos {
                    pos = 0; // truncated or replaced: start over
                }
                file.seek(io::SeekFrom::Start(pos)).await?;
                loop {
                    let n = file.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    pos += n as u64;
                    if tx
                        .send(Ok(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        return Ok(()); // the client went away
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", log.display()))),
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

async fn read_body(body: Incoming, path: &str) -> Result<Bytes, ApiError> {
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    limited
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| ApiError::BadRequest {
            path: path.to_string(),
            reason: format!("reading body: {e}"),
        })
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
