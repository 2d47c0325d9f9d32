//! `vmpod-handler render-pod`: print, as YAML documents, the objects the controller would
//! create for a VMI file (the launcher Pod, then its Secret), from the same
//! [`launcher_objects`] the controller calls; like `kubectl create --dry-run=client -o yaml`.

use super::launcher_pod::{LauncherPodConfig, launcher_objects};
use anyhow::Context;
use clap::Args;
use serde::Serialize;
use std::path::PathBuf;

/// `vmpod-handler render-pod` options.
#[derive(Args)]
pub struct RenderArgs {
    /// The VirtualMachineInstance manifest (YAML or JSON).
    #[arg(long)]
    pub vmi: PathBuf,
    /// The namespace (default: the manifest's, else `default`).
    #[arg(long)]
    pub namespace: Option<String>,
    /// The image launcher pods run.
    #[arg(long, default_value = "localhost/vmpod:dev")]
    pub image: String,
    /// Node directory holding per-pod state directories (the state hostPath).
    #[arg(long, default_value = vmpod::statedir::DEFAULT_NODE_STATE_ROOT)]
    pub state_root: String,
    /// As the controller's `--device-hostpath`: hostPath devices, no device plugin resources.
    #[arg(long)]
    pub device_hostpath: bool,
    /// As the controller's `--masquerade-ipv6-forwarding-sysctl`.
    #[arg(long)]
    pub masquerade_ipv6_forwarding_sysctl: bool,
    /// As the controller's `--max-concurrent-boots`, `--boot-slots-dir`, `--boot-slot-timeout`.
    #[command(flatten)]
    pub boot_slots: super::BootSlotArgs,
}

/// The YAML documents `render-pod` prints for `args`.
pub fn render(args: &RenderArgs) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(&args.vmi)
        .with_context(|| format!("read the VMI from {}", args.vmi.display()))?;
    let mut vmi = vmpod::api::load_valid_vmi(&text).map_err(|errors| {
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("{}: invalid VMI: {}", args.vmi.display(), list.join("; "))
    })?;
    let meta = vmi.metadata_mut();
    if let Some(ns) = &args.namespace {
        meta.namespace = Some(ns.clone());
    }
    meta.namespace.get_or_insert_with(|| "default".into());
    if meta.uid.is_none() {
        // What the API server would assign on create.
        let uuid = std::fs::read_to_string("/proc/sys/kernel/random/uuid")
            .context("read a fresh UUID from /proc/sys/kernel/random/uuid")?;
        meta.uid = Some(uuid.trim().to_string());
    }
    let config = LauncherPodConfig {
        image: args.image.clone(),
        state_root: args.state_root.clone(),
        masquerade_ipv6_forwarding_sysctl: args.masquerade_ipv6_forwarding_sysctl,
        boot_slots: args.boot_slots.config(&args.state_root)?,
        ..LauncherPodConfig::default()
    };
    let config = if args.device_hostpath {
        config.with_hostpath_devices()
    } else {
        config
    };
    let objects = launcher_objects(&vmi, &config)?;
    let mut docs = vec![to_document(&objects.pod)?];
    for s in &objects.secrets {
        docs.push(to_document(s)?);
    }
    Ok(docs.concat())
}

/// One object as a YAML document (`---` first). The one place YAML is written here.
pub fn to_document(object: &impl Serialize) -> anyhow::Result<String> {
    let body = vmpod::api::yaml::to_string(object).context("write YAML")?;
    Ok(format!("---\n{body}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_pod_prints_the_pod_then_its_secret() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vmi.yaml");
        std::fs::write(
            &file,
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {name: web}\n\
             spec:\n  domain:\n    devices: {disks: [{name: ci}]}\n  \
             volumes: [{name: ci, cloudInitNoCloud: {userData: secret-stuff}}]\n",
        )
        .unwrap();
        let args = RenderArgs {
            vmi: file.clone(),
            namespace: Some("prod".into()),
            image: "reg/vmpod:1".into(),
            state_root: "/srv/vmpod".into(),
            device_hostpath: false,
            masquerade_ipv6_forwarding_sysctl: false,
            boot_slots: super::super::BootSlotArgs {
                max_concurrent_boots: 0,
                boot_slots_dir: vmpod::statedir::DEFAULT_NODE_BOOT_SLOTS_DIR.into(),
                boot_slot_timeout: 30,
            },
        };
        let yaml = render(&args).unwrap();
        let docs: Vec<serde_json::Value> = vmpod::api::yaml::documents(&yaml).unwrap();
        assert_eq!(docs.len(), 2, "{yaml}");
        assert_eq!(docs[0]["kind"], "Pod");
        assert_eq!(docs[0]["metadata"]["namespace"], "prod");
        assert_eq!(docs[0]["spec"]["containers"][0]["image"], "reg/vmpod:1");
        assert_eq!(
            docs[0]["spec"]["volumes"][0]["hostPath"]["path"],
            "/srv/vmpod"
        );
        let uid = docs[0]["metadata"]["ownerReferences"][0]["uid"]
            .as_str()
            .unwrap();
        assert_eq!(
            uid.len(),
            36,
            "a fresh UUID, as the API server would give: {uid}"
        );
        assert_eq!(docs[1]["kind"], "Secret");
        assert!(!docs[0].to_string().contains("secret-stuff"));
        let limits = &docs[0]["spec"]["containers"][0]["resources"]["limits"];
        assert_eq!(limits["vmpod.io/tun"], "1", "{limits}");
        let hostpath = RenderArgs {
            device_hostpath: true,
            vmi: file.clone(),
            ..args
        };
        let docs =
            vmpod::api::yaml::documents::<serde_json::Value>(&render(&hostpath).unwrap()).unwrap();
        let limits = &docs[0]["spec"]["containers"][0]["resources"]["limits"];
        assert!(limits.get("vmpod.io/tun").is_none(), "{limits}");
        assert!(docs[0].to_string().contains("/dev/net/tun"));
        let args = hostpath;

        // An invalid VMI is refused with its field path.
        std::fs::write(&file, "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {name: x}\nspec: {domain: {memory: {guest: lots}}}\n").unwrap();
        let err = render(&args).unwrap_err().to_string();
        assert!(err.contains("spec.domain.memory.guest"), "{err}");
    }
}
