//! The pure half of the runner: a Pod (as JSON) -> what to create on the node and the
//! `podman run` arguments of each container. Every field of the Pod is either honoured or
//! an error naming its path; nothing is skipped.

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The capabilities a container runtime gives a non-privileged container (containerd's
/// and CRI-O's default set), before the Pod's drop/add.
pub const RUNTIME_DEFAULT_CAPS: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "NET_RAW",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// The runtime's default seccomp profile (podman's, from containers-common).
pub const RUNTIME_DEFAULT_SECCOMP: &str = "/usr/share/containers/seccomp.json";

/// What the runner knows about the pod it runs: identity and network.
#[derive(Clone, Debug)]
pub struct PodFacts {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub node_name: String,
    pub pod_ip: String,
}

/// A volume as the node must provide it.
#[derive(Clone, Debug, PartialEq)]
pub enum VolumePlan {
    /// A node path; `create`: make the directory when missing (DirectoryOrCreate);
    /// `char_device`: it must be a character device (handed to containers as a device).
    HostPath {
        path: String,
        create: bool,
        char_device: bool,
    },
    /// A fresh directory; `size_limit` bytes: a tmpfs of that size (the limit is enforced).
    EmptyDir { size_limit: Option<u64> },
    /// Files written by the runner (downward API, Secret), mounted read-only.
    Files { files: Vec<(String, Vec<u8>, u32)> },
    /// An image mounted read-only.
    Image { reference: String },
}

/// One container's run: its `podman run` flags (security, resources, env, entrypoint),
/// the image, the arguments after it, and its mounts (turned into flags once the volumes
/// exist on the node).
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerPlan {
    pub name: String,
    pub image: String,
    pub flags: Vec<String>,
    /// `args` (`command` is `--entrypoint` in `flags`).
    pub args: Vec<String>,
    pub mounts: Vec<MountPlan>,
    /// Extended resources and how many of each: the node's device plugins allocate them
    /// when the container starts.
    pub devices: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MountPlan {
    pub volume: String,
    pub sub_path: Option<String>,
    pub mount_path: String,
    pub read_only: bool,
}

/// The whole pod.
#[derive(Clone, Debug, PartialEq)]
pub struct PodPlan {
    pub volumes: BTreeMap<String, VolumePlan>,
    pub init_containers: Vec<ContainerPlan>,
    pub containers: Vec<ContainerPlan>,
    pub grace_seconds: u64,
    /// `spec.securityContext.sysctls` (name, value): set in the pod's network namespace
    /// before any container starts, as the runtime does for the pod sandbox.
    pub sysctls: Vec<(String, String)>,
}

/// The node's answers to what a Pod may ask beyond the plain runtime: its allocatable
/// extended resources (the device plugins' healthy devices, as in the Node's
/// `status.allocatable`) and its labels.
#[derive(Clone, Debug, Default)]
pub struct NodeFacts {
    pub extended_resources: BTreeMap<String, u64>,
    pub labels: BTreeMap<String, String>,
    /// The kubelet's `--allowed-unsafe-sysctls`: sysctls beyond [`SAFE_SYSCTLS`] a Pod
    /// may set.
    pub allowed_unsafe_sysctls: Vec<String>,
}

/// The sysctls the kubelet lets every Pod set (its "safe" set), the network ones: the
/// runner sets sysctls in the pod's network namespace only.
pub const SAFE_SYSCTLS: &[&str] = &[
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

/// `spec.securityContext`: its `sysctls`, each a network sysctl the node allows (the
/// kubelet rejects a Pod asking for an unsafe one its `--allowed-unsafe-sysctls` does not
/// list).
fn pod_sysctls(sc: Option<&Value>, node: &NodeFacts) -> Result<Vec<(String, String)>> {
    let Some(sc) = sc else {
        return Ok(Vec::new());
    };
    only(sc, "spec.securityContext", &["sysctls"])?;
    let mut out = Vec::new();
    for (i, s) in sc["sysctls"].as_array().into_iter().flatten().enumerate() {
        let path = format!("spec.securityContext.sysctls[{i}]");
        only(s, &path, &["name", "value"])?;
        let name = s["name"]
            .as_str()
            .with_context(|| format!("{path}.name: not a string"))?;
        let value = s["value"]
            .as_str()
            .with_context(|| format!("{path}.value: not a string"))?;
        if !name.starts_with("net.") {
            bail!("{path}.name: {name}: the runner sets network sysctls only");
        }
        if !SAFE_SYSCTLS.contains(&name) && !node.allowed_unsafe_sysctls.iter().any(|a| a == name) {
            bail!(
                "{path}.name: {name} is unsafe and the node's kubelet does not list it in \
                 --allowed-unsafe-sysctls (SysctlForbidden)"
            );
        }
        out.push((name.to_owned(), value.to_owned()));
    }
    Ok(out)
}

fn obj<'a>(v: &'a Value, path: &str) -> Result<&'a Map<String, Value>> {
    v.as_object()
        .with_context(|| format!("{path}: not an object"))
}

/// Refuse any key of `v` not in `known`.
fn only(v: &Value, path: &str, known: &[&str]) -> Result<()> {
    for k in obj(v, path)?.keys() {
        if !known.contains(&k.as_str()) {
            bail!("{path}.{k}: the runner cannot honour this field");
        }
    }
    Ok(())
}

fn string(v: &Value, path: &str) -> Result<String> {
    v.as_str()
        .map(str::to_string)
        .with_context(|| format!("{path}: not a string"))
}

fn strings(v: Option<&Value>, path: &str) -> Result<Vec<String>> {
    match v {
        None => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, s)| string(s, &format!("{path}[{i}]")))
            .collect(),
        Some(_) => bail!("{path}: not a list"),
    }
}

fn string_map(v: Option<&Value>, path: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    if let Some(v) = v {
        for (k, s) in obj(v, path)? {
            out.insert(k.clone(), string(s, &format!("{path}.{k}"))?);
        }
    }
    Ok(out)
}

/// A quantity's text: `"500m"`, `"2Gi"` or a bare number.
fn quantity_text(v: &Value, path: &str) -> Result<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => bail!("{path}: not a quantity"),
    }
}

/// Bytes of a Kubernetes quantity (memory, sizeLimit).
pub fn quantity_bytes(v: &Value, path: &str) -> Result<u64> {
    vmpod::api::quantity_bytes(&quantity_text(v, path)?).map_err(|e| anyhow::anyhow!("{path}: {e}"))
}

/// Millicores of a CPU quantity.
fn millicores(v: &Value, path: &str) -> Result<u64> {
    let q = vmpod::api::parse_quantity(&quantity_text(v, path)?)
        .map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
    u64::try_from(q.milli()).with_context(|| format!("{path}: out of range"))
}

/// `$(VAR)` expansion as kubelet does it for command, args, env values and subPathExpr:
/// defined variables are replaced, `$$` escapes, anything else stays as written.
pub fn expand(text: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("$$") {
            out.push('$');
            rest = t;
        } else if let Some(t) = tail.strip_prefix("$(")
            && let Some(end) = t.find(')')
            && let Some((_, val)) = env.iter().rev().find(|(k, _)| *k == t[..end])
        {
            out.push_str(val);
            rest = &t[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// The value of a downward-API `fieldPath`.
pub fn field_value(facts: &PodFacts, field: &str, path: &str) -> Result<String> {
    let quoted = |prefix: &str| {
        field
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix("['"))
            .and_then(|r| r.strip_suffix("']"))
    };
    let lines = |m: &BTreeMap<String, String>| {
        m.iter()
            .map(|(k, v)| format!("{k}={}\n", serde_json::Value::String(v.clone())))
            .collect::<String>()
    };
    Ok(match field {
        "metadata.name" => facts.name.clone(),
        "metadata.namespace" => facts.namespace.clone(),
        "metadata.uid" => facts.uid.clone(),
        "spec.nodeName" => facts.node_name.clone(),
        "status.podIP" => facts.pod_ip.clone(),
        "metadata.labels" => lines(&facts.labels),
        "metadata.annotations" => lines(&facts.annotations),
        _ => {
            if let Some(k) = quoted("metadata.annotations") {
                facts.annotations.get(k).cloned().unwrap_or_default()
            } else if let Some(k) = quoted("metadata.labels") {
                facts.labels.get(k).cloned().unwrap_or_default()
            } else {
                bail!("{path}: fieldPath {field:?} is not supported")
            }
        }
    })
}

fn mode(v: Option<&Value>, path: &str, default: u32) -> Result<u32> {
    match v {
        None => Ok(default),
        Some(m) => m
            .as_u64()
            .and_then(|m| u32::try_from(m).ok())
            .filter(|m| *m <= 0o777)
            .with_context(|| format!("{path}: not a file mode")),
    }
}

fn volume_plan(
    v: &Value,
    path: &str,
    facts: &PodFacts,
    secrets: &BTreeMap<String, BTreeMap<String, Vec<u8>>>,
) -> Result<(String, VolumePlan)> {
    let name = string(&v["name"], &format!("{path}.name"))?;
    let sources: Vec<&String> = obj(v, path)?.keys().filter(|k| *k != "name").collect();
    let [source] = sources.as_slice() else {
        bail!("{path}: want exactly one volume source, got {sources:?}");
    };
    let sp = format!("{path}.{source}");
    let s = &v[source.as_str()];
    let plan = match source.as_str() {
        "hostPath" => {
            only(s, &sp, &["path", "type"])?;
            let host = string(&s["path"], &format!("{sp}.path"))?;
            let kind = s
                .get("type")
                .map(|t| string(t, &format!("{sp}.type")))
                .transpose()?;
            let (create, char_device) = match kind.as_deref().unwrap_or("") {
                "" | "Directory" => (false, false),
                "DirectoryOrCreate" => (true, false),
                "CharDevice" => (false, true),
                other => bail!("{sp}.type: {other:?} is not supported"),
            };
            VolumePlan::HostPath {
                path: host,
                create,
                char_device,
            }
        }
        "emptyDir" => {
            only(s, &sp, &["sizeLimit", "medium"])?;
            if let Some(m) = s.get("medium").filter(|m| m.as_str() != Some("")) {
                bail!("{sp}.medium: {m} is not supported");
            }
            let size_limit = s
                .get("sizeLimit")
                .map(|q| quantity_bytes(q, &format!("{sp}.sizeLimit")))
                .transpose()?;
            VolumePlan::EmptyDir { size_limit }
        }
        "downwardAPI" => {
            only(s, &sp, &["items", "defaultMode"])?;
            let default = mode(s.get("defaultMode"), &format!("{sp}.defaultMode"), 0o644)?;
            let mut files = Vec::new();
            for (i, item) in s["items"].as_array().into_iter().flatten().enumerate() {
                let ip = format!("{sp}.items[{i}]");
                only(item, &ip, &["path", "fieldRef", "mode"])?;
                only(
                    &item["fieldRef"],
                    &format!("{ip}.fieldRef"),
                    &["fieldPath", "apiVersion"],
                )?;
                let field = string(
                    &item["fieldRef"]["fieldPath"],
                    &format!("{ip}.fieldRef.fieldPath"),
                )?;
                let value = field_value(facts, &field, &format!("{ip}.fieldRef.fieldPath"))?;
                files.push((
                    string(&item["path"], &format!("{ip}.path"))?,
                    value.into_bytes(),
                    mode(item.get("mode"), &format!("{ip}.mode"), default)?,
                ));
            }
            VolumePlan::Files { files }
        }
        "secret" => {
            only(s, &sp, &["secretName", "defaultMode"])?;
            let secret = string(&s["secretName"], &format!("{sp}.secretName"))?;
            let data = secrets
                .get(&secret)
                .with_context(|| format!("{sp}.secretName: Secret {secret:?} was not given"))?;
            let default = mode(s.get("defaultMode"), &format!("{sp}.defaultMode"), 0o644)?;
            VolumePlan::Files {
                files: data
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone(), default))
                    .collect(),
            }
        }
        "image" => {
            only(s, &sp, &["reference", "pullPolicy"])?;
            let policy = s
                .get("pullPolicy")
                .and_then(Value::as_str)
                .unwrap_or("IfNotPresent");
            if policy == "Always" {
                bail!("{sp}.pullPolicy: Always needs a registry; the runner has none");
            }
            VolumePlan::Image {
                reference: string(&s["reference"], &format!("{sp}.reference"))?,
            }
        }
        other => bail!("{sp}: volume source {other:?} is not supported"),
    };
    Ok((name, plan))
}

fn env_of(c: &Value, path: &str, facts: &PodFacts) -> Result<Vec<(String, String)>> {
    let mut env: Vec<(String, String)> = Vec::new();
    for (i, e) in c["env"].as_array().into_iter().flatten().enumerate() {
        let ep = format!("{path}.env[{i}]");
        only(e, &ep, &["name", "value", "valueFrom"])?;
        let name = string(&e["name"], &format!("{ep}.name"))?;
        let value = match (e.get("value"), e.get("valueFrom")) {
            (Some(v), None) => expand(&string(v, &format!("{ep}.value"))?, &env),
            (None, Some(from)) => {
                only(from, &format!("{ep}.valueFrom"), &["fieldRef"])?;
                let fr = &from["fieldRef"];
                only(
                    fr,
                    &format!("{ep}.valueFrom.fieldRef"),
                    &["fieldPath", "apiVersion"],
                )?;
                let field = string(
                    &fr["fieldPath"],
                    &format!("{ep}.valueFrom.fieldRef.fieldPath"),
                )?;
                field_value(facts, &field, &format!("{ep}.valueFrom.fieldRef.fieldPath"))?
            }
            (None, None) => String::new(),
            (Some(_), Some(_)) => bail!("{ep}: both value and valueFrom"),
        };
        env.push((name, value));
    }
    Ok(env)
}

fn security_flags(c: &Value, path: &str) -> Result<Vec<String>> {
    let sp = format!("{path}.securityContext");
    let sc = c
        .get("securityContext")
        .cloned()
        .unwrap_or(Value::Object(Map::new()));
    only(
        &sc,
        &sp,
        &[
            "runAsUser",
            "runAsGroup",
            "runAsNonRoot",
            "privileged",
            "allowPrivilegeEscalation",
            "capabilities",
            "readOnlyRootFilesystem",
            "seccompProfile",
        ],
    )?;
    let mut flags = Vec::new();
    let privileged = sc["privileged"].as_bool().unwrap_or(false);
    let user = sc.get("runAsUser").and_then(Value::as_u64);
    let group = sc.get("runAsGroup").and_then(Value::as_u64);
    if sc["runAsNonRoot"].as_bool() == Some(true) && user.unwrap_or(0) == 0 {
        bail!("{sp}.runAsNonRoot: true, but the container would run as root");
    }
    match (user, group) {
        (Some(u), Some(g)) => flags.extend(["--user".into(), format!("{u}:{g}")]),
        (Some(u), None) => flags.extend(["--user".into(), u.to_string()]),
        (None, Some(_)) => bail!("{sp}.runAsGroup without runAsUser is not supported"),
        (None, None) => {}
    }
    if privileged {
        flags.push("--privileged".into());
    } else {
        let caps = sc
            .get("capabilities")
            .cloned()
            .unwrap_or(Value::Object(Map::new()));
        only(&caps, &format!("{sp}.capabilities"), &["add", "drop"])?;
        let drop = strings(caps.get("drop"), &format!("{sp}.capabilities.drop"))?;
        let add = strings(caps.get("add"), &format!("{sp}.capabilities.add"))?;
        let norm = |c: &str| c.trim_start_matches("CAP_").to_ascii_uppercase();
        let mut effective: Vec<String> = if drop.iter().any(|d| norm(d) == "ALL") {
            Vec::new()
        } else {
            RUNTIME_DEFAULT_CAPS
                .iter()
                .map(|c| c.to_string())
                .filter(|c| !drop.iter().any(|d| norm(d) == *c))
                .collect()
        };
        for a in &add {
            let a = norm(a);
            if a == "ALL" {
                bail!("{sp}.capabilities.add: ALL is not supported (use privileged)");
            }
            if !effective.contains(&a) {
                effective.push(a);
            }
        }
        effective.sort();
        flags.extend(["--cap-drop".into(), "ALL".into()]);
        for c in effective {
            flags.extend(["--cap-add".into(), c]);
        }
    }
    // Kubernetes: escalation is allowed unless set false (privileged implies allowed).
    if sc["allowPrivilegeEscalation"].as_bool() == Some(false) {
        if privileged {
            bail!("{sp}: allowPrivilegeEscalation false with privileged true");
        }
        flags.extend(["--security-opt".into(), "no-new-privileges".into()]);
    }
    if sc["readOnlyRootFilesystem"].as_bool() == Some(true) {
        flags.extend(["--read-only".into(), "--read-only-tmpfs=false".into()]);
    }
    let seccomp = match sc.get("seccompProfile") {
        None => "Unconfined".to_string(), // kubelet's default without SeccompDefault
        Some(p) => {
            only(p, &format!("{sp}.seccompProfile"), &["type"])?;
            string(&p["type"], &format!("{sp}.seccompProfile.type"))?
        }
    };
    match seccomp.as_str() {
        "RuntimeDefault" if !privileged => {
            flags.extend([
                "--security-opt".into(),
                format!("seccomp={RUNTIME_DEFAULT_SECCOMP}"),
            ]);
        }
        "RuntimeDefault" | "Unconfined" => {
            flags.extend(["--security-opt".into(), "seccomp=unconfined".into()]);
        }
        other => bail!("{sp}.seccompProfile.type: {other:?} is not supported"),
    }
    Ok(flags)
}

/// The `podman run` flags of a container's memory and CPU, and its extended resources
/// (whole numbers; requests, when given, equal to limits, as the API server demands; no
/// more than the node has).
fn resource_flags(
    c: &Value,
    path: &str,
    node: &NodeFacts,
) -> Result<(Vec<String>, BTreeMap<String, u64>)> {
    let rp = format!("{path}.resources");
    let Some(res) = c.get("resources") else {
        return Ok((Vec::new(), BTreeMap::new()));
    };
    only(res, &rp, &["requests", "limits"])?;
    let mut flags = Vec::new();
    let mut devices: BTreeMap<String, u64> = BTreeMap::new();
    for kind in ["requests", "limits"] {
        let Some(m) = res.get(kind) else { continue };
        for (k, v) in obj(m, &format!("{rp}.{kind}"))? {
            let kp = format!("{rp}.{kind}.{k}");
            match (kind, k.as_str()) {
                ("limits", "memory") => {
                    let b = quantity_bytes(v, &kp)?.to_string();
                    // No swap in a pod: the memory limit is the whole limit.
                    flags.extend(["--memory".into(), b.clone(), "--memory-swap".into(), b]);
                }
                ("limits", "cpu") => {
                    let m = millicores(v, &kp)?;
                    flags.extend(["--cpus".into(), format!("{}.{:03}", m / 1000, m % 1000)]);
                }
                ("requests", "cpu") => {
                    let shares = (millicores(v, &kp)? * 1024 / 1000).max(2);
                    flags.extend(["--cpu-shares".into(), shares.to_string()]);
                }
                // Memory requests only place the pod on a node; nothing to apply here.
                ("requests", "memory") => {
                    quantity_bytes(v, &kp)?;
                }
                (_, resource) => {
                    let count = v
                        .as_u64()
                        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                        .filter(|n| *n > 0)
                        .with_context(|| {
                            format!("{kp}: {v}: an extended resource is a whole number")
                        })?;
                    let allocatable = node
                        .extended_resources
                        .get(resource)
                        .copied()
                        .unwrap_or_default();
                    if allocatable == 0 {
                        bail!("{kp}: no device plugin on this node offers {resource}");
                    }
                    if count > allocatable {
                        bail!("{kp}: {count} wanted, the node has {allocatable}");
                    }
                    if let Some(other) = devices.insert(resource.to_string(), count)
                        && other != count
                    {
                        bail!("{kp}: {count}, but {other} in the other of requests/limits");
                    }
                }
            }
        }
    }
    Ok((flags, devices))
}

fn container_plan(
    c: &Value,
    path: &str,
    facts: &PodFacts,
    node: &NodeFacts,
    volumes: &BTreeMap<String, VolumePlan>,
) -> Result<ContainerPlan> {
    only(
        c,
        path,
        &[
            "name",
            "image",
            "command",
            "args",
            "env",
            "resources",
            "securityContext",
            "volumeMounts",
            "workingDir",
            "imagePullPolicy",
        ],
    )?;
    let name = string(&c["name"], &format!("{path}.name"))?;
    let image = string(&c["image"], &format!("{path}.image"))?;
    if c["imagePullPolicy"].as_str() == Some("Always") {
        bail!("{path}.imagePullPolicy: Always needs a registry; the runner has none");
    }
    let env = env_of(c, path, facts)?;
    let mut flags = security_flags(c, path)?;
    let (resource_flags, devices) = resource_flags(c, path, node)?;
    flags.extend(resource_flags);
    for (k, v) in &env {
        flags.extend(["--env".into(), format!("{k}={v}")]);
    }
    if let Some(w) = c.get("workingDir") {
        flags.extend([
            "--workdir".into(),
            string(w, &format!("{path}.workingDir"))?,
        ]);
    }
    let command: Vec<String> = strings(c.get("command"), &format!("{path}.command"))?
        .iter()
        .map(|s| expand(s, &env))
        .collect();
    let args: Vec<String> = strings(c.get("args"), &format!("{path}.args"))?
        .iter()
        .map(|s| expand(s, &env))
        .collect();
    if !command.is_empty() {
        flags.extend([
            "--entrypoint".into(),
            serde_json::to_string(&command).expect("strings serialise"),
        ]);
    }
    let mut mounts = Vec::new();
    for (i, m) in c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let mp = format!("{path}.volumeMounts[{i}]");
        only(
            m,
            &mp,
            &["name", "mountPath", "readOnly", "subPath", "subPathExpr"],
        )?;
        let volume = string(&m["name"], &format!("{mp}.name"))?;
        let plan = volumes
            .get(&volume)
            .with_context(|| format!("{mp}.name: no volume {volume:?}"))?;
        let sub_path = match (m.get("subPath"), m.get("subPathExpr")) {
            (Some(s), None) => Some(string(s, &format!("{mp}.subPath"))?),
            (None, Some(s)) => {
                let expanded = expand(&string(s, &format!("{mp}.subPathExpr"))?, &env);
                if expanded.contains("$(") {
                    bail!("{mp}.subPathExpr: {expanded:?} names an undefined variable");
                }
                Some(expanded)
            }
            (None, None) => None,
            (Some(_), Some(_)) => bail!("{mp}: both subPath and subPathExpr"),
        };
        if let Some(s) = &sub_path
            && (s.starts_with('/') || s.split('/').any(|p| p == ".."))
        {
            bail!("{mp}: sub path {s:?} must be relative and stay inside the volume");
        }
        if sub_path.is_some()
            && !matches!(
                plan,
                VolumePlan::HostPath {
                    char_device: false,
                    ..
                } | VolumePlan::EmptyDir { .. }
            )
        {
            bail!("{mp}: sub paths are supported on hostPath directories and emptyDir only");
        }
        mounts.push(MountPlan {
            volume,
            sub_path,
            mount_path: string(&m["mountPath"], &format!("{mp}.mountPath"))?,
            read_only: m["readOnly"].as_bool().unwrap_or(false),
        });
    }
    Ok(ContainerPlan {
        name,
        image,
        flags,
        args,
        mounts,
        devices,
    })
}

/// Check `pod` field by field and plan its run.
pub fn plan_pod(
    pod: &Value,
    facts: &PodFacts,
    node: &NodeFacts,
    secrets: &BTreeMap<String, BTreeMap<String, Vec<u8>>>,
) -> Result<PodPlan> {
    only(pod, "", &["apiVersion", "kind", "metadata", "spec"])?;
    if pod["apiVersion"] != "v1" || pod["kind"] != "Pod" {
        bail!(
            "not a v1 Pod: apiVersion {} kind {}",
            pod["apiVersion"],
            pod["kind"]
        );
    }
    only(
        &pod["metadata"],
        "metadata",
        &[
            "name",
            "namespace",
            "uid",
            "labels",
            "annotations",
            "ownerReferences",
        ],
    )?;
    let spec = &pod["spec"];
    only(
        spec,
        "spec",
        &[
            "containers",
            "initContainers",
            "volumes",
            "restartPolicy",
            "terminationGracePeriodSeconds",
            "nodeSelector",
            "automountServiceAccountToken",
            "enableServiceLinks",
            "securityContext",
        ],
    )?;
    let sysctls = pod_sysctls(spec.get("securityContext"), node)?;
    match spec["restartPolicy"].as_str() {
        Some("Never") => {}
        other => bail!("spec.restartPolicy: {other:?}: the runner runs Never pods only"),
    }
    if spec["automountServiceAccountToken"].as_bool() != Some(false) {
        bail!(
            "spec.automountServiceAccountToken: the runner has no API server token to mount; set false"
        );
    }
    // No services exist on the runner's node, so there is nothing to inject either way.
    if let Some(v) = spec.get("enableServiceLinks") {
        v.as_bool().context("spec.enableServiceLinks: not a bool")?;
    }
    for (k, v) in string_map(spec.get("nodeSelector"), "spec.nodeSelector")? {
        if node.labels.get(&k) != Some(&v) {
            bail!("spec.nodeSelector.{k}: the node is not labelled {k}={v}");
        }
    }
    let grace = spec
        .get("terminationGracePeriodSeconds")
        .map(|g| {
            g.as_u64()
                .context("spec.terminationGracePeriodSeconds: not a count")
        })
        .transpose()?
        .unwrap_or(30);
    let mut volumes = BTreeMap::new();
    for (i, v) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
        let (name, plan) = volume_plan(v, &format!("spec.volumes[{i}]"), facts, secrets)?;
        if volumes.insert(name.clone(), plan).is_some() {
            bail!("spec.volumes[{i}].name: {name:?} twice");
        }
    }
    let plan_all = |key: &str| -> Result<Vec<ContainerPlan>> {
        spec[key]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(i, c)| container_plan(c, &format!("spec.{key}[{i}]"), facts, node, &volumes))
            .collect()
    };
    let init_containers = plan_all("initContainers")?;
    let containers = plan_all("containers")?;
    if containers.is_empty() {
        bail!("spec.containers: empty");
    }
    Ok(PodPlan {
        volumes,
        init_containers,
        containers,
        grace_seconds: grace,
        sysctls,
    })
}
