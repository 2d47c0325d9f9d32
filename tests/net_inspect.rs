//! `vmpodctl net plan` and `vmpodctl net inspect` against a real pod fixture: plan
//! changes nothing and shows what setup then does; inspect shows the rewired pod.

mod support;

use serde_json::Value;
use std::path::Path;
use std::process::Command;
use vmpod::net::snapshot::snapshot;
use vmpod::net::{self, SetupOptions};
use vmpod::sandbox::{NodeSpec, PodSandbox, PodSpec};

fn vmpodctl(args: &[&str], ns: &Path, state: &Path) -> Value {
    let out = support::stdout_of(
        Command::new(env!("CARGO_BIN_EXE_vmpodctl"))
            .args(args)
            .arg("--netns")
            .arg(ns)
            .arg("--state-dir")
            .arg(state)
            .arg("--json"),
        &format!("vmpodctl {args:?}"),
    );
    serde_json::from_slice(&out).unwrap()
}

#[test]
fn plan_changes_nothing_and_inspect_shows_the_rewired_pod() {
    if !support::privileged("plan_changes_nothing_and_inspect_shows_the_rewired_pod") {
        return;
    }
    let node = NodeSpec::isolated(vec!["10.79.0.1/24".parse().unwrap()]);
    let pod = PodSpec::new(
        "insp",
        "10.79.0.9/24".parse().unwrap(),
        "10.79.0.1".parse().unwrap(),
    );
    let sb = PodSandbox::create(&node, &pod).unwrap();
    let state = tempfile::tempdir().unwrap();
    let ns = sb.netns_path();
    let snap =
        || net::discover::with_handle(Some(ns), |h| async move { snapshot(&h).await }).unwrap();
    let resolv = sb.resolv_conf_path();

    let before = snap();
    let plan = vmpodctl(
        &["net", "plan", "--resolv-conf", resolv.to_str().unwrap()],
        ns,
        state.path(),
    );
    assert_eq!(snap(), before, "plan must not change the namespace");
    assert!(
        !state.path().join("net").exists(),
        "plan must not write the cache"
    );
    assert_eq!(plan["fromCache"], false);
    assert_eq!(plan["cached"]["addresses"][0]["addr"], "10.79.0.9");

    let opts = SetupOptions {
        netns: Some(ns.to_path_buf()),
        state_dir: state.path().to_path_buf(),
        resolv_conf: resolv.clone(),
        ..SetupOptions::new("eth0")
    };
    let done = net::setup(&opts).unwrap();
    assert_eq!(
        serde_json::to_value(&done.ops).unwrap(),
        plan["ops"],
        "setup did what plan showed"
    );

    let view = vmpodctl(&["net", "inspect"], ns, state.path());
    assert_eq!(
        view["bridges"],
        serde_json::json!([{"name": "k6t-eth0", "ports": ["eth0", "tap-eth0"]}])
    );
    assert_eq!(view["taps"][0]["name"], "tap-eth0");
    assert_eq!(view["taps"][0]["vnetHdr"], true);
    assert_eq!(view["cached"][0]["interface"], "eth0");
    assert_eq!(
        view["cached"][0]["applied"].as_array().unwrap().len(),
        done.ops.len()
    );
    let eth0 = view["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "eth0")
        .unwrap();
    assert_eq!(eth0["masterName"], "k6t-eth0");
    assert_eq!(eth0["addresses"], serde_json::json!([]));

    // After setup, plan reads the cache.
    let again = vmpodctl(&["net", "plan"], ns, state.path());
    assert_eq!(again["fromCache"], true);
    assert_eq!(again["ops"], plan["ops"]);
}
