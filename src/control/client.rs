//! The typed client for `control.sock`, used by the handler and vmpodctl. One HTTP/1.1
//! connection per call: unix sockets make that cheap and keeps no state between calls.

use super::action::{CONSOLE_UPGRADE, LifecycleAction, etag, parse_etag};
use super::peer::Peer;
use super::types::{ErrorBody, LauncherStatus, NetworkReport, ShutdownRequest};
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use tokio::net::UnixStream;

/// What can go wrong talking to a launcher. `Api` carries the server's `{"error": ...}`.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to control socket {socket}: {source}")]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("control socket {socket}: {why}")]
    Peer { socket: PathBuf, why: String },
    #[error("{method} {path} on {socket}: {source}")]
    Http {
        method: Method,
        path: &'static str,
        socket: PathBuf,
        source: hyper::Error,
    },
    #[error("{method} {path}: {status}: {message}")]
    Api {
        method: Method,
        path: &'static str,
        status: StatusCode,
        message: String,
    },
    #[error("{method} {path}: decoding the response: {source}")]
    Decode {
        method: Method,
        path: &'static str,
        source: serde_json::Error,
    },
}

impl ClientError {
    /// The HTTP status the server answered with, when it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client for one launcher's control socket.
#[derive(Clone, Debug)]
pub struct ControlClient {
    socket: PathBuf,
    /// What the peer must be (see [`ControlClient::with_peer`]).
    peer: Option<Peer>,
}

/// A followed console log: chunks of output as the launcher writes them.
pub struct ConsoleFollow {
    body: Incoming,
    ctx: Ctx,
}

/// The raw bidirectional byte stream of an attached serial console.
pub type ConsoleStream = TokioIo<Upgraded>;

#[derive(Clone)]
struct Ctx {
    method: Method,
    path: &'static str,
    socket: PathBuf,
}

impl Ctx {
    fn http(&self, source: hyper::Error) -> ClientError {
        ClientError::Http {
            method: self.method.clone(),
            path: self.path,
            socket: self.socket.clone(),
            source,
        }
    }
}

impl ConsoleFollow {
    /// The next chunk of console output; `None` once the launcher ends the stream.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, ClientError>> {
        loop {
            match self.body.frame().await? {
                Ok(frame) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => return Some(Ok(data)),
                    _ => continue,
                },
                Err(e) => return Some(Err(self.ctx.http(e))),
            }
        }
    }
}

impl ControlClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        ControlClient {
            socket: socket.into(),
            peer: None,
        }
    }

    /// Talk only to `peer`: every connection's peer (SO_PEERCRED) is checked first (the
    /// launcher's pid, in the pod the reader knows, see [`super::peer`]), so a socket that
    /// leads to another process or another pod is refused with [`ClientError::Peer`].
    pub fn with_peer(mut self, peer: Peer) -> Self {
        self.peer = Some(peer);
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET /v1/status`
    pub async fn status(&self) -> Result<LauncherStatus, ClientError> {
        self.get_json("/v1/status").await
    }

    /// `GET /v1/status` as a long poll: with `seen` (the version an earlier answer
    /// carried) the launcher answers once its status is another, waiting up to `wait`;
    /// `Ok(None)` when it still is `seen` at the end. Each answer carries its version
    /// (`None` from a launcher that tags none: then there is nothing to wait on).
    pub async fn status_change(
        &self,
        seen: Option<u64>,
        wait: std::time::Duration,
    ) -> Result<Option<(LauncherStatus, Option<u64>)>, ClientError> {
        const PATH: &str = "/v1/status";
        let ctx = self.ctx(Method::GET, PATH);
        let mut req = request(&ctx.method, PATH, Bytes::new());
        if let Some(v) = seen {
            let h = req.headers_mut();
            let value = |s: String| header::HeaderValue::from_str(&s).expect("digits");
            h.insert(header::IF_NONE_MATCH, value(etag(v)));
            h.insert("prefer", value(format!("wait={}", wait.as_secs())));
        }
        let resp = self.send(&ctx, req, false).await?;
        if resp.status() == StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        let version = resp
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_etag);
        let body = body_of(&ctx, resp).await?;
        Ok(Some((decode(&ctx, &body)?, version)))
    }

    /// `GET /v1/network`
    pub async fn network(&self) -> Result<NetworkReport, ClientError> {
        self.get_json("/v1/network").await
    }

    /// `GET /v1/domain`: the domain XML.
    pub async fn domain_xml(&self) -> Result<String, ClientError> {
        let (_, body) = self.call(Method::GET, "/v1/domain", Bytes::new()).await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// `POST /v1/shutdown`: ACPI power-off, destroy after the grace period.
    pub async fn shutdown(&self, grace_period_seconds: Option<u32>) -> Result<(), ClientError> {
        self.lifecycle(LifecycleAction::Shutdown {
            grace_period_seconds,
        })
        .await
    }

    /// `POST /v1/pause`
    pub async fn pause(&self) -> Result<(), ClientError> {
        self.lifecycle(LifecycleAction::Pause).await
    }

    /// `POST /v1/resume`
    pub async fn resume(&self) -> Result<(), ClientError> {
        self.lifecycle(LifecycleAction::Resume).await
    }

    /// `POST /v1/kill`
    pub async fn kill(&self) -> Result<(), ClientError> {
        self.lifecycle(LifecycleAction::Kill).await
    }

    /// Any lifecycle endpoint.
    pub async fn lifecycle(&self, action: LifecycleAction) -> Result<(), ClientError> {
        let body = match action {
            LifecycleAction::Shutdown {
                grace_period_seconds: Some(s),
            } => {
                let req = ShutdownRequest {
                    grace_period_seconds: Some(s),
                };
                Bytes::from(serde_json::to_vec(&req).expect("a u32 field encodes"))
            }
            _ => Bytes::new(),
        };
        self.call(Method::POST, action.path(), body).await.map(drop)
    }

    /// `GET /v1/console`: the console log so far.
    pub async fn console_log(&self) -> Result<Bytes, ClientError> {
        self.call(Method::GET, "/v1/console", Bytes::new())
            .await
            .map(|(_, b)| b)
    }

    /// `GET /v1/console?follow=true`: the log so far, then new output until the VM ends.
    pub async fn console_follow(&self) -> Result<ConsoleFollow, ClientError> {
        let ctx = self.ctx(Method::GET, "/v1/console");
        let req = request(&ctx.method, "/v1/console?follow=true", Bytes::new());
        let resp = self.send(&ctx, req, false).await?;
        if !resp.status().is_success() {
            return Err(rejected(&ctx, resp).await);
        }
        let body = resp.into_body();
        Ok(ConsoleFollow { body, ctx })
    }

    /// `GET /v1/console` with `Upgrade: console`: a raw byte stream to the serial console.
    pub async fn console_attach(&self) -> Result<ConsoleStream, ClientError> {
        let ctx = self.ctx(Method::GET, "/v1/console");
        let mut req = request(&ctx.method, "/v1/console", Bytes::new());
        let h = req.headers_mut();
        h.insert(
            header::CONNECTION,
            header::HeaderValue::from_static("upgrade"),
        );
        h.insert(
            header::UPGRADE,
            header::HeaderValue::from_static(CONSOLE_UPGRADE),
        );
        let resp = self.send(&ctx, req, true).await?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Err(rejected(&ctx, resp).await);
        }
        let upgraded = hyper::upgrade::on(resp).await.map_err(|e| ctx.http(e))?;
        Ok(TokioIo::new(upgraded))
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &'static str,
    ) -> Result<T, ClientError> {
        let (ctx, body) = self.call(Method::GET, path, Bytes::new()).await?;
        decode(&ctx, &body)
    }

    /// Send one request and collect a successful response's body.
    async fn call(
        &self,
        method: Method,
        path: &'static str,
        body: Bytes,
    ) -> Result<(Ctx, Bytes), ClientError> {
        let ctx = self.ctx(method, path);
        let req = request(&ctx.method, path, body);
        let resp = self.send(&ctx, req, false).await?;
        let body = body_of(&ctx, resp).await?;
        Ok((ctx, body))
    }

    async fn send(
        &self,
        ctx: &Ctx,
        req: Request<Full<Bytes>>,
        upgrades: bool,
    ) -> Result<http::Response<Incoming>, ClientError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Connect {
                    socket: self.socket.clone(),
                    source,
                })?;
        if let Some(want) = &self.peer {
            super::peer::check(&stream, want).map_err(|why| ClientError::Peer {
                socket: self.socket.clone(),
                why,
            })?;
        }
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ctx.http(e))?;
        if upgrades {
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!("control connection: {e}");
                }
            });
        } else {
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!("control connection: {e}");
                }
            });
        }
        sender.send_request(req).await.map_err(|e| ctx.http(e))
    }

    fn ctx(&self, method: Method, path: &'static str) -> Ctx {
        Ctx {
            method,
            path,
            socket: self.socket.clone(),
        }
    }
}

fn request(method: &Method, uri: &str, body: Bytes) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri
        .parse()
        .expect("static control API paths are valid URIs");
    let h = req.headers_mut();
    h.insert(header::HOST, header::HeaderValue::from_static("localhost"));
    if method == Method::POST {
        h.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
    }
    req
}

/// A successful response's body; an unsuccessful one as [`ClientError::Api`].
async fn body_of(ctx: &Ctx, resp: http::Response<Incoming>) -> Result<Bytes, ClientError> {
    if !resp.status().is_success() {
        return Err(rejected(ctx, resp).await);
    }
    Ok(resp
        .into_body()
        .collect()
        .await
        .map_err(|e| ctx.http(e))?
        .to_bytes())
}

fn decode<T: serde::de::DeserializeOwned>(ctx: &Ctx, body: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(body).map_err(|source| ClientError::Decode {
        method: ctx.method.clone(),
        path: ctx.path,
        source,
    })
}

/// An unsuccessful response as [`ClientError::Api`], with the server's message.
async fn rejected(ctx: &Ctx, resp: http::Response<Incoming>) -> ClientError {
    let status = resp.status();
    match resp.into_body().collect().await {
        Ok(body) => api_error(ctx, status, &body.to_bytes()),
        Err(e) => ctx.http(e),
    }
}

/// The server's `{"error": ...}` message, or the raw body when it is not that shape.
fn api_error(ctx: &Ctx, status: StatusCode, body: &[u8]) -> ClientError {
    let message = serde_json::from_slice::<ErrorBody>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).trim().to_string());
    ClientError::Api {
        method: ctx.method.clone(),
        path: ctx.path,
        status,
        message,
    }
}
