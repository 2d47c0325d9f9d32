//! Figures for the cluster handler against the scripted mock API server (no network, so
//! they measure our code and kube-rs, not an API server):
//!
//! - reconcile latency for a new VMI (GET pod 404, POST pod, PATCH status), median and p99;
//! - resident memory while the controller tracks 100 VMIs with running launcher pods.
//!
//! Run: `cargo test -p vmpod-handler --release -- --ignored --nocapture bench_`

use super::controller::{self, ControllerContext};
use super::fixtures::{Exchange, MockApiServer, controller_start};
use super::launcher_pod::LauncherPodConfig;
use http::Method;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A UUID of the VMI's own (validation refuses a uid that is not one).
fn uid(name: &str) -> String {
    let n = name
        .bytes()
        .fold(0u64, |a, b| a.wrapping_mul(131).wrapping_add(u64::from(b)));
    format!("00000000-0000-4000-8000-{:012x}", n & 0xffff_ffff_ffff)
}

fn vmi(name: &str) -> Value {
    json!({
        "apiVersion": "vmpod.io/v1alpha1", "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "namespace": "bench", "uid": uid(name),
                     "resourceVersion": "1"},
        "spec": {"domain": {"memory": {"guest": "256Mi"}}},
    })
}

fn pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("vmpod-launcher-{name}"), "namespace": "bench",
            "labels": {"app.kubernetes.io/name": "vmpod-launcher", "vmpod.io/vmi": name},
            "ownerReferences": [{"apiVersion": "vmpod.io/v1alpha1", "kind": "VirtualMachineInstance",
                "name": name, "uid": uid(name), "controller": true}]},
        "spec": {"containers": [{"name": "compute", "image": "vmpod:dev"}], "nodeName": "n1"},
        "status": {"phase": "Running"},
    })
}

fn vm_paths(name: &str) -> (String, String) {
    (
        format!("/api/v1/namespaces/bench/pods/vmpod-launcher-{name}"),
        format!("/apis/vmpod.io/v1alpha1/namespaces/bench/virtualmachineinstances/{name}/status"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn bench_reconcile_latency_for_a_new_vmi() {
    const RUNS: usize = 2000;
    let pods_path = "/api/v1/namespaces/bench/pods";
    let mut script = Vec::new();
    for i in 0..RUNS {
        let name = format!("vm{i}");
        let (pod_path, status_path) = vm_paths(&name);
        script.push(Exchange::error(Method::GET, &pod_path, 404, "NotFound", ""));
        script.push(Exchange::json(Method::POST, pods_path, 201, pod(&name)));
        script.push(Exchange::json(Method::PATCH, &status_path, 200, vmi(&name)));
    }
    let (client, server) = MockApiServer::start(script);
    let ctx = Arc::new(ControllerContext {
        client,
        config: LauncherPodConfig::default(),
        metrics: Arc::default(),
        backoff: Default::default(),
    });
    let mut times = Vec::with_capacity(RUNS);
    for i in 0..RUNS {
        let v = serde_json::from_value(vmi(&format!("vm{i}"))).unwrap();
        let start = Instant::now();
        controller::reconcile(Arc::new(v), ctx.clone())
            .await
            .unwrap();
        times.push(start.elapsed());
    }
    assert!(server.unexpected().is_empty());
    times.sort();
    let pct = |p: usize| times[(times.len() - 1) * p / 100];
    println!(
        "reconcile latency, new VMI -> pod created + status patched (mock API, {RUNS} runs): \
         median {:?}, p99 {:?}",
        pct(50),
        pct(99)
    );
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn bench_controller_rss_tracking_100_vmis() {
    const VMIS: usize = 100;
    let before = rss_kib();
    let names: Vec<String> = (0..VMIS).map(|i| format!("vm{i}")).collect();
    let (_vf, _pf, mut script) = controller_start(
        names.iter().map(|n| vmi(n)).collect(),
        names.iter().map(|n| pod(n)).collect(),
    );
    for name in &names {
        let (pod_path, status_path) = vm_paths(name);
        script.push(Exchange::json(Method::GET, &pod_path, 200, pod(name)));
        script.push(Exchange::json(Method::PATCH, &status_path, 200, vmi(name)));
    }
    let (client, server) = MockApiServer::start(script);
    let start = Instant::now();
    let run = tokio::spawn(controller::run(
        client,
        LauncherPodConfig::default(),
        Arc::default(),
    ));
    let mut patched = 0;
    while patched < VMIS {
        patched = server
            .seen()
            .iter()
            .filter(|r| r.method == Method::PATCH)
            .count();
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "only {patched} patched"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let all = start.elapsed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = rss_kib();
    println!(
        "controller tracking {VMIS} VMIs + {VMIS} pods (mock API): all reconciled in {all:?}; \
         process RSS {after} KiB (test process before start: {before} KiB, +{} KiB)",
        after.saturating_sub(before)
    );
    assert!(server.unexpected().is_empty(), "{:?}", server.unexpected());
    run.abort();
}
