//! A scripted Kubernetes API server for tests, in the style of kube-rs controller-rs's
//! `src/fixtures.rs`: a `tower_test` mock service behind a real `kube::Client`. The script is
//! a list of expected exchanges (method + path, list or watch) with canned replies; each
//! request is matched to the first unused exchange of its route, so the per-route order is
//! checked while concurrent watchers may interleave. Watch replies are streams the test
//! feeds with events. Every request is recorded (method, path, body) for assertions, and a
//! request nobody scripted is answered 500 and reported.

use bytes::Bytes;
use futures::channel::mpsc;
use http::{Method, Request, Response, StatusCode};
use http_body_util::StreamBody;
use hyper::body::Frame;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Chunks = mpsc::UnboundedReceiver<Result<Frame<Bytes>, Infallible>>;
type MockBody = StreamBody<Chunks>;
type Handle = tower_test::mock::Handle<Request<Body>, Response<MockBody>>;

/// One expected request and its reply.
pub struct Exchange {
    method: Method,
    path: String,
    watch: bool,
    reply: Reply,
}

enum Reply {
    Json(StatusCode, Value),
    Watch(Chunks),
}

impl Exchange {
    /// A non-watch request answered with `status` and `body`.
    pub fn json(method: Method, path: &str, status: u16, body: Value) -> Self {
        Exchange {
            method,
            path: path.to_string(),
            watch: false,
            reply: Reply::Json(StatusCode::from_u16(status).expect("a valid status"), body),
        }
    }

    /// A non-watch request refused with `code` and a `Status` body ([`status_body`]).
    pub fn error(method: Method, path: &str, code: u16, reason: &str, message: &str) -> Self {
        Self::json(method, path, code, status_body(code, reason, message))
    }

    /// A watch request on `path`, answered with the events fed into `feed`.
    pub fn watch(path: &str, feed: WatchStream) -> Self {
        Exchange {
            method: Method::GET,
            path: path.to_string(),
            watch: true,
            reply: Reply::Watch(feed.0),
        }
    }
}

/// The receiving half of a watch feed, handed to [`Exchange::watch`].
pub struct WatchStream(Chunks);

/// The test's end of a watch: send events while the watch is open.
#[derive(Clone)]
pub struct WatchFeed(mpsc::UnboundedSender<Result<Frame<Bytes>, Infallible>>);

/// A new watch feed and the stream to script with it.
pub fn watch_feed() -> (WatchFeed, WatchStream) {
    let (tx, rx) = mpsc::unbounded();
    (WatchFeed(tx), WatchStream(rx))
}

impl WatchFeed {
    /// Send one watch event (`ADDED`, `MODIFIED`, `DELETED`).
    pub fn send(&self, kind: &str, object: Value) {
        let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap();
        line.push(b'\n');
        self.0
            .unbounded_send(Ok(Frame::data(Bytes::from(line))))
            .expect("the watch is open");
    }
}

/// A request the server saw.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub body: Value,
}

/// The running mock server: what it saw and what it could not answer.
#[derive(Clone, Default)]
pub struct MockApiServer {
    seen: Arc<Mutex<Vec<Recorded>>>,
    unexpected: Arc<Mutex<Vec<String>>>,
}

impl MockApiServer {
    /// A client talking to a mock server that plays `script`.
    pub fn start(script: Vec<Exchange>) -> (Client, MockApiServer) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<MockBody>>();
        let server = MockApiServer::default();
        tokio::spawn(server.clone().serve(handle, script));
        (Client::new(service, "default"), server)
    }

    async fn serve(self, mut handle: Handle, mut script: Vec<Exchange>) {
        // Unscripted watches (re-watches) hang open rather than erroring.
        let mut idle_watches = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap_or_default();
            let query = parts.uri.query().unwrap_or_default().to_string();
            let watch = query.split('&').any(|kv| kv == "watch=true");
            let path = parts.uri.path().to_string();
            self.seen.lock().unwrap().push(Recorded {
                method: parts.method.clone(),
                path: path.clone(),
                query: query.clone(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            });
            let found = script
                .iter()
                .position(|e| e.method == parts.method && e.path == path && e.watch == watch);
            let response = match found.map(|i| script.remove(i).reply) {
                Some(Reply::Json(status, body)) => {
                    let (tx, rx) = mpsc::unbounded();
                    tx.unbounded_send(Ok(Frame::data(Bytes::from(body.to_string()))))
                        .unwrap();
                    Response::builder()
                        .status(status)
                        .body(StreamBody::new(rx))
                        .unwrap()
                }
                Some(Reply::Watch(rx)) => Response::new(StreamBody::new(rx)),
                None if watch => {
                    let (tx, rx) = mpsc::unbounded();
                    idle_watches.push(tx);
                    Response::new(StreamBody::new(rx))
                }
                None => {
                    self.unexpected
                        .lock()
                        .unwrap()
                        .push(format!("{} {path}?{query}", parts.method));
                    let (tx, rx) = mpsc::unbounded();
                    let body = status_body(500, "InternalError", "not in the test script");
                    tx.unbounded_send(Ok(Frame::data(Bytes::from(body.to_string()))))
                        .unwrap();
                    Response::builder()
                        .status(500)
                        .body(StreamBody::new(rx))
                        .unwrap()
                }
            };
            send.send_response(response);
        }
    }

    /// Every request seen so far, in order.
    pub fn seen(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }

    /// Requests seen with `method` on `path`.
    pub fn seen_on(&self, method: Method, path: &str) -> Vec<Recorded> {
        self.seen()
            .into_iter()
            .filter(|r| r.method == method && r.path == path)
            .collect()
    }

    /// Requests nobody scripted.
    pub fn unexpected(&self) -> Vec<String> {
        self.unexpected.lock().unwrap().clone()
    }

    /// Wait (at most 10 s) until `count` requests with `method` on `path` were seen.
    pub async fn wait_for(&self, method: Method, path: &str, count: usize) -> Vec<Recorded> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let seen = self.seen_on(method.clone(), path);
            if seen.len() >= count {
                return seen;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {count} x {method} {path}; saw {:#?}; unexpected {:?}",
                self.seen()
                    .iter()
                    .map(|r| format!("{} {}?{}", r.method, r.path, r.query))
                    .collect::<Vec<_>>(),
                self.unexpected()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A Kubernetes `Status` error body.
pub fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "reason": reason, "message": message, "code": code})
}

/// The VMIs and the pods of every namespace, which the controller lists and watches.
pub const ALL_VMIS: &str = "/apis/vmpod.io/v1alpha1/virtualmachineinstances";
pub const ALL_PODS: &str = "/api/v1/pods";

/// What the running controller reads first: the VMIs and the pods (`vmis` and `pods`),
/// then a watch on each, fed through the returned VMI and pod feeds.
pub fn controller_start(
    vmis: Vec<Value>,
    pods: Vec<Value>,
) -> (WatchFeed, WatchFeed, Vec<Exchange>) {
    let (vmi_feed, vmi_stream) = watch_feed();
    let (pod_feed, pod_stream) = watch_feed();
    let script = vec![
        Exchange::json(
            Method::GET,
            ALL_VMIS,
            200,
            list("vmpod.io/v1alpha1", "VirtualMachineInstanceList", vmis),
        ),
        Exchange::watch(ALL_VMIS, vmi_stream),
        Exchange::json(Method::GET, ALL_PODS, 200, list("v1", "PodList", pods)),
        Exchange::watch(ALL_PODS, pod_stream),
    ];
    (vmi_feed, pod_feed, script)
}

/// A list response holding `items`, at resourceVersion 1.
pub fn list(api_version: &str, kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items})
}
