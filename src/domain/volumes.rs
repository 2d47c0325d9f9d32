//! The files behind a VMI's volumes, made ready before the domain is defined:
//! `hostDisk` (must exist, or created sparse for `DiskOrCreate` in an existing directory), `emptyDisk` (a sparse
//! file under `<state-dir>/disks/`), `containerDisk` (the image's disk file where the pod
//! mounts it) and `cloudInitNoCloud` (`<state-dir>/cloud-init.img`). Owns those files;
//! reads a disk's first bytes to tell qcow2 from raw.

use super::cloudinit::{NoCloudData, write_nocloud_disk};
use super::xml::{DiskFormat, PreparedVolume};
use crate::api::{CloudInitNoCloudSource, HostDiskType, VirtualMachineInstance, quantity_bytes};
use base64::Engine as _;
use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// The NoCloud disk's file name in the state dir.
pub const CLOUD_INIT_IMAGE: &str = "cloud-init.img";
/// Where, under the state dir, the pod mounts a `containerDisk` volume's image.
pub const CONTAINER_DISKS: &str = "container-disks";
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

/// The NoCloud data for a VMI's `cloudInitNoCloud` volume (pure).
pub fn nocloud_data(
    vmi: &VirtualMachineInstance,
    src: &CloudInitNoCloudSource,
    field: &str,
) -> Result<NoCloudData, VolumeError> {
    let user_data = decode_text(
        &format!("{field}.userDataBase64"),
        src.user_data.as_deref(),
        src.user_data_base64.as_deref(),
    )?
    .unwrap_or_default();
    let network_config = decode_text(
        &format!("{field}.networkDataBase64"),
        src.network_data.as_deref(),
        src.network_data_base64.as_deref(),
    )?;
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

/// Make every volume's file ready and say where it is and in which format.
pub fn prepare_volumes(
    vmi: &VirtualMachineInstance,
    state_dir: &Path,
) -> Result<BTreeMap<String, PreparedVolume>, VolumeError> {
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
            let dir = state_dir.join("disks");
            fs::create_dir_all(&dir).map_err(io_err(".emptyDisk", "create", &dir))?;
            let path = dir.join(format!("{}.img", vol.name));
            ensure_sparse(&path, size).map_err(io_err(".emptyDisk", "create", &path))?;
            PreparedVolume {
                path,
                format: DiskFormat::Raw,
                read_only: false,
            }
        } else if let Some(c) = &vol.container_disk {
            let inner = c.path.as_deref().unwrap_or(CONTAINER_DISK_DEFAULT);
            let path = state_dir
                .join(CONTAINER_DISKS)
                .join(&vol.name)
                .join(inner.trim_start_matches('/'));
            let format = detect_format(&path).map_err(io_err(".containerDisk", "open", &path))?;
            PreparedVolume {
                path,
                format,
                read_only: false,
            }
        } else if let Some(ci) = &vol.cloud_init_no_cloud {
            let sub = format!("{field}.cloudInitNoCloud");
            let data = nocloud_data(vmi, ci, &sub)?;
            let path = state_dir.join(CLOUD_INIT_IMAGE);
            write_nocloud_disk(&path, &data)
                .map_err(|source| VolumeError::CloudInit { field: sub, source })?;
            PreparedVolume {
                path,
                format: DiskFormat::Raw,
                read_only: false,
            }
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
            Volume {
                name: "root".into(),
                host_disk: Some(HostDisk {
                    path: q.to_string_lossy().into(),
                    disk_type: HostDiskType::Disk,
                    capacity: None,
                }),
                ..Default::default()
            },
            Volume {
                name: "data".into(),
                host_disk: Some(HostDisk {
                    path: created.to_string_lossy().into(),
                    disk_type: HostDiskType::DiskOrCreate,
                    capacity: Some(Quantity("10Mi".into())),
                }),
                ..Default::default()
            },
        ]);
        let v = prepare_volumes(&vmi, dir.path()).unwrap();
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
        let vmi = vmi_with(vec![Volume {
            name: "root".into(),
            host_disk: Some(HostDisk {
                path: "/nonexistent/root.img".into(),
                disk_type: HostDiskType::Disk,
                capacity: None,
            }),
            ..Default::default()
        }]);
        let e = prepare_volumes(&vmi, dir.path()).unwrap_err().to_string();
        assert!(e.contains("spec.volumes[0].hostDisk.path"), "{e}");
        assert!(e.contains("/nonexistent/root.img"), "{e}");
    }

    #[test]
    fn disk_or_create_makes_no_directories() {
        let dir = tempfile::tempdir().unwrap();
        let wanted = dir.path().join("a/b/data.img");
        let vmi = vmi_with(vec![Volume {
            name: "data".into(),
            host_disk: Some(HostDisk {
                path: wanted.to_string_lossy().into(),
                disk_type: HostDiskType::DiskOrCreate,
                capacity: Some(Quantity("1Mi".into())),
            }),
            ..Default::default()
        }]);
        let e = prepare_volumes(&vmi, dir.path()).unwrap_err().to_string();
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
        let v = prepare_volumes(&vmi, dir.path()).unwrap();
        assert_eq!(v["ci"].path, dir.path().join(CLOUD_INIT_IMAGE));
        let data = nocloud_data(
            &vmi,
            vmi.spec.volumes[0].cloud_init_no_cloud.as_ref().unwrap(),
            "f",
        )
        .unwrap();
        assert_eq!(data.user_data, "#cloud-config\n");
        assert_eq!(data.instance_id, "ns.vm1");
        let bad = CloudInitNoCloudSource {
            user_data_base64: Some("!!".into()),
            ..Default::default()
        };
        let e = nocloud_data(&vmi, &bad, "spec.volumes[0].cloudInitNoCloud").unwrap_err();
        assert!(
            e.to_string()
                .contains("spec.volumes[0].cloudInitNoCloud.userDataBase64"),
            "{e}"
        );
    }
}
