//! What a later daemon needs to adopt an unlocked volume after this one dies alone:
//! `RUNTIME/volumes/NAME.json`, root-only, written (temp file, then rename) before the unlock
//! is answered and removed when the session is closed. Never a secret: where things are, and
//! who and what serves them.

use super::filesystem::FsInfo;
use super::mount::Owner;
use super::session::Session;
use crate::protocol::{Engine, FsType};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Under the runtime dir: one record per unlocked volume.
pub const VOLUMES_DIR: &str = "volumes";
/// This boot's id: a record of another boot names pids and loop devices of no meaning here.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
/// Larger than any record we write: a bigger file is not read.
const MAX_RECORD: u64 = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub boot_id: String,
    /// Kernel name (`sdb1`) and path (`/dev/sdb1`).
    pub name: String,
    pub device: String,
    pub diskseq: Option<u64>,
    pub owner_name: String,
    pub owner_uid: u32,
    pub owner_gid: u32,
    pub engine: Engine,
    /// The FUSE engine's pid and start time (/proc/PID/stat), so a reused pid is not it.
    pub engine_pid: Option<i32>,
    pub engine_start_time: Option<u64>,
    /// Where the FUSE engine's view is mounted; the dm-crypt mapping's name.
    pub view_dir: Option<PathBuf>,
    pub mapping: Option<String>,
    pub decrypted: PathBuf,
    pub mountpoint: Option<PathBuf>,
    pub mount_fs_type: Option<FsType>,
    pub loop_device: Option<String>,
    /// Directories made for the mount, removed (when empty) once it is put away.
    pub made_dirs: Vec<PathBuf>,
    pub fs_type: Option<FsType>,
    pub label: Option<String>,
    pub uuid: Option<String>,
    pub read_only: bool,
    /// How the filesystem was mounted: its driver, read-only whether asked or not, and why
    /// otherwise than asked.
    #[serde(default)]
    pub fs_driver: Option<String>,
    #[serde(default)]
    pub mount_read_only: bool,
    #[serde(default)]
    pub notice: Option<String>,
}

impl Record {
    pub fn of(name: &str, device: &str, diskseq: Option<u64>, s: &Session) -> Self {
        let (pid, started) = s.view.process().unzip();
        let m = s.mounted.as_ref();
        Self {
            boot_id: boot_id(),
            name: name.into(),
            device: device.into(),
            diskseq,
            owner_name: s.owner.name.clone(),
            owner_uid: s.owner.uid,
            owner_gid: s.owner.gid,
            engine: s.view.engine,
            engine_pid: pid.map(|p| p.as_raw()),
            engine_start_time: started.flatten(),
            view_dir: s.view.mount_dir().map(Path::to_owned),
            mapping: s.view.mapping().map(str::to_owned),
            decrypted: s.view.decrypted.clone(),
            mountpoint: m.map(|m| m.mountpoint.clone()),
            mount_fs_type: m.map(|m| m.fs_type),
            loop_device: m.and_then(|m| m.loop_device.clone()),
            made_dirs: m.map(|m| m.made_dirs.clone()).unwrap_or_default(),
            fs_type: s.fs.as_ref().map(|f| f.fs_type),
            label: s.fs.as_ref().and_then(|f| f.label.clone()),
            uuid: s.fs.as_ref().and_then(|f| f.uuid.clone()),
            read_only: s.read_only,
            fs_driver: m.map(|m| m.driver.to_owned()),
            mount_read_only: m.is_some_and(|m| m.read_only),
            notice: m.and_then(|m| m.notice.clone()),
        }
    }

    pub fn owner(&self) -> Owner {
        Owner {
            name: self.owner_name.clone(),
            uid: self.owner_uid,
            gid: self.owner_gid,
        }
    }

    pub fn fs(&self) -> Option<FsInfo> {
        Some(FsInfo {
            fs_type: self.fs_type?,
            label: self.label.clone(),
            uuid: self.uuid.clone(),
        })
    }
}

/// This boot's id (empty if unreadable: then no record is taken for this boot's).
pub fn boot_id() -> String {
    std::fs::read_to_string(BOOT_ID)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

pub fn dir(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join(VOLUMES_DIR)
}

/// Writes `record` as `volumes/NAME.json`, 0600, whole or not at all; returns its path.
pub fn write(runtime_dir: &Path, record: &Record) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = dir(runtime_dir);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(&dir)?;
    let path = dir.join(format!("{}.json", record.name));
    let temp = dir.join(format!(".{}.json.tmp", record.name));
    let text = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    let written = (|| {
        let mut file = std::fs::File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temp)?;
        file.write_all(&text)?;
        file.sync_all()?;
        std::fs::rename(&temp, &path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written.map(|()| path)
}

pub fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            log::warn!("cannot remove {}: {e}", path.display());
        }
    }
}

/// Every record left in the runtime dir, each read or why it cannot be (leftover temp files
/// are removed).
pub fn read_all(runtime_dir: &Path) -> Vec<(PathBuf, Result<Record, String>)> {
    use std::io::Read;
    let Ok(entries) = std::fs::read_dir(dir(runtime_dir)) else {
        return Vec::new();
    };
    let mut records: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter_map(|path| {
            let name = path.file_name()?.to_str()?;
            if name.starts_with('.') && name.ends_with(".tmp") {
                remove(&path);
                return None;
            }
            name.ends_with(".json").then_some(path)
        })
        .map(|path| {
            let mut text = Vec::new();
            let read = std::fs::File::open(&path)
                .and_then(|f| f.take(MAX_RECORD).read_to_end(&mut text))
                .map_err(|e| e.to_string())
                .and_then(|_| serde_json::from_slice(&text).map_err(|e| e.to_string()));
            (path, read)
        })
        .collect();
    records.sort_by(|a, b| a.0.cmp(&b.0));
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_written_whole_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let runtime = std::env::temp_dir().join(format!("guilocker-record-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&runtime);
        let record = Record {
            boot_id: boot_id(),
            name: "loop0p1".into(),
            device: "/dev/loop0p1".into(),
            diskseq: Some(9),
            owner_name: "alice".into(),
            owner_uid: 1000,
            owner_gid: 1000,
            engine: Engine::Native,
            engine_pid: Some(4242),
            engine_start_time: Some(987654),
            view_dir: Some("/run/guilocker/views/loop0p1".into()),
            mapping: None,
            decrypted: "/run/guilocker/views/loop0p1/volume".into(),
            mountpoint: Some("/media/alice/STICK".into()),
            mount_fs_type: Some(FsType::Ntfs),
            loop_device: Some("/dev/loop7".into()),
            made_dirs: vec!["/media/alice/STICK".into()],
            fs_type: Some(FsType::Ntfs),
            label: Some("STICK".into()),
            uuid: None,
            read_only: false,
            fs_driver: Some("ntfs-3g".into()),
            mount_read_only: false,
            notice: None,
        };
        let path = write(&runtime, &record).unwrap();
        assert_eq!(path, runtime.join("volumes/loop0p1.json"));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir(&runtime)), 0o700);
        std::fs::write(dir(&runtime).join(".sdc1.json.tmp"), "{").unwrap();
        std::fs::write(dir(&runtime).join("sdc1.json"), "not json").unwrap();
        let read = read_all(&runtime);
        assert_eq!(read.len(), 2, "{read:?}");
        assert_eq!(read[0].1.as_ref().unwrap(), &record);
        assert!(read[1].1.is_err());
        assert!(!dir(&runtime).join(".sdc1.json.tmp").exists());
        remove(&path);
        assert!(!path.exists());
        std::fs::remove_dir_all(&runtime).unwrap();
    }
}
