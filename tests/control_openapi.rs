//! Keeps src/control/openapi.yaml honest: every served route is documented and every
//! documented path is served, and what a (fake) launcher answers validates against the
//! documented schemas (types, required properties, enums, recursively). Unprivileged.

use serde_json::Value;
use std::collections::BTreeSet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vmpod::control::fake::{FakeLauncher, sample_network, sample_status};
use vmpod::control::{ControlClient, LauncherStatus, OPENAPI_YAML, PauseReason, Phase, ROUTES};

fn spec() -> Value {
    vmpod::api::yaml::from_str(OPENAPI_YAML).expect("openapi.yaml parses")
}

fn documented_routes(spec: &Value) -> BTreeSet<(String, String)> {
    let paths = spec["paths"].as_object().expect("paths is a map");
    let mut out = BTreeSet::new();
    for (path, item) in paths {
        for method in item.as_object().expect("path item is a map").keys() {
            out.insert((method.to_ascii_uppercase(), path.clone()));
        }
    }
    out
}

#[test]
fn routes_match_the_openapi_file_both_ways() {
    let spec = spec();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    let documented = documented_routes(&spec);
    let served: BTreeSet<_> = ROUTES
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty(),
        "served but not in openapi.yaml: {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "in openapi.yaml but not served: {unserved:?}"
    );
}

#[test]
fn every_ref_resolves() {
    let spec = spec();
    let mut refs = Vec::new();
    collect_refs(&spec, &mut refs);
    assert!(refs.len() > 10);
    for r in refs {
        resolve(&spec, &r);
    }
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r.clone());
            }
            m.values().for_each(|v| collect_refs(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

fn resolve<'a>(spec: &'a Value, r: &str) -> &'a Value {
    let pointer = r
        .strip_prefix('#')
        .unwrap_or_else(|| panic!("non-local $ref {r}"));
    spec.pointer(pointer)
        .unwrap_or_else(|| panic!("$ref {r} does not resolve"))
}

/// Check `value` against an OpenAPI schema: $ref, type, nullable, enum, required,
/// properties, additionalProperties: false, items. Returns the problems with JSON paths.
fn validate(spec: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    if let Some(Value::String(r)) = schema.get("$ref") {
        return validate(spec, resolve(spec, r), value, at, errors);
    }
    if let Some(Value::Array(variants)) = schema.get("oneOf") {
        return validate_one_of(spec, schema, variants, value, at, errors);
    }
    if value.is_null() {
        if schema.get("type").is_some() && schema["nullable"] != Value::Bool(true) {
            errors.push(format!("{at}: null but not nullable"));
        }
        return;
    }
    if let Some(Value::Array(allowed)) = schema.get("enum")
        && !allowed.contains(value)
    {
        errors.push(format!("{at}: {value} not in {allowed:?}"));
    }
    let ok = match schema.get("type").and_then(Value::as_str) {
        None => true,
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        Some(other) => panic!("{at}: schema type {other} unknown to this validator"),
    };
    if !ok {
        errors.push(format!("{at}: {value} is not {}", schema["type"]));
        return;
    }
    if let Value::Object(obj) = value {
        let props = schema.get("properties").and_then(Value::as_object);
        for req in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let req = req.as_str().unwrap();
            if !obj.contains_key(req) {
                errors.push(format!("{at}: missing required property {req}"));
            }
        }
        for (k, v) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(s) => validate(spec, s, v, &format!("{at}.{k}"), errors),
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    errors.push(format!("{at}: undocumented property {k}"));
                }
                None if props.is_some() => errors.push(format!("{at}: undocumented property {k}")),
                None => {}
            }
        }
    }
    if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
        for (i, v) in items.iter().enumerate() {
            validate(spec, item_schema, v, &format!("{at}[{i}]"), errors);
        }
    }
}

/// `oneOf`: with a discriminator, the mapped variant must match; without, exactly one.
fn validate_one_of(
    spec: &Value,
    schema: &Value,
    variants: &[Value],
    value: &Value,
    at: &str,
    errors: &mut Vec<String>,
) {
    if let Some(prop) = schema["discriminator"]["propertyName"].as_str() {
        let tag = value[prop].as_str().unwrap_or_default();
        match schema["discriminator"]["mapping"][tag].as_str() {
            Some(r) => validate(spec, resolve(spec, r), value, at, errors),
            None => errors.push(format!("{at}.{prop}: {tag:?} is not a documented variant")),
        }
        return;
    }
    let matching = variants
        .iter()
        .filter(|v| {
            let mut e = Vec::new();
            validate(spec, v, value, at, &mut e);
            e.is_empty()
        })
        .count();
    if matching != 1 {
        errors.push(format!(
            "{at}: matches {matching} of the oneOf variants, want 1"
        ));
    }
}

fn response_schema<'a>(spec: &'a Value, path: &str, method: &str, code: &str) -> &'a Value {
    let mut resp = &spec["paths"][path][method]["responses"][code];
    if let Some(Value::String(r)) = resp.get("$ref") {
        resp = resolve(spec, r);
    }
    &resp["content"]["application/json"]["schema"]
}

fn assert_valid(spec: &Value, schema: &Value, value: &Value, what: &str) {
    assert!(schema.is_object(), "{what}: no schema documented");
    let mut errors = Vec::new();
    validate(spec, schema, value, "$", &mut errors);
    assert!(
        errors.is_empty(),
        "{what} does not match openapi.yaml:\n{}",
        errors.join("\n")
    );
}

#[test]
fn the_validator_catches_mismatches() {
    let spec = spec();
    let schema = response_schema(&spec, "/v1/status", "get", "200");
    let mut bad = serde_json::to_value(sample_status("vm1")).unwrap();
    bad["phase"] = "Sleeping".into();
    bad.as_object_mut().unwrap().remove("pid");
    bad["interfaces"][0]["ipAddresses"] = "10.0.0.1".into();
    bad["surprise"] = 1.into();
    let mut bad_net = serde_json::to_value(sample_network()).unwrap();
    bad_net["interfaces"][0]["plan"][0]["op"] = "frobnicate".into();
    bad_net["interfaces"][0]["plan"][1]
        .as_object_mut()
        .unwrap()
        .remove("link");
    bad_net["interfaces"][0]["dhcp"]["replies"]["sendErrors"] = 0.into();
    let net_schema = response_schema(&spec, "/v1/network", "get", "200");
    let mut errors = Vec::new();
    validate(&spec, schema, &bad, "$", &mut errors);
    validate(&spec, net_schema, &bad_net, "$", &mut errors);
    let all = errors.join("\n");
    for expect in [
        "$.phase",
        "required property pid",
        "$.interfaces[0].ipAddresses",
        "surprise",
        "$.interfaces[0].plan[0].op: \"frobnicate\" is not a documented variant",
        "$.interfaces[0].plan[1]: missing required property link",
        "$.interfaces[0].dhcp.replies: undocumented property sendErrors",
    ] {
        assert!(all.contains(expect), "validator missed {expect}: {all}");
    }
}

#[tokio::test]
async fn responses_of_a_fake_launcher_match_the_documented_schemas() {
    let spec = spec();
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeLauncher::start(dir.path(), sample_status("vm1"), sample_network()).unwrap();
    let client = ControlClient::new(&fake.socket);

    let status_valid = |status: &LauncherStatus, what: &str| {
        assert_valid(
            &spec,
            response_schema(&spec, "/v1/status", "get", "200"),
            &serde_json::to_value(status).unwrap(),
            what,
        );
    };
    status_valid(&client.status().await.unwrap(), "status");
    // A fresh status with every optional field absent validates too.
    status_valid(&LauncherStatus::pending("vm2"), "pending");
    // Paused by a KVM failure, and a VM that fell back to TCG: both reasons documented.
    for pause in [
        PauseReason::User,
        PauseReason::IoError,
        PauseReason::KvmInternalError,
        PauseReason::Unknown,
    ] {
        let mut paused = sample_status("vm3");
        paused.set_phase(Phase::Paused, Some(format!("paused: {pause}")));
        paused.pause_reason = Some(pause);
        paused.acceleration_reason = Some("KVM failed under the running guest".into());
        status_valid(&paused, &format!("paused {pause}"));
    }

    let net = serde_json::to_value(client.network().await.unwrap()).unwrap();
    assert_valid(
        &spec,
        response_schema(&spec, "/v1/network", "get", "200"),
        &net,
        "network",
    );

    // The error body exactly as the server writes it (a 404 read off the socket).
    let mut raw = tokio::net::UnixStream::connect(&fake.socket).await.unwrap();
    raw.write_all(b"GET /v1/nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut resp = String::new();
    raw.read_to_string(&mut resp).await.unwrap();
    let body: Value = serde_json::from_str(resp.split_once("\r\n\r\n").unwrap().1).unwrap();
    for route in ROUTES {
        let method = route.method.to_ascii_lowercase();
        let schema = response_schema(&spec, route.path, &method, "default");
        assert_valid(
            &spec,
            schema,
            &body,
            &format!("{} {} error", route.method, route.path),
        );
    }

    let shutdown = serde_json::json!({"gracePeriodSeconds": 5});
    let schema = &spec["paths"]["/v1/shutdown"]["post"]["requestBody"]["content"]["application/json"]
        ["schema"];
    assert_valid(&spec, schema, &shutdown, "shutdown body");
    fake.stop().await.unwrap();
}

/// The IPv6 side of a dual-stack pod's report (the sample launcher is IPv4-only), with
/// every optional field present, against its documented schema.
#[test]
fn the_ipv6_report_matches_its_schema() {
    use vmpod::dhcp::ra::RaStats;
    use vmpod::dhcp::v6::server::{DhcpV6Stats, LastV6Client};
    use vmpod::dhcp::v6::service::Ipv6Report;
    use vmpod::dhcp::v6::{ClientSeen, DhcpV6Config, DropReason, ReplyKind, RequestKind};
    let mut facts = sample_network().interfaces[0].facts.clone();
    facts
        .addresses
        .push(vmpod::net::IpCidr::new("fd22::5".parse().unwrap(), 64));
    let config = DhcpV6Config::from_facts(&facts, "k6t-eth0", facts.mac, facts.mac).unwrap();
    let mut dhcp = DhcpV6Stats::new(&config);
    dhcp.requests.insert(RequestKind::Solicit, 1);
    dhcp.replies.insert(ReplyKind::Advertise, 1);
    dhcp.drops.insert(DropReason::ForeignClient, 1);
    dhcp.lease.state = vmpod::dhcp::stats::LeaseState::Bound;
    dhcp.lease.duid = Some("00:03:00:01:02:00:00:0a:16:05".into());
    dhcp.lease.bound_at = Some(1_800_000_000);
    dhcp.last_client = Some(LastV6Client {
        seen: ClientSeen {
            duid: "00:03:00:01:02:00:00:0a:16:05".into(),
            source: "fe80::1".parse().unwrap(),
            kind: RequestKind::Request,
            xid: 7,
        },
        at: 1_800_000_000,
        answered: true,
    });
    let report = Ipv6Report {
        dhcp,
        router_advertisements: RaStats {
            bridge: "k6t-eth0".into(),
            periodic: 1,
            solicitations: 1,
            solicited: 1,
            send_errors: 0,
            last_sent_at: Some(1_800_000_000),
        },
    };
    let spec = spec();
    let schema = spec["components"]["schemas"]["Ipv6Report"].clone();
    assert_valid(
        &spec,
        &schema,
        &serde_json::to_value(&report).unwrap(),
        "Ipv6Report",
    );
}
