//! Prometheus metrics of the controller and the node daemon (after kube-rs controller-rs
//! `src/metrics.rs`), and the `GET /metrics` endpoint that serves them in the OpenMetrics
//! text format. Owns the registry and the HTTP listener; it must not touch the API server:
//! the reconcilers feed it ([`ReconcileMetrics::count_and_measure`],
//! [`ReconcileMetrics::set_failure`], [`VmiPhases::set`]).

use super::ReconcileError;
use bytes::Bytes;
use http::{Method, Response, StatusCode, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::net::TcpListener;
use vmpod::api::VmiPhase;

/// Default `--metrics-addr` of `vmpod-handler controller`.
pub const CONTROLLER_METRICS_ADDR: &str = "127.0.0.1:9153";
/// Default `--metrics-addr` of `vmpod-handler node` (another port, so both can share a host).
pub const NODE_METRICS_ADDR: &str = "127.0.0.1:9154";
/// The OpenMetrics text content type Prometheus asks for.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `error` label of `vmpod_handler_reconcile_failures_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// [`ReconcileError::metric_label`].
    pub error: String,
}

/// The `phase` label of `vmpod_handler_vmis`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// [`VmiPhase::as_str`].
    pub phase: String,
}

/// Reconcile runs, failures by kind, and how long runs take.
#[derive(Clone)]
pub struct ReconcileMetrics {
    /// Reconcile runs started.
    pub runs: Counter,
    /// Failed reconciles by [`ReconcileError::metric_label`].
    pub failures: Family<ErrorLabels, Counter>,
    /// Seconds a reconcile took, success or not.
    pub duration: Histogram,
}

impl Default for ReconcileMetrics {
    fn default() -> Self {
        ReconcileMetrics {
            runs: Counter::default(),
            failures: Family::default(),
            // 1 ms .. ~8 s: a reconcile is a few API round trips, a slow one a conflict loop.
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
        }
    }
}

impl ReconcileMetrics {
    /// Count a run and time it until the returned guard drops.
    pub fn count_and_measure(&self) -> ReconcileMeasurer {
        self.runs.inc();
        ReconcileMeasurer {
            start: Instant::now(),
            duration: self.duration.clone(),
        }
    }

    /// Count a failed reconcile under its error's label.
    pub fn set_failure(&self, error: &ReconcileError) {
        self.failures
            .get_or_create(&ErrorLabels {
                error: error.metric_label().to_owned(),
            })
            .inc();
    }
}

/// Observes the elapsed time into the duration histogram on drop.
pub struct ReconcileMeasurer {
    start: Instant,
    duration: Histogram,
}

impl Drop for ReconcileMeasurer {
    fn drop(&mut self) {
        self.duration.observe(self.start.elapsed().as_secs_f64());
    }
}

/// The node's VMIs by phase: each launcher pod's VMI counted once, under its last
/// reported phase. Every phase is exported, at 0 when empty, so a drop to zero shows.
#[derive(Clone, Default)]
pub struct VmiPhases {
    known: Arc<Mutex<HashMap<String, VmiPhase>>>,
    gauge: Family<PhaseLabels, Gauge>,
}

impl VmiPhases {
    /// Record `vmi`'s phase; `None` forgets it (deleted, or no longer on this node).
    pub fn set(&self, vmi: &str, phase: Option<VmiPhase>) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        match phase {
            Some(p) => known.insert(vmi.to_owned(), p),
            None => known.remove(vmi),
        };
        for p in VmiPhase::ALL {
            let count = known.values().filter(|&&k| k == p).count();
            self.gauge
                .get_or_create(&PhaseLabels {
                    phase: p.as_str().to_owned(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }
}

/// Everything one handler process exports.
pub struct Metrics {
    registry: Registry,
    /// Reconcile counters and timings.
    pub reconcile: ReconcileMetrics,
    /// VMIs by phase (fed by the node daemon only).
    pub vmis: VmiPhases,
}

impl Default for Metrics {
    fn default() -> Self {
        let reconcile = ReconcileMetrics::default();
        let vmis = VmiPhases::default();
        let mut registry = Registry::with_prefix("vmpod_handler");
        registry.register(
            "reconcile_runs",
            "Reconcile runs started",
            reconcile.runs.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Failed reconciles by error kind",
            reconcile.failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "How long a reconcile took",
            reconcile.duration.clone(),
        );
        registry.register(
            "vmis",
            "VirtualMachineInstances on this node by phase",
            vmis.gauge.clone(),
        );
        Metrics {
            registry,
            reconcile,
            vmis,
        }
    }
}

impl Metrics {
    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing into a String cannot fail");
        text
    }
}

/// The answer to one HTTP request: `GET /metrics` is the exposition, anything else 404/405.
pub fn respond(method: &Method, path: &str, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (method, path) {
        (&Method::GET, "/metrics") => (StatusCode::OK, CONTENT_TYPE, metrics.encode()),
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "metrics are at /metrics\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

/// Bind the metrics listener (separately from [`serve`], so a taken port fails start-up).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("metrics endpoint: bind {addr}: {e}"))
}

/// Serve `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!("metrics endpoint: accept: {e}");
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let response = respond(req.method(), req.uri().path(), &metrics);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, "metrics endpoint: connection: {e}");
            }
        });
    }
}

/// Panic unless every line in `lines` stands, whole, in `metrics`' exposition.
#[cfg(test)]
pub fn assert_exposes(metrics: &Metrics, lines: &[&str]) {
    let text = metrics.encode();
    for line in lines {
        assert!(
            text.lines().any(|l| l == *line),
            "no line {line:?} in:\n{text}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conflict() -> ReconcileError {
        ReconcileError::Conflict {
            object: "VirtualMachineInstance default/vm1".into(),
            attempts: 4,
        }
    }

    #[test]
    fn a_reconcile_error_increments_its_labelled_counter() {
        let metrics = Metrics::default();
        metrics.reconcile.set_failure(&conflict());
        metrics.reconcile.set_failure(&conflict());
        metrics
            .reconcile
            .set_failure(&ReconcileError::Unaddressable("Pod"));
        let by = |label: &str| {
            metrics
                .reconcile
                .failures
                .get_or_create(&ErrorLabels {
                    error: label.into(),
                })
                .get()
        };
        assert_eq!(by("conflict"), 2);
        assert_eq!(by("unaddressable"), 1);
        assert_exposes(
            &metrics,
            &[
                "vmpod_handler_reconcile_failures_total{error=\"conflict\"} 2",
                "vmpod_handler_reconcile_failures_total{error=\"unaddressable\"} 1",
            ],
        );
    }

    #[test]
    fn a_measured_run_is_counted_and_timed() {
        let metrics = Metrics::default();
        drop(metrics.reconcile.count_and_measure());
        assert_exposes(
            &metrics,
            &[
                "vmpod_handler_reconcile_runs_total 1",
                "vmpod_handler_reconcile_duration_seconds_count 1",
            ],
        );
    }

    #[test]
    fn vmis_are_counted_by_their_last_phase() {
        let metrics = Metrics::default();
        metrics.vmis.set("default/a", Some(VmiPhase::Scheduled));
        metrics.vmis.set("default/b", Some(VmiPhase::Running));
        metrics.vmis.set("default/a", Some(VmiPhase::Running));
        metrics.vmis.set("default/c", Some(VmiPhase::Failed));
        metrics.vmis.set("default/c", None);
        assert_exposes(
            &metrics,
            &[
                "vmpod_handler_vmis{phase=\"Running\"} 2",
                "vmpod_handler_vmis{phase=\"Scheduled\"} 0",
                "vmpod_handler_vmis{phase=\"Failed\"} 0",
            ],
        );
    }

    #[test]
    fn only_get_metrics_is_served() {
        let metrics = Metrics::default();
        assert_eq!(
            respond(&Method::GET, "/metrics", &metrics).status(),
            StatusCode::OK
        );
        assert_eq!(
            respond(&Method::POST, "/metrics", &metrics).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            respond(&Method::GET, "/", &metrics).status(),
            StatusCode::NOT_FOUND
        );
    }

    /// Scrape the real endpoint over loopback TCP, as Prometheus would.
    #[tokio::test]
    async fn the_endpoint_serves_the_exposition_on_loopback() {
        use http_body_util::{BodyExt, Empty};
        let metrics = Arc::new(Metrics::default());
        metrics.reconcile.set_failure(&conflict());
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, metrics.clone()));

        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let request = hyper::Request::get("/metrics")
            .header(header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            text.contains("vmpod_handler_reconcile_failures_total{error=\"conflict\"} 1\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        server.abort();
    }
}
