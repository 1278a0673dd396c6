//! The daemon's TOML configuration: defaults, validation, and clear errors for bad files.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

pub const DEFAULT_CONFIG: &str = "/etc/guilocker/config.toml";

/// Filesystems the daemon mounts; keys of `[mount_options]`.
pub const FILESYSTEMS: [&str; 3] = ["ntfs", "exfat", "vfat"];

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Also watch loop devices (tests use them as USB sticks).
    pub include_loop_devices: bool,
    /// Members of this group may unlock; `"*"` lets every local user unlock.
    pub allowed_group: String,
    /// Where volumes are mounted: `<mount_root>/<owner>/<label>`.
    pub mount_root: PathBuf,
    /// Mount every volume read-only.
    pub read_only: bool,
    /// Safety-net re-read of /proc/partitions, in milliseconds (uevents wake the daemon at once).
    pub poll_interval_ms: u64,
    /// Extra mount options per filesystem, e.g. `ntfs = ["windows_names"]`.
    pub mount_options: BTreeMap<String, Vec<String>>,
    /// Which engine decrypts: the kernel's dm-crypt, else our own, else dislocker (`auto`),
    /// or one of them always.
    pub engine: EngineChoice,
    /// Leave BitLocker drives to the desktop (GNOME/KDE ask through udisks): no dialog from
    /// the agent, and the desktop is not told to ignore them. `guilocker unlock` still works.
    pub leave_bitlocker_to_desktop: bool,
    /// Besides `allowed_group`, an unlock must come from the active local login session
    /// (logind), as udisks' `allow_active`: not over SSH, not from a session in the
    /// background. Where logind is absent, the group alone decides (said once in the log).
    pub require_active_session: bool,
    /// BitLocker drives inside the machine (on a dual-boot laptop, Windows' own C: drive):
    /// opened on demand, never asked about (`on_demand`), or not handled at all (`ignore`).
    pub internal_drives: InternalDrives,
    /// Which driver mounts NTFS: the kernel's ntfs3 where it has it, else ntfs-3g (`auto`),
    /// or always ntfs-3g.
    pub ntfs_driver: NtfsDriver,
}

/// The `internal_drives` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InternalDrives {
    /// Listed, never asked about; `guilocker unlock` (or the applications menu) opens one,
    /// from the active local session or as root.
    #[default]
    OnDemand,
    /// Neither listed nor opened: the daemon leaves them alone.
    Ignore,
}

/// The `ntfs_driver` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum NtfsDriver {
    /// ntfs3 where the kernel has it (a volume it refuses as dirty goes to ntfs-3g), else
    /// ntfs-3g.
    #[default]
    #[serde(rename = "auto")]
    Auto,
    /// Always ntfs-3g (FUSE).
    #[serde(rename = "ntfs-3g")]
    Ntfs3g,
}

/// The `engine` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineChoice {
    /// dm-crypt where the kernel has device-mapper and the cipher, else the native engine
    /// for every volume our reader lays out, dislocker for the rest.
    #[default]
    Auto,
    /// Only dm-crypt; a volume it cannot open fails to unlock.
    #[serde(rename = "dm-crypt")]
    DmCrypt,
    /// Only the native engine; a volume it cannot lay out fails to unlock.
    Native,
    /// Always dislocker.
    Dislocker,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            include_loop_devices: false,
            allowed_group: "plugdev".into(),
            mount_root: PathBuf::from("/media"),
            read_only: false,
            poll_interval_ms: 2000,
            mount_options: BTreeMap::new(),
            engine: EngineChoice::Auto,
            leave_bitlocker_to_desktop: false,
            require_active_session: true,
            internal_drives: InternalDrives::OnDemand,
            ntfs_driver: NtfsDriver::Auto,
        }
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {key} = {value}: {cause}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        value: String,
        cause: &'static str,
    },
}

impl Config {
    /// Loads `path`. A missing file at the default path means defaults; a missing file the
    /// user named is an error.
    pub fn load(path: &Path, explicit: bool) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Self::default())
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.into(),
                    source,
                })
            }
        };
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.message().to_owned(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key, value: String, cause| ConfigError::Invalid {
            path: path.into(),
            key,
            value,
            cause,
        };
        if !(100..=3_600_000).contains(&self.poll_interval_ms) {
            return Err(invalid(
                "poll_interval_ms",
                self.poll_interval_ms.to_string(),
                "must be between 100 and 3600000",
            ));
        }
        let root = self.mount_root.to_string_lossy().into_owned();
        if !self.mount_root.is_absolute()
            || self.mount_root.components().any(|c| c.as_os_str() == "..")
        {
            return Err(invalid(
                "mount_root",
                root,
                "must be an absolute path without '..'",
            ));
        }
        if self.allowed_group.is_empty() {
            return Err(invalid(
                "allowed_group",
                String::new(),
                "must name a group, or be \"*\" for everyone",
            ));
        }
        for (fs, options) in &self.mount_options {
            if !FILESYSTEMS.contains(&fs.as_str()) {
                return Err(invalid(
                    "mount_options",
                    fs.clone(),
                    "unknown filesystem (use ntfs, exfat or vfat)",
                ));
            }
            if let Some(bad) = options
                .iter()
                .find(|o| o.is_empty() || o.contains([',', '\n', '\0']))
            {
                return Err(invalid(
                    "mount_options",
                    format!("{fs} = {bad:?}"),
                    "each option must be one non-empty word without commas",
                ));
            }
        }
        Ok(())
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    pub fn extra_options(&self, fs: &str) -> &[String] {
        self.mount_options.get(fs).map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/guilocker/config.toml"))
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn full_file() {
        let c = parse(
            "include_loop_devices = true\nallowed_group = \"*\"\nmount_root = \"/run/media\"\n\
             read_only = true\npoll_interval_ms = 500\n[mount_options]\nntfs = [\"windows_names\"]\n",
        )
        .unwrap();
        assert!(c.include_loop_devices && c.read_only);
        assert_eq!(c.extra_options("ntfs"), ["windows_names"]);
        assert!(c.extra_options("vfat").is_empty());
    }

    #[test]
    fn engine_choice() {
        assert_eq!(parse("").unwrap().engine, EngineChoice::Auto);
        assert_eq!(
            parse("engine = \"dislocker\"").unwrap().engine,
            EngineChoice::Dislocker
        );
        assert_eq!(
            parse("engine = \"native\"").unwrap().engine,
            EngineChoice::Native
        );
        assert_eq!(
            parse("engine = \"dm-crypt\"").unwrap().engine,
            EngineChoice::DmCrypt
        );
        let e = parse("engine = \"fast\"").unwrap_err().to_string();
        assert!(e.contains("fast") || e.contains("variant"), "{e}");
    }

    /// The example installed to /etc/guilocker/config.toml is valid and says the defaults.
    #[test]
    fn shipped_example_is_the_defaults() {
        let text = include_str!("../packaging/config/config.toml");
        assert_eq!(parse(text).unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("include_loop_device = true").unwrap_err().to_string();
        assert!(e.contains("include_loop_device"), "{e}");
        assert!(e.contains("/etc/guilocker/config.toml"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = parse("poll_interval_ms = 0").unwrap_err().to_string();
        assert!(e.contains("poll_interval_ms = 0"), "{e}");
        let e = parse("mount_root = \"media\"").unwrap_err().to_string();
        assert!(e.contains("mount_root"), "{e}");
        let e = parse("[mount_options]\nbtrfs = []")
            .unwrap_err()
            .to_string();
        assert!(e.contains("btrfs"), "{e}");
        let e = parse("[mount_options]\nntfs = [\"a,suid\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("commas"), "{e}");
        assert!(parse("read_only = \"yes\"").is_err());
    }

    #[test]
    fn missing_default_file_is_fine_but_named_file_is_not() {
        let p = Path::new("/nonexistent/guilocker.toml");
        assert_eq!(Config::load(p, false).unwrap(), Config::default());
        assert!(matches!(
            Config::load(p, true),
            Err(ConfigError::Read { .. })
        ));
    }
}
