//! The controller and the node daemon against the scripted mock API server: pod creation,
//! status patches with resourceVersion, a 409 conflict, watch events driving reconciles,
//! an invalid VMI, and a node daemon restart that re-lists and loses nothing.

use super::controller::{self, ControllerContext};
use super::fixtures::{
    ALL_PODS, ALL_VMIS, Exchange, MockApiServer, WatchFeed, controller_start, watch_feed,
};
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
const SECRETS_PATH: &str = "/api/v1/namespaces/ns1/secrets";
const POD_UID: &str = "0f6c5e4e-pod-uid-1";

fn vmi_json(resource_version: &str, status: Value) -> Value {
    json!({
        "apiVersion": "vmpod.io/v1alpha1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": "vm1", "namespace": "ns1", "uid": "00000000-0000-4000-8000-000000000001",
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
            "uid": POD_UID,
            "labels": {"app.kubernetes.io/name": "vmpod-launcher", "vmpod.io/vmi": "vm1"},
            "ownerReferences": [{"apiVersion": "vmpod.io/v1alpha1",
                "kind": "VirtualMachineInstance", "name": "vm1", "uid": "00000000-0000-4000-8000-000000000001",
                "controller": true, "blockOwnerDeletion": true}],
        },
        "spec": {"containers": [{"name": "compute", "image": "vmpod:dev"}], "nodeName": node},
        "status": {"phase": phase},
    })
}

fn pod_not_found() -> Exchange {
    Exchange::error(Method::GET, POD_PATH, 404, "NotFound", "no pod")
}

/// The node daemon's read of the VMI.
fn vmi_read(vmi: Value) -> Exchange {
    Exchange::json(Method::GET, VMI_PATH, 200, vmi)
}

/// The API server the running controller talks to: empty lists of VMIs and pods, then
/// their watches (fed through the returned VMI and pod feeds), then `then`.
fn controller_api(
    then: impl IntoIterator<Item = Exchange>,
) -> (WatchFeed, WatchFeed, kube::Client, MockApiServer) {
    let (vmi_feed, pod_feed, mut script) = controller_start(Vec::new(), Vec::new());
    script.extend(then);
    let (client, server) = MockApiServer::start(script);
    (vmi_feed, pod_feed, client, server)
}

/// The node's pod list: the launcher pod running on n1.
fn running_pod_list() -> Value {
    json!({"apiVersion": "v1", "kind": "PodList",
        "metadata": {"resourceVersion": "40"},
        "items": [pod_json(Some("Running"), Some("n1"))]})
}

/// The cloud-init Secret created.
fn secret_created() -> Exchange {
    Exchange::json(
        Method::POST,
        SECRETS_PATH,
        201,
        json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "vmpod-launcher-vm1-cloudinit", "namespace": "ns1"}}),
    )
}

fn pod_created() -> Exchange {
    Exchange::json(Method::POST, PODS_PATH, 201, pod_json(None, None))
}

/// The VMI of [`vmi_json`] with a cloud-init disk carrying `user_data`.
fn vmi_with_cloud_init(user_data: &str) -> Value {
    let mut v = vmi_json("10", json!({}));
    v["spec"]["domain"]["devices"] = json!({"disks": [{"name": "ci"}]});
    v["spec"]["volumes"] = json!([{"name": "ci", "cloudInitNoCloud": {"userData": user_data}}]);
    v
}

/// A status patch refused with 409 Conflict.
fn status_conflict() -> Exchange {
    Exchange::error(Method::PATCH, STATUS_PATH, 409, "Conflict", "modified")
}

/// The VMI read again after a conflict: resourceVersion 11, no status.
fn status_reread() -> Exchange {
    Exchange::json(Method::GET, STATUS_PATH, 200, vmi_json("11", json!({})))
}

/// A status patch accepted, the VMI now at `resource_version`.
fn status_patched(resource_version: &str) -> Exchange {
    Exchange::json(
        Method::PATCH,
        STATUS_PATH,
        200,
        vmi_json(resource_version, json!({})),
    )
}

/// The requests the mock server saw, as `METHOD PATH`, in order.
fn requests(server: &MockApiServer) -> Vec<String> {
    server
        .seen()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

fn controller_ctx(client: kube::Client) -> Arc<ControllerContext> {
    Arc::new(ControllerContext {
        client,
        config: LauncherPodConfig::default(),
        metrics: Arc::default(),
        backoff: Default::default(),
    })
}

#[tokio::test]
async fn controller_creates_the_pod_and_retries_a_status_conflict() {
    let (client, server) = MockApiServer::start(vec![
        pod_not_found(),
        pod_created(),
        status_conflict(),
        status_reread(),
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
    assert_eq!(owner["uid"], "00000000-0000-4000-8000-000000000001");
    assert_eq!(owner["kind"], "VirtualMachineInstance");
    assert_eq!(owner["controller"], true);
    assert_eq!(owner["blockOwnerDeletion"], true);
    let handed = posted["metadata"]["annotations"][VMI_ANNOTATION]
        .as_str()
        .unwrap();
    if let Err(e) = vmpod::api::load_valid_vmi(handed) {
        panic!("{e:?}\n{handed}");
    }

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
    let order = requests(&server);
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

/// A VMI with cloud-init data: the controller creates the Secret (owned by the VMI) before
/// the Pod that mounts it, and the user data is in the Secret, not in the Pod.
#[tokio::test]
async fn controller_creates_the_cloud_init_secret_before_the_pod() {
    let (client, server) = MockApiServer::start(vec![
        pod_not_found(),
        secret_created(),
        pod_created(),
        status_patched("11"),
    ]);
    let vmi: VirtualMachineInstance =
        serde_json::from_value(vmi_with_cloud_init("#cloud-config\npassword: s3cret\n")).unwrap();
    controller::reconcile(Arc::new(vmi), controller_ctx(client))
        .await
        .unwrap();
    let order = requests(&server);
    assert_eq!(
        order[..3],
        [
            format!("GET {POD_PATH}"),
            format!("POST {SECRETS_PATH}"),
            format!("POST {PODS_PATH}"),
        ]
    );
    let secret = &server.seen_on(Method::POST, SECRETS_PATH)[0].body;
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["uid"],
        "00000000-0000-4000-8000-000000000001"
    );
    // base64 of the user data
    assert_eq!(
        secret["data"]["userdata"],
        "I2Nsb3VkLWNvbmZpZwpwYXNzd29yZDogczNjcmV0Cg=="
    );
    let pod = &server.seen_on(Method::POST, PODS_PATH)[0].body;
    assert!(!pod.to_string().contains("s3cret"), "{pod}");
    assert_eq!(server.unexpected(), Vec::<String>::new());
}

/// A Secret left by an older VMI of the same name (still being garbage-collected): no pod
/// yet, try again later.
#[tokio::test]
async fn controller_waits_for_an_older_vmis_secret_to_go() {
    let (client, server) = MockApiServer::start(vec![
        pod_not_found(),
        Exchange::error(
            Method::POST,
            SECRETS_PATH,
            409,
            "AlreadyExists",
            "secrets \"vmpod-launcher-vm1-cloudinit\" already exists",
        ),
        Exchange::json(
            Method::GET,
            &format!("{SECRETS_PATH}/vmpod-launcher-vm1-cloudinit"),
            200,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {
                "name": "vmpod-launcher-vm1-cloudinit", "namespace": "ns1",
                "ownerReferences": [{"apiVersion": "vmpod.io/v1alpha1",
                    "kind": "VirtualMachineInstance", "name": "vm1", "uid": "uid-0",
                    "controller": true}]}}),
        ),
    ]);
    let vmi: VirtualMachineInstance = serde_json::from_value(vmi_with_cloud_init("x")).unwrap();
    controller::reconcile(Arc::new(vmi), controller_ctx(client))
        .await
        .unwrap();
    assert!(server.seen_on(Method::POST, PODS_PATH).is_empty());
    assert_eq!(server.unexpected(), Vec::<String>::new());
}

#[tokio::test]
async fn controller_gives_up_after_repeated_conflicts() {
    let mut script = vec![Exchange::json(
        Method::GET,
        POD_PATH,
        200,
        pod_json(Some("Pending"), None),
    )];
    for _ in 0..4 {
        script.push(status_conflict());
        script.push(status_reread());
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
    let (client, server) = MockApiServer::start(vec![pod_not_found(), status_patched("11")]);
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
    let (vmi_feed, pod_feed, client, server) = controller_api([
        // ADDED VMI: no pod yet -> create it -> Scheduling.
        pod_not_found(),
        pod_created(),
        status_patched("11"),
        // MODIFIED pod (Running on n1) -> Scheduled with the node.
        Exchange::json(
            Method::GET,
            POD_PATH,
            200,
            pod_json(Some("Running"), Some("n1")),
        ),
        status_patched("12"),
    ]);
    let metrics = Arc::new(Metrics::default());
    let run = tokio::spawn(controller::run(
        client,
        LauncherPodConfig::default(),
        metrics.clone(),
    ));

    server.wait_for(Method::GET, ALL_VMIS, 2).await; // list, then watch
    vmi_feed.send("ADDED", vmi_json("10", json!({})));
    let patches = server.wait_for(Method::PATCH, STATUS_PATH, 1).await;
    assert_eq!(patches[0].body["status"]["phase"], "Scheduling");
    assert_eq!(server.seen_on(Method::POST, PODS_PATH).len(), 1);

    server.wait_for(Method::GET, ALL_PODS, 2).await;
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

/// The Pod and Secret the controller creates (as POSTed to the mock API server) for the
/// test guest's VMI with `acceleration`, its state hostPath at `state_root`.
fn controller_objects(
    acceleration: &str,
    state_root: &Path,
) -> (
    k8s_openapi::api::core::v1::Pod,
    k8s_openapi::api::core::v1::Secret,
) {
    use crate::test_runner::launcher::testguest_vmi;
    let manifest = testguest_vmi("vm1", "#cloud-config\n", false, 20, None).replace(
        "vmpod.io/acceleration: emulation",
        &format!("vmpod.io/acceleration: {acceleration}"),
    );
    let mut vmi = vmpod::api::load_vmi(&manifest).unwrap();
    vmi.metadata.namespace = Some("ns1".into());
    // The API server's UIDs are UUIDs (libvirt takes the VMI's as the domain's).
    vmi.metadata.uid = Some("6d2c9a4e-5b1f-4c3e-9a7d-0e8f1b2c3d4e".into());
    vmi.metadata.resource_version = Some("10".into());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (pod, secret) = rt.block_on(async {
        let (client, server) = MockApiServer::start(vec![
            pod_not_found(),
            secret_created(),
            pod_created(),
            status_patched("11"),
        ]);
        let ctx = Arc::new(ControllerContext {
            client,
            config: LauncherPodConfig {
                state_root: state_root.to_str().unwrap().into(),
                ..LauncherPodConfig::default()
            },
            metrics: Arc::default(),
            backoff: Default::default(),
        });
        controller::reconcile(Arc::new(vmi), ctx).await.unwrap();
        assert_eq!(server.unexpected(), Vec::<String>::new());
        (
            server.seen_on(Method::POST, PODS_PATH)[0].body.clone(),
            server.seen_on(Method::POST, SECRETS_PATH)[0].body.clone(),
        )
    });
    (
        serde_json::from_value(pod).unwrap(),
        serde_json::from_value(secret).unwrap(),
    )
}

/// What a runner test starts from: the test images built, the controller's Pod (no
/// device by hostPath) and Secret for `acceleration` with their state under
/// `state_root`, and a runner node whose devices come from `vmpod-handler node`'s device
/// plugins (the real /dev paths, 4 slots each) through a kubelet that asks their Allocate.
/// Fields drop in this order: the state root goes last.
struct RunnerSetup {
    plugins: Arc<crate::deviceplugin::test_kubelet::NodeDevicePlugins>,
    node: crate::test_runner::ClusterNode,
    pod: k8s_openapi::api::core::v1::Pod,
    secret: k8s_openapi::api::core::v1::Secret,
    state_root: tempfile::TempDir,
}

fn runner_setup(acceleration: &str) -> RunnerSetup {
    crate::test_runner::ensure_images();
    let state_root = tempfile::tempdir().unwrap();
    let (pod, secret) = controller_objects(acceleration, state_root.path());
    assert_no_hostpath_devices(&pod);
    let plugins = Arc::new(crate::deviceplugin::test_kubelet::NodeDevicePlugins::start(
        crate::deviceplugin::node_devices(4),
    ));
    let mut node = crate::test_runner::ClusterNode::create();
    node.devices = Some(plugins.clone());
    RunnerSetup {
        plugins,
        node,
        pod,
        secret,
        state_root,
    }
}

/// No volume of `pod` is a hostPath device: its devices come from the device plugin.
fn assert_no_hostpath_devices(pod: &k8s_openapi::api::core::v1::Pod) {
    let volumes = pod.spec.as_ref().unwrap().volumes.as_ref().unwrap();
    let devices: Vec<_> = volumes
        .iter()
        .filter(|v| {
            v.host_path
                .as_ref()
                .is_some_and(|h| h.path.starts_with("/dev"))
        })
        .collect();
    assert!(devices.is_empty(), "{devices:?}");
}

/// Deliverable 6 (issue 11) and issue 16: the Pod and Secret the controller creates run
/// under the kubelet-shaped runner, /dev/net/tun given to both containers by the device
/// plugin's Allocate (vmpod.io/tun), not by a hostPath: the test guest boots from images,
/// leases the pod IP, powers off, and the pod ends Succeeded with nothing left behind.
#[test]
fn the_pod_the_controller_creates_runs_under_the_runner() {
    use crate::test_runner::launcher::run_to_guest_power_off;
    if !crate::support::privileged("the_pod_the_controller_creates_runs_under_the_runner") {
        return;
    }
    let s = runner_setup("emulation");
    run_to_guest_power_off(&s.node, &s.pod, &[s.secret], s.state_root.path());
    assert_eq!(
        *s.plugins.allocations.lock().unwrap(),
        [
            ("vmpod.io/tun".to_string(), 1),
            ("vmpod.io/tun".to_string(), 1)
        ],
        "net-setup's, then compute's"
    );
}

/// Issue 16: a launcher pod asking for KVM gets /dev/kvm (and /dev/vhost-net) from the
/// device plugin and its guest runs under KVM. Skipped, with the reason, where this host's
/// KVM (or vhost-net) does not work: that is the host, not vmpod.
#[test]
fn a_launcher_pod_given_kvm_by_the_device_plugin_runs_its_guest_under_kvm() {
    use crate::test_runner::launcher::{BOOT, LauncherPod};
    let test = "a_launcher_pod_given_kvm_by_the_device_plugin_runs_its_guest_under_kvm";
    if !crate::support::privileged(test) {
        return;
    }
    let kvm = vmpod::domain::kvm_usable(
        Path::new(vmpod::domain::accel::KVM_DEVICE),
        Path::new(vmpod::domain::xml::EMULATOR),
    );
    let vhost = crate::deviceplugin::probe(Path::new("/dev/vhost-net"));
    if let Err(why) = kvm.and(vhost) {
        eprintln!("SKIPPED {test}: KVM is unusable on this host ({why}); not a failure");
        return;
    }
    let s = runner_setup("kvm");
    let lp = LauncherPod::start(&s.node, &s.pod, &[s.secret], s.state_root.path());
    lp.wait_report(BOOT, |r| r.lease.is_some());
    let status = vmpod::control::read_status(&lp.state_dir).unwrap();
    assert_eq!(
        status.acceleration,
        Some(vmpod::control::Acceleration::Kvm),
        "{status:?}\n{}",
        lp.diagnostics()
    );
    let mut allocated = s.plugins.allocations.lock().unwrap().clone();
    allocated.sort();
    assert_eq!(
        allocated,
        [
            ("vmpod.io/kvm".to_string(), 1),
            ("vmpod.io/tun".to_string(), 1),
            ("vmpod.io/tun".to_string(), 1),
            ("vmpod.io/vhost-net".to_string(), 1),
        ]
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
    async fn status(&self, state_dir: &Path, _pod_uid: &str) -> Result<LauncherStatus, String> {
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
            format!("/var/run/vmpod/pods/{POD_UID}"),
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
        status_patched("31"),
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
        status_patched("31"),
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
    let pod_list = running_pod_list();
    let start = |vmi: Value, patch: bool| {
        let (_feed, stream) = watch_feed();
        let mut script = vec![
            Exchange::json(Method::GET, ALL_PODS, 200, pod_list.clone()),
            Exchange::watch(ALL_PODS, stream),
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
    let lists = server.wait_for(Method::GET, ALL_PODS, 1).await;
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

/// The node daemon removes the state dirs of pods that are gone (and nothing younger than
/// the watch may have delivered), keeps live ones.
#[test]
fn stale_state_dirs_of_gone_pods_are_removed() {
    use std::collections::HashSet;
    let old = node::STATE_DIR_MIN_AGE;
    let entries = vec![
        ("live".to_string(), old * 2),
        ("gone".to_string(), old * 2),
        ("new".to_string(), Duration::from_secs(1)),
    ];
    let live: HashSet<String> = ["live".to_string()].into();
    assert_eq!(node::stale_state_dirs(&entries, &live), ["gone"]);

    let root = tempfile::tempdir().unwrap();
    for d in ["live", "gone"] {
        std::fs::create_dir_all(root.path().join(d).join("net")).unwrap();
        std::fs::write(root.path().join(d).join("status.json"), "{}").unwrap();
    }
    // Age "gone" past the minimum.
    let past = std::time::SystemTime::now() - old * 2;
    std::fs::File::open(root.path().join("gone"))
        .unwrap()
        .set_modified(past)
        .unwrap();
    let removed = node::remove_stale_state_dirs(root.path(), &live).unwrap();
    assert_eq!(removed, [root.path().join("gone")]);
    assert!(root.path().join("live/status.json").exists());
    assert!(!root.path().join("gone").exists());
    assert!(
        node::remove_stale_state_dirs(&root.path().join("missing"), &live)
            .unwrap()
            .is_empty()
    );
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
        let doc: Value = vmpod::api::yaml::from_str(&text).unwrap();
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
    assert_eq!(node.state_root, vmpod::statedir::DEFAULT_NODE_STATE_ROOT);
    reachable(node.metrics_addr, port);

    let (argv, port) = container("controller.yaml", "controller");
    reachable(Ctl::try_parse_from(argv).unwrap().args.metrics_addr, port);
}

/// What makes this test binary a stand-in launcher (see [`StandInLauncher`]): the state
/// directory to serve.
const STAND_IN_DIR: &str = "VMPOD_TEST_STAND_IN_LAUNCHER_DIR";
/// What the stand-in prints once it serves.
const STAND_IN_READY: &str = "stand-in launcher serving";

/// Not a test by itself: the entry point of [`StandInLauncher`], which runs this binary
/// again with [`STAND_IN_DIR`] set. Without it, returns at once.
#[test]
fn stand_in_launcher_process() {
    use std::io::{Read, Write};
    use vmpod::control::fake::{FakeLauncher, sample_network, sample_status};
    let Some(dir) = std::env::var_os(STAND_IN_DIR) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let fake = FakeLauncher::start(Path::new(&dir), sample_status("vm-good"), sample_network())
            .unwrap();
        // Not print!: the test harness captures that. On the harness's "test ... " line.
        writeln!(std::io::stdout(), "{STAND_IN_READY}").unwrap();
        // Serve until the parent closes stdin.
        tokio::task::spawn_blocking(|| std::io::stdin().read(&mut [0u8; 1]))
            .await
            .unwrap()
            .unwrap();
        fake.stop().await.unwrap();
    });
}

/// A launcher stand-in serving the control API from its own process, in a cgroup whose
/// path names pod `uid` as kubelet's cgroupfs driver does (`.../pod<uid>/<container>`):
/// what the node daemon's peer check sees of a real launcher. The cgroup goes with it.
struct StandInLauncher {
    child: std::process::Child,
    cgroups: Vec<std::path::PathBuf>,
}

impl StandInLauncher {
    fn start(dir: &Path, uid: &str) -> StandInLauncher {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "cluster::tests::stand_in_launcher_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(STAND_IN_DIR, dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // A writable cgroup hierarchy: v2 (hybrid's unified, or the whole tree), else v1's.
        let root = [
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup",
            "/sys/fs/cgroup/pids",
        ]
        .into_iter()
        .map(Path::new)
        .find(|r| r.join("cgroup.procs").exists())
        .expect("no cgroup hierarchy under /sys/fs/cgroup");
        let top = root.join(format!("vmpod-test-{}-{uid}", std::process::id()));
        let leaf = top.join(format!("kubepods/burstable/pod{uid}/launcher"));
        std::fs::create_dir_all(&leaf).unwrap();
        std::fs::write(leaf.join("cgroup.procs"), child.id().to_string()).unwrap();
        let cgroups = leaf
            .ancestors()
            .take_while(|d| d.starts_with(&top))
            .map(Path::to_path_buf)
            .collect();
        let stdout = child.stdout.take().unwrap();
        let stand_in = StandInLauncher { child, cgroups };
        let mut out = std::io::BufReader::new(stdout);
        let ready = (&mut out)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.ends_with(STAND_IN_READY));
        assert!(ready, "the stand-in launcher ended before serving");
        // The harness's closing lines go somewhere.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        stand_in
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for StandInLauncher {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
        for dir in &self.cgroups {
            if let Err(e) = std::fs::remove_dir(dir) {
                eprintln!("removing cgroup {}: {e}", dir.display());
            }
        }
    }
}
/// The node daemon against hostile state directories (issue 15): pod `vm-fifo`'s
/// status.json is a FIFO, `vm-zero`'s a symlink to /dev/zero, `vm-steal`'s control.sock a
/// symlink to `vm-good`'s socket; `vm-forge`'s status.json names `vm-good`'s launcher pid
/// and its control.sock leads to `vm-good`'s socket (a hard link here: what a socket
/// swapped in after the daemon's lstat, or a bind mount, would be). Each of those gets an
/// error in its VMI's Ready condition, at once (nothing blocks), while `vm-good`, served by
/// a stand-in launcher process in its pod's cgroup, is reported with its IP; neither
/// `vm-steal` nor `vm-forge` gets `vm-good`'s address.
#[tokio::test]
async fn node_survives_hostile_state_dirs_and_keeps_reporting_the_others() {
    use vmpod::control::write_status;
    use vmpod::statedir::CONTROL_SOCKET;
    if !crate::support::privileged(
        "node_survives_hostile_state_dirs_and_keeps_reporting_the_others",
    ) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let names = ["vm-fifo", "vm-zero", "vm-steal", "vm-forge", "vm-good"];
    let uid = |i: usize| format!("00000000-0000-4000-8000-00000000010{i}");
    let dir = |i: usize| root.path().join(uid(i));
    for i in 0..names.len() {
        std::fs::create_dir(dir(i)).unwrap();
    }
    let good = StandInLauncher::start(&dir(4), &uid(4));
    let good_socket = dir(4).join(CONTROL_SOCKET);
    let mut written = LauncherStatus::pending("vm-good");
    written.pid = good.pid();
    write_status(&dir(4), &written).unwrap();
    nix::unistd::mkfifo(&dir(0).join("status.json"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir(1).join("status.json")).unwrap();
    write_status(&dir(2), &LauncherStatus::pending("vm-steal")).unwrap();
    std::os::unix::fs::symlink(&good_socket, dir(2).join(CONTROL_SOCKET)).unwrap();
    written.name = "vm-forge".into();
    write_status(&dir(3), &written).unwrap();
    std::fs::hard_link(&good_socket, dir(3).join(CONTROL_SOCKET)).unwrap();

    let vmi_path = |name: &str| {
        format!("/apis/vmpod.io/v1alpha1/namespaces/ns1/virtualmachineinstances/{name}")
    };
    let vmi_of = |i: usize| {
        let mut v = vmi_json("30", json!({"phase": "Running"}));
        v["metadata"]["name"] = json!(names[i]);
        v["metadata"]["uid"] = json!(format!("00000000-0000-4000-9000-00000000000{i}"));
        v
    };
    let pod_of = |i: usize| {
        let mut p = pod_json(Some("Running"), Some("n1"));
        p["metadata"]["name"] = json!(format!("vmpod-launcher-{}", names[i]));
        p["metadata"]["uid"] = json!(uid(i));
        p["metadata"]["labels"]["vmpod.io/vmi"] = json!(names[i]);
        p["metadata"]["ownerReferences"][0]["name"] = json!(names[i]);
        p["metadata"]["ownerReferences"][0]["uid"] = vmi_of(i)["metadata"]["uid"].clone();
        p
    };
    let mut script = Vec::new();
    for (i, name) in names.iter().enumerate() {
        script.push(Exchange::json(Method::GET, &vmi_path(name), 200, vmi_of(i)));
        script.push(Exchange::json(
            Method::PATCH,
            &format!("{}/status", vmi_path(name)),
            200,
            vmi_of(i),
        ));
    }
    let (client, server) = MockApiServer::start(script);
    let ctx = Arc::new(NodeContext {
        client,
        state_root: root.path().to_str().unwrap().into(),
        source: node::ControlSocketSource {
            timeout: Duration::from_secs(5),
        },
        poll: Duration::from_secs(3600),
        metrics: Arc::default(),
    });
    let started = std::time::Instant::now();
    for i in 0..names.len() {
        let pod = Arc::new(serde_json::from_value(pod_of(i)).unwrap());
        node::reconcile(pod, ctx.clone()).await.unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a hostile dir held the daemon for {:?}",
        started.elapsed()
    );
    let condition = |i: usize| {
        let patch = &server.seen_on(Method::PATCH, &format!("{}/status", vmi_path(names[i])))[0];
        patch.body["status"].clone()
    };
    let forged = format!(
        "control.sock: the peer, pid {}, is not in pod {}: its cgroup names pod {}",
        good.pid(),
        uid(3),
        uid(4)
    );
    for (i, want) in [
        (0, "status.json: is not a regular file"),
        (1, "status.json: open: ELOOP"),
        (2, "control.sock: is not a socket"),
        (3, forged.as_str()),
    ] {
        let status = condition(i);
        let c = &status["conditions"][0];
        assert_eq!(c["status"], "False", "{}: {status}", names[i]);
        let message = c["message"].as_str().unwrap();
        assert!(
            message.contains(&uid(i)) && message.contains(want),
            "{}: {message}",
            names[i]
        );
        assert!(
            status["interfaces"].as_array().is_none_or(Vec::is_empty),
            "{status}"
        );
    }
    let status = condition(4);
    assert_eq!(status["conditions"][0]["status"], "True", "{status}");
    assert_eq!(status["interfaces"][0]["ipAddress"], "10.22.0.5");
    assert_eq!(server.unexpected(), Vec::<String>::new());
}

/// The API server refuses the launcher pod for good (422): the VMI ends Failed with the
/// refusal in its status, not Pending forever; a 500 or a 429 is retried instead.
#[tokio::test]
async fn a_pod_the_api_server_refuses_fails_the_vmi_with_the_reason() {
    let refusal = "Pod \"vmpod-launcher-vm1\" is invalid: spec.containers[0].resources.limits: \
                   Invalid value: \"2Gi\": must be less than or equal to memory limit";
    let (client, server) = MockApiServer::start(vec![
        pod_not_found(),
        Exchange::error(Method::POST, PODS_PATH, 422, "Invalid", refusal),
        status_patched("11"),
    ]);
    let ctx = controller_ctx(client);
    let action = controller::reconcile(Arc::new(vmi("10")), ctx.clone())
        .await
        .expect("a permanent refusal is an outcome, not an error to retry");
    assert_eq!(action, kube::runtime::controller::Action::await_change());
    let status = &server.seen_on(Method::PATCH, STATUS_PATH)[0].body["status"];
    assert_eq!(status["phase"], "Failed", "{status}");
    assert_eq!(status["reason"], "FailedCreate");
    let condition = &status["conditions"][0];
    assert_eq!(condition["type"], "Synchronized");
    assert_eq!(condition["status"], "False");
    assert_eq!(
        condition["message"],
        format!("create Pod ns1/vmpod-launcher-vm1: 422 Invalid: {refusal}")
    );
    assert_eq!(server.unexpected(), Vec::<String>::new());

    for (code, reason) in [(500, "InternalError"), (429, "TooManyRequests")] {
        let (client, server) = MockApiServer::start(vec![
            pod_not_found(),
            Exchange::error(Method::POST, PODS_PATH, code, reason, "try again"),
        ]);
        let e = controller::reconcile(Arc::new(vmi("10")), controller_ctx(client))
            .await
            .expect_err("retried");
        assert!(e.permanent().is_none(), "{code}: {e}");
        assert!(server.seen_on(Method::PATCH, STATUS_PATH).is_empty());
    }
}

/// A failing VMI is retried 5 s, 10 s, 20 s, ... up to 5 min after each failure in a row;
/// a successful reconcile starts it over, and other VMIs keep their own count.
#[tokio::test]
async fn controller_backs_off_per_vmi_and_resets_on_success() {
    use super::{BACKOFF_MAX, backoff_delay};
    use kube::runtime::controller::Action;
    let secs = |s| Duration::from_secs(s);
    assert_eq!(
        (1..=8).map(backoff_delay).collect::<Vec<_>>(),
        [5, 10, 20, 40, 80, 160, 300, 300].map(secs)
    );
    assert_eq!(backoff_delay(u32::MAX), BACKOFF_MAX);

    let (client, server) =
        MockApiServer::start(vec![pod_not_found(), pod_created(), status_patched("11")]);
    let ctx = controller_ctx(client);
    let err = super::ReconcileError::Unaddressable("VirtualMachineInstance");
    let delays: Vec<Action> = (0..3)
        .map(|_| controller::error_policy(Arc::new(vmi("10")), &err, ctx.clone()))
        .collect();
    assert_eq!(delays, [5, 10, 20].map(|s| Action::requeue(secs(s))));
    let mut other = vmi("10");
    other.metadata.name = Some("vm2".into());
    assert_eq!(
        controller::error_policy(Arc::new(other), &err, ctx.clone()),
        Action::requeue(secs(5)),
        "another VMI has its own count"
    );
    controller::reconcile(Arc::new(vmi("10")), ctx.clone())
        .await
        .unwrap();
    assert_eq!(server.unexpected(), Vec::<String>::new());
    assert_eq!(
        controller::error_policy(Arc::new(vmi("10")), &err, ctx),
        Action::requeue(secs(5)),
        "a success resets the back-off"
    );
}

/// `(resource, verb)` pairs granted to ClusterRole `role` in manifests/rbac.yaml, resource
/// as `group/resource[/subresource]` (core group: empty).
fn rbac_grants(role: &str) -> std::collections::BTreeSet<(String, String)> {
    let text = include_str!("../../../manifests/rbac.yaml");
    let docs: Vec<Value> = vmpod::api::yaml::documents(text).unwrap();
    let doc = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == role)
        .unwrap_or_else(|| panic!("no ClusterRole {role}"));
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let mut grants = std::collections::BTreeSet::new();
    for rule in doc["rules"].as_array().unwrap() {
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    grants.insert((format!("{group}/{resource}"), verb));
                }
            }
        }
    }
    grants
}

/// The `(resource, verb)` an API request needs (the form of [`rbac_grants`]).
fn rbac_need(r: &super::fixtures::Recorded) -> (String, String) {
    let parts: Vec<&str> = r.path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => panic!("not an API path: {}", r.path),
    };
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] => rest,
        rest => rest,
    };
    let (resource, named) = match rest {
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, sub] => (format!("{resource}/{sub}"), true),
        _ => panic!("unexpected API path {}", r.path),
    };
    let verb = match (&r.method, named) {
        (&Method::GET, true) => "get",
        (&Method::GET, false) if r.query.contains("watch=true") => "watch",
        (&Method::GET, false) => "list",
        (&Method::POST, _) => "create",
        (&Method::PATCH, _) => "patch",
        (&Method::PUT, _) => "update",
        (&Method::DELETE, _) => "delete",
        (m, _) => panic!("unexpected method {m}"),
    };
    (format!("{group}/{resource}"), verb.to_string())
}

/// RBAC lists exactly what the handlers call: each request the controller and the node
/// daemon make in these scenarios is granted to its role, and each grant is used by one.
#[tokio::test]
async fn rbac_grants_exactly_what_the_handlers_call() {
    use std::collections::BTreeSet;
    let secret = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "vmpod-launcher-vm1-cloudinit", "namespace": "ns1"}});
    let with_cloud_init = vmi_with_cloud_init("#cloud-config\n");

    // The controller: watch, then a VMI whose Secret exists already (get) and whose
    // status patch conflicts once (re-read).
    let (vmi_feed, _pod_feed, client, server) = controller_api([
        pod_not_found(),
        Exchange::error(Method::POST, SECRETS_PATH, 409, "AlreadyExists", "exists"),
        Exchange::json(
            Method::GET,
            &format!("{SECRETS_PATH}/vmpod-launcher-vm1-cloudinit"),
            200,
            {
                let mut s = secret.clone();
                s["metadata"]["ownerReferences"] =
                    pod_json(None, None)["metadata"]["ownerReferences"].clone();
                s
            },
        ),
        pod_created(),
        status_conflict(),
        status_reread(),
        status_patched("12"),
    ]);
    let run = tokio::spawn(controller::run(
        client,
        LauncherPodConfig::default(),
        Arc::default(),
    ));
    server.wait_for(Method::GET, ALL_VMIS, 2).await;
    server.wait_for(Method::GET, ALL_PODS, 2).await;
    vmi_feed.send("ADDED", with_cloud_init);
    server.wait_for(Method::PATCH, STATUS_PATH, 2).await;
    run.abort();
    assert_eq!(server.unexpected(), Vec::<String>::new());
    let used: BTreeSet<_> = server.seen().iter().map(rbac_need).collect();
    assert_eq!(used, rbac_grants("vmpod-controller"), "controller");

    // The node daemon: watch its pods, read a VMI, patch its status after a conflict.
    let pod_list = running_pod_list();
    let (_feed, stream) = watch_feed();
    let (client, server) = MockApiServer::start(vec![
        Exchange::json(Method::GET, ALL_PODS, 200, pod_list),
        Exchange::watch(ALL_PODS, stream),
        vmi_read(vmi_json("41", json!({"phase": "Scheduled"}))),
        status_conflict(),
        Exchange::json(
            Method::GET,
            STATUS_PATH,
            200,
            vmi_json("42", json!({"phase": "Scheduled"})),
        ),
        status_patched("43"),
    ]);
    let ctx = node_ctx(client.clone(), Ok(running_launcher()));
    let run = tokio::spawn(async move { node::run(client, "n1", ctx).await });
    server.wait_for(Method::PATCH, STATUS_PATH, 2).await;
    run.abort();
    assert_eq!(server.unexpected(), Vec::<String>::new());
    let used: BTreeSet<_> = server.seen().iter().map(rbac_need).collect();
    assert_eq!(used, rbac_grants("vmpod-handler"), "node daemon");
}

/// One ownership rule for the controller and the node daemon: the VMI's UID with the
/// controller flag; another VMI's UID or a plain (non-controller) reference is not ours.
#[test]
fn ownership_needs_the_vmis_uid_and_the_controller_flag() {
    let pod_with = |edit: fn(&mut Value)| -> k8s_openapi::api::core::v1::Pod {
        let mut p = pod_json(None, None);
        edit(&mut p["metadata"]["ownerReferences"][0]);
        serde_json::from_value(p).unwrap()
    };
    let vmi = vmi("10");
    assert!(super::owned_by(&pod_with(|_| {}), &vmi));
    assert!(!super::owned_by(
        &pod_with(|o| o["controller"] = json!(false)),
        &vmi
    ));
    assert!(!super::owned_by(
        &pod_with(|o| {
            o.as_object_mut().unwrap().remove("controller");
        }),
        &vmi
    ));
    assert!(!super::owned_by(
        &pod_with(|o| o["uid"] = json!("00000000-0000-4000-8000-000000000002")),
        &vmi
    ));
}
