//! The controller and the node daemon against the scripted mock API server: pod creation,
//! status patches with resourceVersion, a 409 conflict, watch events driving reconciles,
//! an invalid VMI, and a node daemon restart that re-lists and loses nothing.

use super::controller::{self, ControllerContext};
use super::fixtures::{Exchange, MockApiServer, empty_list, status_body, watch_feed};
use super::launcher_pod::{LauncherPodConfig, VMI_ANNOTATION};
use super::metrics::{Metrics, assert_exposes};
use super::node::{self, LauncherStatusSource, NodeContext};
use http::Method;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vmpod::api::VirtualMachineInstance;
use vmpod::control::{InterfaceStatus, LauncherStatus, Phase};

const VMI_PATH: &str = "/apis/vmpod.io/v1alpha1/namespaces/ns1/virtualmachineinstances/vm1";
const STATUS_PATH: &str =
    "/apis/vmpod.io/v1alpha1/namespaces/ns1/virtualmachineinstances/vm1/status";
const POD_PATH: &str = "/api/v1/namespaces/ns1/pods/vmpod-launcher-vm1";
const PODS_PATH: &str = "/api/v1/namespaces/ns1/pods";

fn vmi_json(resource_version: &str, status: Value) -> Value {
    json!({
        "apiVersion": "vmpod.io/v1alpha1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": "vm1", "namespace": "ns1", "uid": "uid-1",
                     "resourceVersion": resource_version},
        "spec": {"domain": {"memory": {"guest": "256Mi"}}},
        "status": status,
    })
}

fn vmi(resource_version: &str) -> VirtualMachineInstance {
    serde_json::from_value(vmi_json(resource_version, json!({}))).unwrap()
}

fn pod_json(phase: Option<&str>, node: Option<&str>) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "vmpod-launcher-vm1", "namespace": "ns1", "resourceVersion": "20",
            "labels": {"app.kubernetes.io/name": "vmpod-launcher", "vmpod.io/vmi": "vm1"},
            "ownerReferences": [{"apiVersion": "vmpod.io/v1alpha1",
                "kind": "VirtualMachineInstance", "name": "vm1", "uid": "uid-1",
                "controller": true, "blockOwnerDeletion": true}],
        },
        "spec": {"containers": [{"name": "compute", "image": "vmpod:dev"}], "nodeName": node},
        "status": {"phase": phase},
    })
}

fn pod_not_found() -> Exchange {
    Exchange::json(
        Method::GET,
        POD_PATH,
        404,
        status_body(404, "NotFound", "no pod"),
    )
}

/// The node daemon's read of the VMI.
fn vmi_read(vmi: Value) -> Exchange {
    Exchange::json(Method::GET, VMI_PATH, 200, vmi)
}

fn pod_created() -> Exchange {
    Exchange::json(Method::POST, PODS_PATH, 201, pod_json(None, None))
}

fn controller_ctx(client: kube::Client) -> Arc<ControllerContext> {
    Arc::new(ControllerContext {
        client,
        config: LauncherPodConfig::default(),
        metrics: Arc::default(),
    })
}

#[tokio::test]
async fn controller_creates_the_pod_and_retries_a_status_conflict() {
    let (client, server) = MockApiServer::start(vec![
        pod_not_found(),
        pod_created(),
        Exchange::json(
            Method::PATCH,
            STATUS_PATH,
            409,
            status_body(409, "Conflict", "the object has been modified"),
        ),
        Exchange::json(Method::GET, STATUS_PATH, 200, vmi_json("11", json!({}))),
        Exchange::json(
            Method::PATCH,
            STATUS_PATH,
            200,
            vmi_json("12", json!({"phase": "Scheduling"})),
        ),
    ]);
    controller::reconcile(Arc::new(vmi("10")), controller_ctx(client))
        .await
        .expect("reconcile succeeds after the conflict");

    let posted = &server.seen_on(Method::POST, PODS_PATH)[0].body;
    let owner = &posted["metadata"]["ownerReferences"][0];
    assert_eq!(owner["uid"], "uid-1");
    assert_eq!(owner["kind"], "VirtualMachineInstance");
    assert_eq!(owner["controller"], true);
    assert_eq!(owner["blockOwnerDeletion"], true);
    let handed = posted["metadata"]["annotations"][VMI_ANNOTATION]
        .as_str()
        .unwrap();
    assert!(vmpod::api::load_valid_vmi(handed).is_ok());

    let patches = server.seen_on(Method::PATCH, STATUS_PATH);
    assert_eq!(patches.len(), 2);
    assert_eq!(patches[0].body["metadata"]["resourceVersion"], "10");
    assert_eq!(
        patches[1].body["metadata"]["resourceVersion"], "11",
        "re-read after 409"
    );
    for p in &patches {
        assert_eq!(p.body["status"]["phase"], "Scheduling");
        assert_eq!(p.body["status"]["launcherPod"], "vmpod-launcher-vm1");
    }
    let order: Vec<String> = server
        .seen()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        order,
        [
            format!("GET {POD_PATH}"),
            format!("POST {PODS_PATH}"),
            format!("PATCH {STATUS_PATH}"),
            format!("GET {STATUS_PATH}"),
            format!("PATCH {STATUS_PATH}"),
        ]
    );
    assert_eq!(server.unexpected(), Vec::<String>::new());
}

#[tokio::test]
async fn controller_gives_up_after_repeated_conflicts() {
    let conflict = || {
        Exchange::json(
            Method::PATCH,
            STATUS_PATH,
            409,
            status_body(409, "Conflict", "modified"),
        )
    };
    let reread = || Exchange::json(Method::GET, STATUS_PATH, 200, vmi_json("11", json!({})));
    let mut script = vec![Exchange::json(
        Method::GET,
        POD_PATH,
        200,
        pod_json(Some("Pending"), None),
    )];
    for _ in 0..4 {
        script.push(conflict());
        script.push(reread());
    }
    let (client, server) = MockApiServer::start(script);
    let ctx = controller_ctx(client);
    let vmi = Arc::new(vmi("10"));
    let err = controller::reconcile(vmi.clone(), ctx.clone())
        .await
        .unwrap_err();
    assert_eq!(err.metric_label(), "conflict");
    assert!(err.to_string().contains("ns1/vm1"), "{err}");
    assert_eq!(server.seen_on(Method::PATCH, STATUS_PATH).len(), 4);

    // The error policy counts the failure under its label.
    controller::error_policy(vmi, &err, ctx.clone());
    assert_exposes(
        &ctx.metrics,
        &[
            "vmpod_handler_reconcile_runs_total 1",
            "vmpod_handler_reconcile_failures_total{error=\"conflict\"} 1",
        ],
    );
}

#[tokio::test]
async fn an_invalid_vmi_fails_with_its_errors_and_gets_no_pod() {
    let mut bad = vmi("10");
    bad.spec.domain.memory.as_mut().unwrap().guest = Some(
        k8s_openapi::apimachinery::pkg::api::resource::Quantity("lots".into()),
    );
    let (client, server) = MockApiServer::start(vec![
        pod_not_found(),
        Exchange::json(Method::PATCH, STATUS_PATH, 200, vmi_json("11", json!({}))),
    ]);
    controller::reconcile(Arc::new(bad), controller_ctx(client))
        .await
        .unwrap();
    let patch = &server.seen_on(Method::PATCH, STATUS_PATH)[0].body["status"];
    assert_eq!(patch["phase"], "Failed");
    assert_eq!(patch["reason"], "InvalidSpec");
    assert_eq!(patch["conditions"][0]["type"], "Synchronized");
    assert_eq!(
        patch["conditions"][0]["message"],
        r#"spec.domain.memory.guest: "lots" is not a quantity"#
    );
    assert!(server.seen_on(Method::POST, PODS_PATH).is_empty());
    assert_eq!(server.unexpected(), Vec::<String>::new());
}

#[tokio::test]
async fn controller_follows_watch_events() {
    let all_vmis = "/apis/vmpod.io/v1alpha1/virtualmachineinstances";
    let all_pods = "/api/v1/pods";
    let (vmi_feed, vmi_stream) = watch_feed();
    let (pod_feed, pod_stream) = watch_feed();
    let (client, server) = MockApiServer::start(vec![
        Exchange::json(
            Method::GET,
            all_vmis,
            200,
            empty_list("vmpod.io/v1alpha1", "VirtualMachineInstanceList"),
        ),
        Exchange::watch(all_vmis, vmi_stream),
        Exchange::json(Method::GET, all_pods, 200, empty_list("v1", "PodList")),
        Exchange::watch(all_pods, pod_stream),
        // ADDED VMI: no pod yet -> create it -> Scheduling.
        pod_not_found(),
        pod_created(),
        Exchange::json(Method::PATCH, STATUS_PATH, 200, vmi_json("11", json!({}))),
        // MODIFIED pod (Running on n1) -> Scheduled with the node.
        Exchange::json(
            Method::GET,
            POD_PATH,
            200,
            pod_json(Some("Running"), Some("n1")),
        ),
        Exchange::json(Method::PATCH, STATUS_PATH, 200, vmi_json("12", json!({}))),
    ]);
    let metrics = Arc::new(Metrics::default());
    let run = tokio::spawn(controller::run(
        client,
        LauncherPodConfig::default(),
        metrics.clone(),
    ));

    server.wait_for(Method::GET, all_vmis, 2).await; // list, then watch
    vmi_feed.send("ADDED", vmi_json("10", json!({})));
    let patches = server.wait_for(Method::PATCH, STATUS_PATH, 1).await;
    assert_eq!(patches[0].body["status"]["phase"], "Scheduling");
    assert_eq!(server.seen_on(Method::POST, PODS_PATH).len(), 1);

    server.wait_for(Method::GET, all_pods, 2).await;
    pod_feed.send("MODIFIED", pod_json(Some("Running"), Some("n1")));
    let patches = server.wait_for(Method::PATCH, STATUS_PATH, 2).await;
    assert_eq!(patches[1].body["status"]["phase"], "Scheduled");
    assert_eq!(patches[1].body["status"]["nodeName"], "n1");

    // Deleting the VMI: garbage collection removes the pod; the controller deletes nothing.
    // The reconcile that could act is the one for the VMI marked for deletion (kube-rs
    // reconciles nothing after DELETED): wait until it has finished, then look.
    let finished = finished_reconciles(&metrics);
    let mut deleting = vmi_json("13", json!({}));
    deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    vmi_feed.send("MODIFIED", deleting);
    wait_finished_reconciles(&metrics, finished + 1).await;
    vmi_feed.send("DELETED", vmi_json("14", json!({})));
    assert!(server.seen().iter().all(|r| r.method != Method::DELETE));
    assert_eq!(server.unexpected(), Vec::<String>::new());
    run.abort();
    // Every event above ran a reconcile, none failed.
    assert!(metrics.reconcile.runs.get() >= 2, "{}", metrics.encode());
    assert!(
        !metrics.encode().contains("reconcile_failures_total{"),
        "{}",
        metrics.encode()
    );
}

/// Reconciles that have run to their end (the duration histogram's count).
fn finished_reconciles(metrics: &Metrics) -> u64 {
    let text = metrics.encode();
    text.lines()
        .find_map(|l| l.strip_prefix("vmpod_handler_reconcile_duration_seconds_count "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no reconcile duration count in\n{text}"))
}

/// Wait until at least `n` reconciles have finished; fails after 10 s.
async fn wait_finished_reconciles(metrics: &Metrics, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while finished_reconciles(metrics) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} reconciles not finished within 10 s\n{}",
            metrics.encode()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A launcher status source that answers from a table, keyed by state directory.
struct FakeLaunchers(Mutex<Vec<(String, Result<LauncherStatus, String>)>>);

impl LauncherStatusSource for FakeLaunchers {
    async fn status(&self, state_dir: &Path) -> Result<LauncherStatus, String> {
        let table = self.0.lock().unwrap();
        let key = state_dir.to_str().unwrap();
        table
            .iter()
            .find(|(dir, _)| dir == key)
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| Err(format!("no launcher at {key}")))
    }
}

fn running_launcher() -> LauncherStatus {
    let mut ls = LauncherStatus::pending("vm1");
    ls.phase = Phase::Running;
    ls.interfaces = vec![InterfaceStatus {
        name: "default".into(),
        mac: "02:00:00:00:00:07".parse().unwrap(),
        interface_name: Some("eth0".into()),
        ip_address: Some("10.244.1.7".parse().unwrap()),
        ip_addresses: vec!["10.244.1.7".parse().unwrap()],
    }];
    ls
}

fn node_ctx(
    client: kube::Client,
    launcher: Result<LauncherStatus, String>,
) -> NodeContext<FakeLaunchers> {
    NodeContext {
        client,
        state_root: "/var/run/vmpod/pods".into(),
        source: FakeLaunchers(Mutex::new(vec![(
            "/var/run/vmpod/pods/ns1_vm1".into(),
            launcher,
        )])),
        poll: Duration::from_secs(3600),
        metrics: Arc::default(),
    }
}

fn running_pod() -> Arc<k8s_openapi::api::core::v1::Pod> {
    Arc::new(serde_json::from_value(pod_json(Some("Running"), Some("n1"))).unwrap())
}

#[tokio::test]
async fn node_reports_launcher_status_into_the_vmi() {
    let (client, server) = MockApiServer::start(vec![
        vmi_read(vmi_json(
            "30",
            json!({"phase": "Scheduled", "nodeName": "n1"}),
        )),
        Exchange::json(Method::PATCH, STATUS_PATH, 200, vmi_json("31", json!({}))),
    ]);
    let ctx = Arc::new(node_ctx(client, Ok(running_launcher())));
    node::reconcile(running_pod(), ctx.clone()).await.unwrap();
    assert_exposes(
        &ctx.metrics,
        &[
            "vmpod_handler_vmis{phase=\"Running\"} 1",
            "vmpod_handler_vmis{phase=\"Scheduled\"} 0",
        ],
    );
    let patch = &server.seen_on(Method::PATCH, STATUS_PATH)[0].body;
    assert_eq!(patch["metadata"]["resourceVersion"], "30");
    let status = &patch["status"];
    assert_eq!(status["phase"], "Running");
    assert_eq!(status["nodeName"], "n1");
    assert_eq!(status["interfaces"][0]["ipAddress"], "10.244.1.7");
    assert_eq!(status["interfaces"][0]["mac"], "02:00:00:00:00:07");
    assert_eq!(status["conditions"][0]["type"], "Ready");
    assert_eq!(status["conditions"][0]["status"], "True");
    assert_eq!(server.unexpected(), Vec::<String>::new());
}

#[tokio::test]
async fn node_marks_an_unreachable_launcher_not_ready() {
    let (client, server) = MockApiServer::start(vec![
        vmi_read(vmi_json("30", json!({"phase": "Running"}))),
        Exchange::json(Method::PATCH, STATUS_PATH, 200, vmi_json("31", json!({}))),
    ]);
    let ctx = Arc::new(node_ctx(client, Err("connection refused".into())));
    node::reconcile(running_pod(), ctx).await.unwrap();
    let status = &server.seen_on(Method::PATCH, STATUS_PATH)[0].body["status"];
    assert_eq!(status["phase"], "Running", "phase kept");
    assert_eq!(status["conditions"][0]["status"], "False");
    assert_eq!(status["conditions"][0]["reason"], "LauncherUnreachable");
    assert_eq!(status["conditions"][0]["message"], "connection refused");
}

#[tokio::test]
async fn node_restart_relists_and_loses_nothing() {
    let all_pods = "/api/v1/pods";
    let pod_list = json!({"apiVersion": "v1", "kind": "PodList",
        "metadata": {"resourceVersion": "40"},
        "items": [pod_json(Some("Running"), Some("n1"))]});
    let start = |vmi: Value, patch: bool| {
        let (_feed, stream) = watch_feed();
        let mut script = vec![
            Exchange::json(Method::GET, all_pods, 200, pod_list.clone()),
            Exchange::watch(all_pods, stream),
            vmi_read(vmi),
        ];
        if patch {
            script.push(Exchange::json(
                Method::PATCH,
                STATUS_PATH,
                200,
                vmi_json("42", json!({})),
            ));
        }
        let (client, server) = MockApiServer::start(script);
        let ctx = node_ctx(client.clone(), Ok(running_launcher()));
        let metrics = ctx.metrics.clone();
        let run = tokio::spawn(async move { node::run(client, "n1", ctx).await });
        (server, run, _feed, metrics)
    };

    // First life: the pod is listed, the launcher is read, the status is written.
    let (server, run, _feed, _) = start(vmi_json("41", json!({"phase": "Scheduled"})), true);
    let lists = server.wait_for(Method::GET, all_pods, 1).await;
    assert!(
        lists[0].query.contains("fieldSelector=spec.nodeName%3Dn1"),
        "{}",
        lists[0].query
    );
    let patch = server.wait_for(Method::PATCH, STATUS_PATH, 1).await[0].body["status"].clone();
    run.abort();

    // Second life, after a restart: the VMI already holds that status; re-listing and
    // re-reading the launcher gives the same status, so nothing needs patching.
    let mut stored: Value = patch.clone();
    stored.as_object_mut().unwrap().retain(|_, v| !v.is_null());
    let (server, run, _feed, metrics) = start(vmi_json("42", stored), false);
    server.wait_for(Method::GET, VMI_PATH, 1).await;
    wait_finished_reconciles(&metrics, 1).await;
    assert!(server.seen_on(Method::PATCH, STATUS_PATH).is_empty());
    assert_eq!(server.unexpected(), Vec::<String>::new());
    assert_eq!(patch["interfaces"][0]["ipAddress"], "10.244.1.7");
    run.abort();
}

/// The shipped DaemonSet and Deployment invoke the handler with arguments it accepts.
#[test]
fn shipped_manifests_use_arguments_the_handler_accepts() {
    use clap::Parser;
    #[derive(Parser)]
    struct Node {
        #[command(flatten)]
        args: super::NodeArgs,
    }
    #[derive(Parser)]
    struct Ctl {
        #[command(flatten)]
        args: super::ControllerArgs,
    }
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    // The container's argv after `vmpod-handler`, and the port it declares.
    let container = |file: &str, role: &str| -> (Vec<String>, Option<u64>) {
        let text = std::fs::read_to_string(manifests.join(file)).unwrap();
        let doc: Value = serde_yaml::from_str(&text).unwrap();
        let c = &doc["spec"]["template"]["spec"]["containers"][0];
        let command: Vec<String> = serde_json::from_value(c["command"].clone()).unwrap();
        assert_eq!(command[..2], ["vmpod-handler", role], "{file}");
        (
            command[1..].to_vec(),
            c["ports"][0]["containerPort"].as_u64(),
        )
    };
    // Prometheus scrapes the declared port from off the pod: the process must listen there.
    let reachable = |addr: std::net::SocketAddr, port: Option<u64>| {
        assert!(
            addr.ip().is_unspecified(),
            "{addr}: only reachable in the pod"
        );
        assert_eq!(Some(u64::from(addr.port())), port, "{addr}");
    };

    let (mut argv, port) = container("handler-daemonset.yaml", "node");
    argv.extend(["--node-name".to_string(), "n1".to_string()]);
    let node = Node::try_parse_from(argv).unwrap().args;
    assert_eq!(node.state_root, super::launcher_pod::DEFAULT_STATE_ROOT);
    reachable(node.metrics_addr, port);

    let (argv, port) = container("controller.yaml", "controller");
    reachable(Ctl::try_parse_from(argv).unwrap().args.metrics_addr, port);
}
