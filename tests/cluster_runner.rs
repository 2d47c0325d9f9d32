//! The kubelet-shaped runner (tests/cluster/) on its own, with simple Pods of the vmpod
//! image: what it refuses, and that what it accepts reaches the container as the Pod says
//! (capabilities, no-new-privileges, seccomp, user, read-only root, memory limit, downward
//! API and Secret files, emptyDir sizeLimit, subPathExpr on a hostPath, init container
//! order, the pod's sysctls, the stop grace period).
mod cluster;
mod support;

use cluster::spec::{NodeFacts, PodFacts, plan_pod};
use cluster::{ClusterNode, ensure_images, privileged_node};
use k8s_openapi::api::core::v1::{Pod, Secret};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

const IMAGE: &str = "localhost/vmpod:dev";

fn facts() -> PodFacts {
    PodFacts {
        uid: "u-1".into(),
        name: "p".into(),
        namespace: "ns".into(),
        labels: BTreeMap::new(),
        annotations: BTreeMap::from([("a/b".into(), "hello".into())]),
        node_name: "n".into(),
        pod_ip: "10.0.0.2".into(),
    }
}

fn minimal(container: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"restartPolicy": "Never", "automountServiceAccountToken": false,
                    "containers": [container]}})
}

fn plan_error(pod: Value) -> String {
    plan_pod(&pod, &facts(), &NodeFacts::default(), &BTreeMap::new())
        .unwrap_err()
        .to_string()
}

#[test]
fn the_runner_refuses_what_it_cannot_honour() {
    let c = json!({"name": "c", "image": IMAGE});
    let mut p = minimal(c.clone());
    p["spec"]["hostNetwork"] = json!(true);
    assert_eq!(
        plan_error(p),
        "spec.hostNetwork: the runner cannot honour this field"
    );
    let mut c2 = c.clone();
    c2["securityContext"] = json!({"procMount": "Unmasked"});
    assert!(plan_error(minimal(c2)).starts_with("spec.containers[0].securityContext.procMount"));
    let mut p = minimal(c.clone());
    p["spec"]["volumes"] = json!([{"name": "v", "nfs": {"server": "x", "path": "/"}}]);
    assert!(plan_error(p).contains("spec.volumes[0].nfs"));
    let mut c3 = c.clone();
    c3["resources"] = json!({"limits": {"nvidia.com/gpu": "1"}});
    assert!(
        plan_error(minimal(c3)).contains("no device plugin on this node offers nvidia.com/gpu")
    );
    let mut p = minimal(c.clone());
    p["spec"]["restartPolicy"] = json!("Always");
    assert!(plan_error(p).starts_with("spec.restartPolicy"));
    let mut p = minimal(c.clone());
    p["spec"]["volumes"] = json!([{"name": "s", "secret": {"secretName": "missing"}}]);
    assert!(plan_error(p).contains("Secret \"missing\" was not given"));
    let mut c4 = c;
    c4["volumeMounts"] = json!([{"name": "h", "mountPath": "/h", "subPathExpr": "$(NOPE)"}]);
    let mut p = minimal(c4);
    p["spec"]["volumes"] = json!([{"name": "h", "hostPath": {"path": "/tmp"}}]);
    assert!(plan_error(p).contains("undefined variable"));
}

/// Pod sysctls as the kubelet admits them: a safe one always, an unsafe one only when
/// the node allows it (`--allowed-unsafe-sysctls`), a non-network one never (the runner
/// sets sysctls in the pod's network namespace only).
#[test]
fn pod_sysctls_are_planned_as_the_kubelet_admits_them() {
    let with = |sysctls: Value| {
        let mut p = minimal(json!({"name": "c", "image": IMAGE}));
        p["spec"]["securityContext"] = json!({ "sysctls": sysctls });
        p
    };
    let forwarding = json!([{"name": "net.ipv6.conf.all.forwarding", "value": "1"}]);
    let e = plan_error(with(forwarding.clone()));
    assert!(
        e.starts_with(
            "spec.securityContext.sysctls[0].name: net.ipv6.conf.all.forwarding is unsafe"
        ) && e.contains("--allowed-unsafe-sysctls"),
        "{e}"
    );
    let allowing = NodeFacts {
        allowed_unsafe_sysctls: vec!["net.ipv6.conf.all.forwarding".into()],
        ..NodeFacts::default()
    };
    let plan = plan_pod(&with(forwarding), &facts(), &allowing, &BTreeMap::new()).unwrap();
    assert_eq!(
        plan.sysctls,
        [("net.ipv6.conf.all.forwarding".to_string(), "1".to_string())]
    );
    let safe = json!([{"name": "net.ipv4.tcp_syncookies", "value": "1"}]);
    let plan = plan_pod(
        &with(safe),
        &facts(),
        &NodeFacts::default(),
        &BTreeMap::new(),
    )
    .unwrap();
    assert_eq!(plan.sysctls.len(), 1);
    let e = plan_error(with(
        json!([{"name": "kernel.shm_rmid_forced", "value": "1"}]),
    ));
    assert!(e.contains("network sysctls only"), "{e}");
    let mut p = minimal(json!({"name": "c", "image": IMAGE}));
    p["spec"]["securityContext"] = json!({"runAsUser": 0});
    assert_eq!(
        plan_error(p),
        "spec.securityContext.runAsUser: the runner cannot honour this field"
    );
}

#[test]
fn extended_resources_are_planned_against_what_the_node_offers() {
    let node = NodeFacts {
        extended_resources: BTreeMap::from([("vmpod.io/tun".into(), 4)]),
        ..NodeFacts::default()
    };
    let plan = |res: Value| {
        let p = minimal(json!({"name": "c", "image": IMAGE, "resources": res}));
        plan_pod(&p, &facts(), &node, &BTreeMap::new())
    };
    let ok = plan(json!({"limits": {"vmpod.io/tun": "2"}, "requests": {"vmpod.io/tun": 2}}));
    assert_eq!(
        ok.unwrap().containers[0].devices,
        BTreeMap::from([("vmpod.io/tun".to_string(), 2)]),
        "allocated when the container starts, not a flag of the plan"
    );
    let err = |res| plan(res).unwrap_err().to_string();
    assert!(err(json!({"limits": {"vmpod.io/tun": "5"}})).contains("5 wanted, the node has 4"));
    assert!(
        err(json!({"limits": {"vmpod.io/tun": "1"}, "requests": {"vmpod.io/tun": "2"}}))
            .contains("requests/limits")
    );
    assert!(err(json!({"limits": {"vmpod.io/tun": "500m"}})).contains("a whole number"));
    assert!(
        err(json!({"limits": {"vmpod.io/kvm": "1"}}))
            .contains("no device plugin on this node offers vmpod.io/kvm")
    );
}

#[test]
fn capabilities_follow_the_runtime_default_set_then_drop_and_add() {
    let flags = |sc: Value| {
        let p = minimal(json!({"name": "c", "image": IMAGE, "securityContext": sc}));
        let plan = plan_pod(&p, &facts(), &NodeFacts::default(), &BTreeMap::new()).unwrap();
        plan.containers[0].flags.join(" ")
    };
    let f = flags(json!({"capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}));
    assert!(
        f.starts_with(
            "--cap-drop ALL --cap-add NET_BIND_SERVICE --security-opt seccomp=unconfined"
        ),
        "{f}"
    );
    let f = flags(json!({"capabilities": {"drop": ["NET_RAW"]}}));
    assert!(
        f.contains("--cap-add CHOWN") && !f.contains("NET_RAW"),
        "{f}"
    );
    let f = flags(json!({"privileged": true}));
    assert!(f.starts_with("--privileged"), "{f}");
    assert!(!f.contains("--cap-add"), "{f}");
    let f = flags(
        json!({"allowPrivilegeEscalation": false, "seccompProfile": {"type": "RuntimeDefault"}}),
    );
    assert!(f.contains("no-new-privileges"), "{f}");
    assert!(
        f.contains("seccomp=/usr/share/containers/seccomp.json"),
        "{f}"
    );
}

#[test]
fn variables_expand_as_kubelet_expands_them() {
    use cluster::spec::expand;
    let env = vec![
        ("POD_UID".to_string(), "u-1".to_string()),
        ("A".to_string(), "x".to_string()),
    ];
    assert_eq!(expand("$(POD_UID)", &env), "u-1");
    assert_eq!(expand("a/$(A)/$(A)b", &env), "a/x/xb");
    assert_eq!(expand("$$(A)", &env), "$(A)", "$$ escapes");
    assert_eq!(
        expand("$(NOPE) $A", &env),
        "$(NOPE) $A",
        "unknown stays as written"
    );
}

/// Bits of `CapEff:` in /proc/self/status -> capability numbers.
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;

fn status_field<'a>(log: &'a str, key: &str) -> &'a str {
    log.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key} in:\n{log}"))
}

/// A hostPath char device is a bind mount, as under kubelet: the device cgroup of an
/// unprivileged container refuses /dev/kvm (a device plugin's Allocate is the way in), and
/// lets the runtime's default devices such as /dev/net/tun through.
#[test]
fn a_host_path_device_is_only_a_mount() {
    if !support::privileged("a_host_path_device_is_only_a_mount") {
        return;
    }
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED a_host_path_device_is_only_a_mount: this host has no /dev/kvm");
        return;
    }
    ensure_images();
    let node = ClusterNode::create();
    let script = r#"
for d in /dev/kvm /dev/net/tun; do
  if (exec 3<>"$d") 2>/dev/null; then echo "$d=opens"; else echo "$d=refused"; fi
done
"#;
    let device = |name: &str, path: &str| json!({"name": name, "hostPath": {"path": path, "type": "CharDevice"}});
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hostpath-dev"},
        "spec": {
            "restartPolicy": "Never", "automountServiceAccountToken": false,
            "containers": [{
                "name": "main", "image": IMAGE, "command": ["sh", "-c", script],
                "securityContext": {"runAsUser": 0, "capabilities": {"drop": ["ALL"]}},
                "volumeMounts": [
                    {"name": "kvm", "mountPath": "/dev/kvm"},
                    {"name": "tun", "mountPath": "/dev/net/tun"},
                ],
            }],
            "volumes": [device("kvm", "/dev/kvm"), device("tun", "/dev/net/tun")],
        },
    });
    let pod: Pod = serde_json::from_value(pod).unwrap();
    let running = node.run_pod(&pod, &[]).expect("the pod runs");
    let exit = running.wait(Duration::from_secs(60)).unwrap();
    let log = running.logs("main");
    assert_eq!(exit.phase, "Succeeded", "{exit:?}\n{log}");
    assert_eq!(status_field(&log, "/dev/kvm="), "refused", "{log}");
    assert_eq!(status_field(&log, "/dev/net/tun="), "opens", "{log}");
}

#[test]
fn a_pod_gets_what_its_spec_says() {
    let Some(mut node) = privileged_node(ClusterNode::create) else {
        return;
    };
    node.facts.allowed_unsafe_sysctls = vec!["net.ipv6.conf.all.forwarding".into()];
    let host = tempfile::tempdir().unwrap();
    let script = r#"
set -u
echo "forwarding6=$(cat /proc/sys/net/ipv6/conf/all/forwarding)"
if (echo 0 > /proc/sys/net/ipv6/conf/all/forwarding) 2>/dev/null; then echo procsys=rw; else echo procsys=ro; fi
grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status
echo "uid=$(id -u)"
echo "marker=$(cat /work/order)"
echo "vmi=$(cat /etc/info/vmi)"
echo "uidfile=$(cat /etc/info/uid)"
echo "secret=$(cat /etc/secret/token)"
echo "secretmode=$(stat -c %a /etc/secret/token)"
echo "env_uid=$POD_UID"
echo "ip=$POD_IP"
echo "memlimit=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max)"
if touch /rootfs-write 2>/dev/null; then echo rootfs=rw; else echo rootfs=ro; fi
if touch /etc/info/x 2>/dev/null; then echo info=rw; else echo info=ro; fi
if dd if=/dev/zero of=/work/big bs=1M count=3 2>/dev/null; then echo emptydir=unbounded; else echo emptydir=full; fi
echo hello > /state/file
"#;
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "spec-check", "namespace": "ns1", "annotations": {"vmpod.io/vmi": "{\"x\":1}"}},
        "spec": {
            "restartPolicy": "Never", "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 5,
            "securityContext": {"sysctls": [{"name": "net.ipv6.conf.all.forwarding", "value": "1"}]},
            "initContainers": [{
                "name": "first", "image": IMAGE, "command": ["sh", "-c"],
                "args": ["echo init-ran > /work/order"],
                "volumeMounts": [{"name": "work", "mountPath": "/work"}],
            }],
            "containers": [{
                "name": "main", "image": IMAGE, "command": ["sh", "-c", script],
                "env": [
                    {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                ],
                "resources": {"limits": {"memory": "96Mi"}},
                "securityContext": {
                    "runAsUser": 0, "privileged": false, "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "volumeMounts": [
                    {"name": "work", "mountPath": "/work"},
                    {"name": "info", "mountPath": "/etc/info", "readOnly": true},
                    {"name": "secret", "mountPath": "/etc/secret", "readOnly": true},
                    {"name": "state", "mountPath": "/state", "subPathExpr": "$(POD_UID)"},
                ],
            }],
            "volumes": [
                {"name": "work", "emptyDir": {"sizeLimit": "2Mi"}},
                {"name": "info", "downwardAPI": {"items": [
                    {"path": "vmi", "fieldRef": {"fieldPath": "metadata.annotations['vmpod.io/vmi']"}},
                    {"path": "uid", "fieldRef": {"fieldPath": "metadata.uid"}},
                ]}},
                {"name": "secret", "secret": {"secretName": "s1", "defaultMode": 0o400}},
                {"name": "state", "hostPath": {"path": host.path().join("pods"), "type": "DirectoryOrCreate"}},
            ],
        },
    });
    let pod: Pod = serde_json::from_value(pod).unwrap();
    let mut secret = Secret::default();
    secret.metadata.name = Some("s1".into());
    secret.data = Some(BTreeMap::from([(
        "token".to_string(),
        k8s_openapi::ByteString(b"t0k3n".to_vec()),
    )]));
    let running = node.run_pod(&pod, &[secret]).expect("the pod runs");
    let exit = running.wait(Duration::from_secs(60)).unwrap();
    let log = running.logs("main");
    assert_eq!(exit.phase, "Succeeded", "{exit:?}\n{log}");

    let cap_eff = u64::from_str_radix(status_field(&log, "CapEff:"), 16).unwrap();
    assert_eq!(cap_eff, 1 << CAP_NET_BIND_SERVICE, "{log}");
    assert_eq!(cap_eff & (1 << CAP_NET_ADMIN | 1 << CAP_SYS_ADMIN), 0);
    assert_eq!(status_field(&log, "NoNewPrivs:"), "1", "{log}");
    assert_eq!(status_field(&log, "Seccomp:"), "2", "filter mode: {log}");
    let (pod_ip, memlimit) = (running.pod_ip.to_string(), (96u64 << 20).to_string());
    let want = [
        ("uid=", "0", ""),
        ("marker=", "init-ran", "init container first"),
        ("vmi=", "{\"x\":1}", ""),
        ("uidfile=", &running.uid, ""),
        ("env_uid=", &running.uid, ""),
        ("ip=", &pod_ip, ""),
        ("secret=", "t0k3n", ""),
        ("secretmode=", "400", ""),
        ("memlimit=", &memlimit, ""),
        ("rootfs=", "ro", ""),
        // The pod's sysctl, set in its namespace; the container cannot change it.
        ("forwarding6=", "1", ""),
        ("procsys=", "ro", ""),
        ("info=", "ro", ""),
        ("emptydir=", "full", "sizeLimit 2Mi holds no 3Mi"),
    ];
    for (key, value, why) in want {
        assert_eq!(status_field(&log, key), value, "{key} {why}\n{log}");
    }
    let written = host.path().join("pods").join(&running.uid).join("file");
    assert_eq!(std::fs::read_to_string(&written).unwrap(), "hello\n");

    let dir = running.dir.clone();
    drop(running);
    assert!(!dir.exists(), "pod directory removed");
    assert!(written.exists(), "hostPath content stays");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(dir.to_str().unwrap()), "tmpfs unmounted");
}

#[test]
fn stop_sends_sigterm_then_kills_after_the_grace_period() {
    let Some(node) = privileged_node(ClusterNode::create) else {
        return;
    };
    let pod = |name: &str, script: &str| -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": "Never", "automountServiceAccountToken": false,
                     "terminationGracePeriodSeconds": 3,
                     "containers": [{"name": "c", "image": IMAGE,
                                     "command": ["bash", "-c", script]}]}}))
        .unwrap()
    };
    // A pod whose container prints "up", then loops with `trap` set on SIGTERM.
    let up_with_trap = |name: &str, trap: &str| {
        let script = format!("trap '{trap}' TERM; echo up; while :; do sleep 0.1; done");
        let running = node.run_pod(&pod(name, &script), &[]).unwrap();
        wait_for_log(&running, "c", "up");
        running
    };
    // Honours SIGTERM: exits with its own code at once.
    let polite = up_with_trap("polite", "exit 7");
    let (exit, took) = polite.stop().unwrap();
    assert_eq!(exit.codes, [("c".to_string(), 7)]);
    assert_eq!(exit.phase, "Failed");
    assert!(took < Duration::from_secs(3), "{took:?}");
    // Ignores SIGTERM: killed once the grace period is over.
    let stubborn = up_with_trap("stubborn", "");
    let (exit, took) = stubborn.stop().unwrap();
    assert_eq!(exit.codes, [("c".to_string(), 137)]);
    assert!(took >= Duration::from_secs(3), "{took:?}");
}

fn wait_for_log(pod: &cluster::RunningPod, container: &str, needle: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !pod.logs(container).contains(needle) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle:?} in the log"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
