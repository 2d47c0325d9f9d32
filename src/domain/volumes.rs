//! The files behind a VMI's volumes, made ready before the domain is defined:
//! `hostDisk` (must exist, or created sparse for `DiskOrCreate` in an existing
//! directory), `emptyDisk` (a sparse file under `<scratch-dir>/disks/`), `containerDisk` (a qcow2 overlay
//! `<scratch-dir>/container-disks/<volume>.qcow2` backed by the image's disk file where
//! the pod mounts it, read-only: the image is never opened writable, the VM's writes
//! land in the overlay and go with the pod) and `cloudInitNoCloud`
//! (`<scratch-dir>/cloud-init.img`, mode 0600, its user-data inline or from the Secrets
//! the pod mounts under [`VolumeDirs::secrets`]). Owns those files and gives the ones it
//! creates to the QEMU user; reads a disk's first bytes to tell qcow2 from raw. A
//! `hostDisk` is the user's file and is left as it is: QEMU's user must be able to
//! open it.

use super::cloudinit::{NoCloudData, write_nocloud_disk};
use super::daemons::RunAs;
use super::xml::{DiskFormat, PreparedVolume};
use crate::api::{CloudInitNoCloudSource, HostDiskType, VirtualMachineInstance, quantity_bytes};
use crate::statedir::{ScratchDir, StateDir};
use base64::Engine as _;
use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The `qemu-img` binary that makes the overlays.
pub const QEMU_IMG: &str = "/usr/bin/qemu-img";

/// Where volumes' files are read from and written to.
#[derive(Clone, Debug)]
pub struct VolumeDirs {
    /// Per-VM scratch (an emptyDir in a cluster): disks, overlays, cloud-init.img.
    pub scratch: PathBuf,
    /// Where the pod mounts each `containerDisk` image, as `<images>/<volume>/`.
    pub images: PathBuf,
    /// Where the pod mounts each Secret a `secretRef` names, as `<secrets>/<name>/`.
    pub secrets: PathBuf,
}

impl VolumeDirs {
    /// Everything under one directory (local mode, tests): images under
    /// `<dir>/container-disks`, secrets under `<dir>/secrets`.
    pub fn under(dir: &Path) -> Self {
        VolumeDirs {
            scratch: dir.to_path_buf(),
            images: StateDir::new(dir).container_disks(),
            secrets: StateDir::new(dir).secrets(),
        }
    }
}
/// The disk file inside a container disk image when `path` is not given (KubeVirt's
/// convention: the image's `/disk/` holds one image file).
pub const CONTAINER_DISK_DEFAULT: &str = "disk/disk.img";

/// A volume could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{field}: {what} {path}: {source}")]
    Io {
        field: String,
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{field}: qemu-img create overlay {overlay} on {image}: {message}")]
    Overlay {
        field: String,
        overlay: PathBuf,
        image: PathBuf,
        message: String,
    },
    #[error("{field}: {source}")]
    CloudInit {
        field: String,
        #[source]
        source: super::cloudinit::NoCloudError,
    },
}

/// qcow2 images start with `QFI\xfb`.
pub fn format_of_header(head: &[u8]) -> DiskFormat {
    if head.starts_with(b"QFI\xfb") {
        DiskFormat::Qcow2
    } else {
        DiskFormat::Raw
    }
}

fn detect_format(path: &Path) -> io::Result<DiskFormat> {
    let mut head = [0u8; 4];
    let mut f = fs::File::open(path)?;
    let n = f.read(&mut head)?;
    Ok(format_of_header(&head[..n]))
}

/// Create a sparse file of `size` bytes unless one exists. Creates no directories: a
/// hostDisk's directory is the node's to make.
fn ensure_sparse(path: &Path, size: u64) -> io::Result<()> {
    match OpenOptions::new().write(true).create_new(true).open(path) {
        Ok(f) => f.set_len(size),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

fn decode_text(
    field: &str,
    plain: Option<&str>,
    b64: Option<&str>,
) -> Result<Option<String>, VolumeError> {
    if let Some(p) = plain {
        return Ok(Some(p.to_string()));
    }
    let Some(b) = b64 else { return Ok(None) };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b.trim())
        .map_err(|e| VolumeError::Invalid {
            field: field.into(),
            message: format!("not base64: {e}"),
        })?;
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|e| VolumeError::Invalid {
            field: field.into(),
            message: format!("not UTF-8: {e}"),
        })
}

/// One key of a Secret the pod mounts at `<secrets>/<name>/`: KubeVirt's lower-case
/// key, else its camel-case one.
fn secret_text(
    secrets: &Path,
    field: &str,
    name: &str,
    keys: [&str; 2],
) -> Result<String, VolumeError> {
    let dir = secrets.join(name);
    for key in keys {
        let path = dir.join(key);
        match fs::read_to_string(&path) {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(VolumeError::Io {
                    field: field.into(),
                    what: "read",
                    path,
                    source,
                });
            }
        }
    }
    Err(VolumeError::Invalid {
        field: field.into(),
        message: format!(
            "Secret {name:?} has no key {} or {} (looked in {})",
            keys[0],
            keys[1],
            dir.display()
        ),
    })
}

/// The NoCloud data for a VMI's `cloudInitNoCloud` volume; `secretRef`s are read from
/// `<secrets>/<name>/`.
pub fn nocloud_data(
    vmi: &VirtualMachineInstance,
    src: &CloudInitNoCloudSource,
    field: &str,
    secrets: &Path,
) -> Result<NoCloudData, VolumeError> {
    let user_data = match &src.secret_ref {
        Some(r) => secret_text(
            secrets,
            &format!("{field}.secretRef"),
            &r.name,
            ["userdata", "userData"],
        )?,
        None => decode_text(
            &format!("{field}.userDataBase64"),
            src.user_data.as_deref(),
            src.user_data_base64.as_deref(),
        )?
        .unwrap_or_default(),
    };
    let network_config = match &src.network_data_secret_ref {
        Some(r) => Some(secret_text(
            secrets,
            &format!("{field}.networkDataSecretRef"),
            &r.name,
            ["networkdata", "networkData"],
        )?),
        None => decode_text(
            &format!("{field}.networkDataBase64"),
            src.network_data.as_deref(),
            src.network_data_base64.as_deref(),
        )?,
    };
    let name = vmi.metadata.name.clone().unwrap_or_else(|| "vmi".into());
    let instance_id = match (&vmi.metadata.uid, &vmi.metadata.namespace) {
        (Some(uid), _) => uid.clone(),
        (None, Some(ns)) => format!("{ns}.{name}"),
        (None, None) => name.clone(),
    };
    Ok(NoCloudData {
        instance_id,
        local_hostname: name,
        user_data,
        network_config,
    })
}

/// A qcow2 overlay at `overlay` backed by `image` (in `format`), unless one exists.
/// `qemu-img` opens the image read-only (to read its size) and records it, with its
/// format, as the overlay's backing file.
fn ensure_overlay(overlay: &Path, image: &Path, format: DiskFormat) -> Result<(), String> {
    if overlay.exists() {
        return Ok(());
    }
    if let Some(parent) = overlay.parent() {
        fs::create_dir_all(parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
    }
    let fmt = match format {
        DiskFormat::Qcow2 => "qcow2",
        DiskFormat::Raw => "raw",
    };
    // Made beside and renamed: a crash never leaves half an overlay under the name.
    let tmp = overlay.with_extension("qcow2.tmp");
    let out = std::process::Command::new(QEMU_IMG)
        .args(["create", "-q", "-f", "qcow2", "-F", fmt, "-b"])
        .arg(image)
        .arg(&tmp)
        .output()
        .map_err(|e| format!("run {QEMU_IMG}: {e}"))?;
    if !out.status.success() {
        let _ = fs::remove_file(&tmp);
        return Err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    fs::rename(&tmp, overlay).map_err(|e| format!("rename to {}: {e}", overlay.display()))
}

/// Make every volume's file ready and say where it is and in which format. The files
/// made here belong to `owner` (QEMU's user).
pub fn prepare_volumes(
    vmi: &VirtualMachineInstance,
    dirs: &VolumeDirs,
    owner: &RunAs,
) -> Result<BTreeMap<String, PreparedVolume>, VolumeError> {
    let scratch = ScratchDir::new(&dirs.scratch);
    let mut out = BTreeMap::new();
    for (i, vol) in vmi.spec.volumes.iter().enumerate() {
        let field = format!("spec.volumes[{i}]");
        let io_err = |sub: &str, what: &'static str, path: &Path| {
            let field = format!("{field}{sub}");
            let path = path.to_path_buf();
            move |source| VolumeError::Io {
                field,
                what,
                path,
                source,
            }
        };
        // A file made here, given to QEMU's user: the volume's file.
        let given_to_owner = |path: PathBuf, format: DiskFormat, sub: &str| {
            owner.chown(&path).map_err(io_err(sub, "chown", &path))?;
            Ok::<_, VolumeError>(PreparedVolume {
                path,
                format,
                read_only: false,
            })
        };
        let prepared = if let Some(h) = &vol.host_disk {
            let path = PathBuf::from(&h.path);
            if h.disk_type == HostDiskType::DiskOrCreate && !path.exists() {
                let cap = h.capacity.as_ref().ok_or_else(|| VolumeError::Invalid {
                    field: format!("{field}.hostDisk.capacity"),
                    message: "DiskOrCreate needs a capacity".into(),
                })?;
                let size = quantity_bytes(&cap.0).map_err(|e| VolumeError::Invalid {
                    field: format!("{field}.hostDisk.capacity"),
                    message: e.to_string(),
                })?;
                ensure_sparse(&path, size).map_err(io_err(".hostDisk.path", "create", &path))?;
                // Created here, so QEMU's user may have it (an existing one keeps its owner).
                owner
                    .chown(&path)
                    .map_err(io_err(".hostDisk.path", "chown", &path))?;
            }
            let format = detect_format(&path).map_err(io_err(".hostDisk.path", "open", &path))?;
            PreparedVolume {
                path,
                format,
                read_only: false,
            }
        } else if let Some(e) = &vol.empty_disk {
            let size = quantity_bytes(&e.capacity.0).map_err(|err| VolumeError::Invalid {
                field: format!("{field}.emptyDisk.capacity"),
                message: err.to_string(),
            })?;
            let dir = scratch.empty_disks();
            fs::create_dir_all(&dir).map_err(io_err(".emptyDisk", "create", &dir))?;
            let path = dir.join(format!("{}.img", vol.name));
            ensure_sparse(&path, size).map_err(io_err(".emptyDisk", "create", &path))?;
            given_to_owner(path, DiskFormat::Raw, ".emptyDisk")?
        } else if let Some(c) = &vol.container_disk {
            let inner = c.path.as_deref().unwrap_or(CONTAINER_DISK_DEFAULT);
            let image = dirs
                .images
                .join(&vol.name)
                .join(inner.trim_start_matches('/'));
            let format = detect_format(&image).map_err(io_err(".containerDisk", "open", &image))?;
            let path = scratch.container_disk_overlay(&vol.name);
            ensure_overlay(&path, &image, format).map_err(|message| VolumeError::Overlay {
                field: format!("{field}.containerDisk"),
                overlay: path.clone(),
                image: image.clone(),
                message,
            })?;
            given_to_owner(path, DiskFormat::Qcow2, ".containerDisk")?
        } else if let Some(ci) = &vol.cloud_init_no_cloud {
            let sub = format!("{field}.cloudInitNoCloud");
            let data = nocloud_data(vmi, ci, &sub, &dirs.secrets)?;
            let path = scratch.cloud_init_image();
            // User-data may hold secrets: the file is made 0600 before anything is
            // written to it, and given to QEMU's user after.
            let _ = fs::remove_file(&path);
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io_err(".cloudInitNoCloud", "create", &path))?;
            write_nocloud_disk(&path, &data)
                .map_err(|source| VolumeError::CloudInit { field: sub, source })?;
            given_to_owner(path, DiskFormat::Raw, ".cloudInitNoCloud")?
        } else {
            return Err(VolumeError::Invalid {
                field,
                message: "no volume source (hostDisk, emptyDisk, containerDisk, cloudInitNoCloud)"
                    .into(),
            });
        };
        out.insert(vol.name.clone(), prepared);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{EmptyDiskSource, HostDisk, Volume};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn vmi_with(volumes: Vec<Volume>) -> VirtualMachineInstance {
        let mut vmi = VirtualMachineInstance::new("vm1", Default::default());
        vmi.metadata.namespace = Some("ns".into());
        vmi.spec.volumes = volumes;
        vmi
    }

    /// A hostDisk volume `name` of `disk_type` at `path`.
    fn host_disk(
        name: &str,
        path: &Path,
        disk_type: HostDiskType,
        capacity: Option<&str>,
    ) -> Volume {
        Volume {
            name: name.into(),
            host_disk: Some(HostDisk {
                path: path.to_string_lossy().into(),
                disk_type,
                capacity: capacity.map(|c| Quantity(c.into())),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn header_detection() {
        assert_eq!(format_of_header(b"QFI\xfb\0\0\0\x03"), DiskFormat::Qcow2);
        assert_eq!(format_of_header(b"\0\0\0\0"), DiskFormat::Raw);
        assert_eq!(format_of_header(b""), DiskFormat::Raw);
    }

    #[test]
    fn empty_and_host_disks() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("base.qcow2");
        fs::write(&q, b"QFI\xfb\0\0\0\x03rest").unwrap();
        let created = dir.path().join("new/data.img");
        fs::create_dir(dir.path().join("new")).unwrap();
        let vmi = vmi_with(vec![
            Volume {
                name: "scratch".into(),
                empty_disk: Some(EmptyDiskSource {
                    capacity: Quantity("1Gi".into()),
                }),
                ..Default::default()
            },
            host_disk("root", &q, HostDiskType::Disk, None),
            host_disk("data", &created, HostDiskType::DiskOrCreate, Some("10Mi")),
        ]);
        let v = prepare_volumes(&vmi, &VolumeDirs::under(dir.path()), &RunAs::current()).unwrap();
        let scratch = &v["scratch"];
        assert_eq!(scratch.path, dir.path().join("disks/scratch.img"));
        assert_eq!(fs::metadata(&scratch.path).unwrap().len(), 1 << 30);
        assert_eq!(v["root"].format, DiskFormat::Qcow2);
        assert_eq!(fs::metadata(&created).unwrap().len(), 10 << 20);
        assert_eq!(v["data"].format, DiskFormat::Raw);
    }

    #[test]
    fn missing_host_disk_names_field_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let vmi = vmi_with(vec![host_disk(
            "root",
            Path::new("/nonexistent/root.img"),
            HostDiskType::Disk,
            None,
        )]);
        let e = prepare_volumes(&vmi, &VolumeDirs::under(dir.path()), &RunAs::current())
            .unwrap_err()
            .to_string();
        assert!(e.contains("spec.volumes[0].hostDisk.path"), "{e}");
        assert!(e.contains("/nonexistent/root.img"), "{e}");
    }

    #[test]
    fn disk_or_create_makes_no_directories() {
        let dir = tempfile::tempdir().unwrap();
        let wanted = dir.path().join("a/b/data.img");
        let vmi = vmi_with(vec![host_disk(
            "data",
            &wanted,
            HostDiskType::DiskOrCreate,
            Some("1Mi"),
        )]);
        let e = prepare_volumes(&vmi, &VolumeDirs::under(dir.path()), &RunAs::current())
            .unwrap_err()
            .to_string();
        assert!(e.contains("spec.volumes[0].hostDisk.path: create"), "{e}");
        assert!(!dir.path().join("a").exists(), "no parent directory made");
    }

    #[test]
    fn cloud_init_from_base64() {
        let dir = tempfile::tempdir().unwrap();
        let vmi = vmi_with(vec![Volume {
            name: "ci".into(),
            cloud_init_no_cloud: Some(CloudInitNoCloudSource {
                user_data_base64: Some("I2Nsb3VkLWNvbmZpZwo=".into()),
                ..Default::default()
            }),
            ..Default::default()
        }]);
        let v = prepare_volumes(&vmi, &VolumeDirs::under(dir.path()), &RunAs::current()).unwrap();
        assert_eq!(v["ci"].path, ScratchDir::new(dir.path()).cloud_init_image());
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&v["ci"].path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "user-data may be secret");
        let data = nocloud_data(
            &vmi,
            vmi.spec.volumes[0].cloud_init_no_cloud.as_ref().unwrap(),
            "f",
            dir.path(),
        )
        .unwrap();
        assert_eq!(data.user_data, "#cloud-config\n");
        assert_eq!(data.instance_id, "ns.vm1");
        let bad = CloudInitNoCloudSource {
            user_data_base64: Some("!!".into()),
            ..Default::default()
        };
        let e =
            nocloud_data(&vmi, &bad, "spec.volumes[0].cloudInitNoCloud", dir.path()).unwrap_err();
        assert!(
            e.to_string()
                .contains("spec.volumes[0].cloudInitNoCloud.userDataBase64"),
            "{e}"
        );
    }

    #[test]
    fn user_and_network_data_from_mounted_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = dir.path();
        fs::create_dir_all(secrets.join("ud")).unwrap();
        fs::write(secrets.join("ud/userdata"), "#cloud-config\nfrom: secret\n").unwrap();
        fs::create_dir_all(secrets.join("nd")).unwrap();
        fs::write(secrets.join("nd/networkData"), "version: 2\n").unwrap();
        let vmi = vmi_with(Vec::new());
        let reference = |name: &str| {
            Some(crate::api::LocalObjectReference {
                name: name.to_owned(),
            })
        };
        let src = CloudInitNoCloudSource {
            secret_ref: reference("ud"),
            network_data_secret_ref: reference("nd"),
            ..Default::default()
        };
        let data = nocloud_data(&vmi, &src, "f", secrets).unwrap();
        assert_eq!(data.user_data, "#cloud-config\nfrom: secret\n");
        assert_eq!(data.network_config.as_deref(), Some("version: 2\n"));
        // A Secret without the key names the field, the Secret and the keys looked for.
        let missing = CloudInitNoCloudSource {
            secret_ref: reference("nd"),
            ..Default::default()
        };
        let e = nocloud_data(&vmi, &missing, "spec.volumes[2].cloudInitNoCloud", secrets)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("spec.volumes[2].cloudInitNoCloud.secretRef") && e.contains("userdata"),
            "{e}"
        );
    }

    fn qemu_img_info(path: &Path) -> serde_json::Value {
        let out = std::process::Command::new(QEMU_IMG)
            .args(["info", "--output=json"])
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    #[test]
    fn container_disk_gets_an_overlay_backed_by_the_untouched_image() {
        if !Path::new(QEMU_IMG).exists() {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !ci,
                "{QEMU_IMG} missing (tests/setup.sh installs qemu-utils)"
            );
            eprintln!("SKIPPED: {QEMU_IMG} missing");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let dirs = VolumeDirs::under(dir.path());
        // One raw image, one qcow2 image (made from the raw one), each in its volume's
        // mount as the pod lays them out.
        let raw = dirs.images.join("rawdisk/disk/disk.img");
        fs::create_dir_all(raw.parent().unwrap()).unwrap();
        let bytes: Vec<u8> = (0..65536u32).map(|i| (i % 253) as u8).collect();
        fs::write(&raw, &bytes).unwrap();
        let qcow = dirs.images.join("qdisk/images/os.qcow2");
        fs::create_dir_all(qcow.parent().unwrap()).unwrap();
        let made = std::process::Command::new(QEMU_IMG)
            .args(["convert", "-O", "qcow2"])
            .arg(&raw)
            .arg(&qcow)
            .status()
            .unwrap();
        assert!(made.success());
        let before: Vec<(PathBuf, Vec<u8>, std::time::SystemTime)> = [&raw, &qcow]
            .iter()
            .map(|p| {
                let m = fs::metadata(p).unwrap();
                ((*p).clone(), fs::read(p).unwrap(), m.modified().unwrap())
            })
            .collect();
        let vmi = vmi_with(vec![
            Volume {
                name: "rawdisk".into(),
                container_disk: Some(crate::api::ContainerDiskSource {
                    image: "example/raw:1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Volume {
                name: "qdisk".into(),
                container_disk: Some(crate::api::ContainerDiskSource {
                    image: "example/q:1".into(),
                    path: Some("/images/os.qcow2".into()),
                }),
                ..Default::default()
            },
        ]);
        let v = prepare_volumes(&vmi, &dirs, &RunAs::current()).unwrap();
        for (vol, image, fmt) in [("rawdisk", &raw, "raw"), ("qdisk", &qcow, "qcow2")] {
            let p = &v[vol];
            assert_eq!(
                p.path,
                dir.path().join(format!("container-disks/{vol}.qcow2"))
            );
            assert_eq!((p.format, p.read_only), (DiskFormat::Qcow2, false));
            let info = qemu_img_info(&p.path);
            assert_eq!(info["format"], "qcow2", "{vol}");
            assert_eq!(info["backing-filename"], image.to_string_lossy().as_ref());
            assert_eq!(info["backing-filename-format"], fmt, "{vol}");
            assert_eq!(info["virtual-size"], 65536, "{vol}");
        }
        // A second prepare (a restarted launcher) keeps the overlay and its writes.
        fs::write(dir.path().join("container-disks/rawdisk.qcow2.marker"), "").unwrap();
        let again = prepare_volumes(&vmi, &dirs, &RunAs::current()).unwrap();
        assert_eq!(again["rawdisk"].path, v["rawdisk"].path);
        // The images were only read.
        for (p, content, mtime) in before {
            assert_eq!(fs::read(&p).unwrap(), content, "{}", p.display());
            assert_eq!(fs::metadata(&p).unwrap().modified().unwrap(), mtime);
        }
        // A missing image names the field and the path.
        fs::remove_file(&raw).unwrap();
        fs::remove_file(dir.path().join("container-disks/rawdisk.qcow2")).unwrap();
        let e = prepare_volumes(&vmi, &dirs, &RunAs::current())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("spec.volumes[0].containerDisk") && e.contains("rawdisk/disk/disk.img"),
            "{e}"
        );
    }
}
