//! The cloud-init NoCloud disk: a small vfat image labelled `cidata` holding `user-data`,
//! `meta-data` and, when given, `network-config`, written with the `fatfs` crate (no
//! external tool). Owns only the image file it is asked to write.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The volume label cloud-init's NoCloud datasource looks for (blkid `LABEL=cidata`).
pub const CIDATA_LABEL: [u8; 11] = *b"cidata     ";

/// What goes on the NoCloud disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoCloudData {
    /// `meta-data` `instance-id`: a new value tells cloud-init it is a new instance.
    pub instance_id: String,
    /// `meta-data` `local-hostname`.
    pub local_hostname: String,
    /// The `user-data` file, verbatim (`#cloud-config ...`, a shell script, ...).
    pub user_data: String,
    /// The `network-config` file, verbatim (network config v1 or v2), when given.
    pub network_config: Option<String>,
}

/// Writing the NoCloud disk failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the cloud-init NoCloud disk {path}: {source}")]
pub struct NoCloudError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl NoCloudData {
    /// The `meta-data` file: YAML with `instance-id` and `local-hostname`.
    pub fn meta_data(&self) -> String {
        format!(
            "instance-id: {}\nlocal-hostname: {}\n",
            yaml_scalar(&self.instance_id),
            yaml_scalar(&self.local_hostname)
        )
    }

    /// The files on the disk, in the order they are written.
    pub fn files(&self) -> Vec<(&'static str, String)> {
        let mut files = vec![
            ("meta-data", self.meta_data()),
            ("user-data", self.user_data.clone()),
        ];
        if let Some(nc) = &self.network_config {
            files.push(("network-config", nc.clone()));
        }
        files
    }
}

/// A YAML scalar that stays a string whatever it holds (quoted when it must be).
fn yaml_scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !s
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit() || c == '-' || c == '.');
    if plain {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
    }
}

/// Image size: the files rounded up plus room for FAT12 metadata; at least 1 MiB.
fn image_size(data: &NoCloudData) -> u64 {
    let payload: u64 = data
        .files()
        .iter()
        .map(|(_, body)| (body.len() as u64).div_ceil(4096) * 4096)
        .sum();
    (payload + 256 * 1024).max(1024 * 1024).div_ceil(512) * 512
}

/// Write the NoCloud disk to `path` (replacing any file there) and return its size.
pub fn write_nocloud_disk(path: &Path, data: &NoCloudData) -> Result<u64, NoCloudError> {
    let err = |source| NoCloudError {
        path: path.to_path_buf(),
        source,
    };
    let size = image_size(data);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(err)?;
    file.set_len(size).map_err(err)?;
    fatfs::format_volume(
        &mut file,
        fatfs::FormatVolumeOptions::new()
            .volume_label(CIDATA_LABEL)
            .volume_id(0x6369_6461),
    )
    .map_err(err)?;
    io::Seek::rewind(&mut file).map_err(err)?;
    {
        let fs = fatfs::FileSystem::new(&mut file, fatfs::FsOptions::new()).map_err(err)?;
        for (name, body) in data.files() {
            let mut f = fs.root_dir().create_file(name).map_err(err)?;
            f.truncate().map_err(err)?;
            f.write_all(body.as_bytes()).map_err(err)?;
            f.flush().map_err(err)?;
        }
        fs.unmount().map_err(err)?;
    }
    file.sync_all().map_err(err)?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample() -> NoCloudData {
        NoCloudData {
            instance_id: "default/vm1".into(),
            local_hostname: "vm1".into(),
            user_data: "#cloud-config\nruncmd:\n  - echo hello\n".into(),
            network_config: Some("version: 2\n".into()),
        }
    }

    fn read_back(path: &Path) -> (String, Vec<(String, String)>) {
        let file = std::fs::File::open(path).unwrap();
        let fs = fatfs::FileSystem::new(file, fatfs::FsOptions::new()).unwrap();
        let label = fs.volume_label();
        let mut files = Vec::new();
        for e in fs.root_dir().iter() {
            let e = e.unwrap();
            let mut body = String::new();
            e.to_file().read_to_string(&mut body).unwrap();
            files.push((e.file_name(), body));
        }
        (label, files)
    }

    #[test]
    fn disk_holds_label_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cloud-init.img");
        let data = sample();
        write_nocloud_disk(&path, &data).unwrap();
        let (label, files) = read_back(&path);
        assert_eq!(label.trim_end(), "cidata");
        assert_eq!(
            files,
            vec![
                (
                    "meta-data".into(),
                    "instance-id: \"default/vm1\"\nlocal-hostname: vm1\n".into()
                ),
                ("user-data".into(), data.user_data.clone()),
                ("network-config".into(), "version: 2\n".into()),
            ]
        );
    }

    #[test]
    fn rewrite_replaces_old_content_and_network_config_is_optional() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cloud-init.img");
        let mut data = sample();
        data.user_data = "x".repeat(300_000);
        write_nocloud_disk(&path, &data).unwrap();
        data.user_data = "#!/bin/sh\necho short\n".into();
        data.network_config = None;
        write_nocloud_disk(&path, &data).unwrap();
        let (_, files) = read_back(&path);
        let names: Vec<_> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["meta-data", "user-data"]);
        assert_eq!(files[1].1, "#!/bin/sh\necho short\n");
    }

    #[test]
    fn large_user_data_fits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.img");
        let mut data = sample();
        data.user_data = "y".repeat(3 * 1024 * 1024);
        let size = write_nocloud_disk(&path, &data).unwrap();
        assert!(size > 3 * 1024 * 1024);
        let (_, files) = read_back(&path);
        assert_eq!(files[1].1.len(), 3 * 1024 * 1024);
    }

    #[test]
    fn meta_data_quotes_what_yaml_would_misread() {
        assert_eq!(yaml_scalar("vm-1"), "vm-1");
        assert_eq!(yaml_scalar("123"), "\"123\"");
        assert_eq!(yaml_scalar("a: b"), "\"a: b\"");
        assert_eq!(yaml_scalar(""), "\"\"");
    }

    #[test]
    fn unwritable_path_names_the_file() {
        let e = write_nocloud_disk(Path::new("/nonexistent-dir/ci.img"), &sample()).unwrap_err();
        assert!(e.to_string().contains("/nonexistent-dir/ci.img"), "{e}");
    }
}
