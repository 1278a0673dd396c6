//! The cryptsetup BitLocker images: metadata against images.conf, then every protector's FVEK
//! handed to the real dislocker (`-k`), whose decrypted view must hash to images.conf's value.
//!
//! Fixtures: `$GUILOCKER_FIXTURES` (a directory with images.conf), else the tarball in
//! `$CARGO_MANIFEST_DIR/../shared/fixtures/bitlocker/`, unpacked into `$CARGO_TARGET_TMPDIR`.
//! Missing fixtures, root or dislocker skip with a reason, except under `CI=true`: then fail.

use guilocker::bitlocker::{
    derive_fvek, read_metadata, unlock, BitlockerError, Cipher, EncryptionState, Key, Metadata,
    ProtectorKind,
};
use guilocker::secret::SecretString;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

type Section = BTreeMap<String, String>;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skips (prints why and returns `None`) or, under CI, fails.
fn skip<T>(reason: &str) -> Option<T> {
    assert!(!in_ci(), "CI=true and {reason}");
    eprintln!("skipped: {reason}");
    None
}

fn fixtures() -> Option<PathBuf> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match DIR.get_or_init(locate) {
        Ok(dir) => Some(dir.clone()),
        Err(reason) => skip(reason),
    }
}

fn locate() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("GUILOCKER_FIXTURES") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("images.conf").is_file(),
            "GUILOCKER_FIXTURES={} has no images.conf",
            dir.display()
        );
        return Ok(dir);
    }
    let tarball = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/bitlocker/bitlk-images.tar.xz");
    if !tarball.is_file() {
        return Err(format!("fixture tarball {} is missing", tarball.display()));
    }
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bitlk-fixtures");
    let dir = out.join("bitlk-images");
    if !dir.join("images.conf").is_file() {
        fs::create_dir_all(&out).unwrap();
        // -S keeps the 100 MB images sparse.
        let status = Command::new("tar")
            .arg("xJSf")
            .arg(&tarball)
            .arg("-C")
            .arg(&out)
            .status()
            .map_err(|e| format!("cannot run tar: {e}"))?;
        assert!(status.success(), "tar failed on {}", tarball.display());
    }
    Ok(dir)
}

fn images(dir: &Path) -> Vec<(String, Section)> {
    let text = fs::read_to_string(dir.join("images.conf")).unwrap();
    let mut out: Vec<(String, Section)> = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            out.push((name.to_string(), Section::new()));
        } else if let (Some((k, v)), Some((_, section))) = (line.split_once('='), out.last_mut()) {
            section.insert(k.to_string(), v.to_string());
        }
    }
    assert!(out.len() >= 10, "images.conf lists {} images", out.len());
    out
}

fn field<'a>(s: &'a Section, key: &str) -> Option<&'a str> {
    s.get(key).map(String::as_str).filter(|v| !v.is_empty())
}

fn load(dir: &Path, name: &str) -> Metadata {
    let file = File::open(dir.join(format!("{name}.img"))).unwrap();
    read_metadata(file).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn cipher_name(c: Cipher) -> &'static str {
    match c {
        Cipher::AesCbc128 | Cipher::AesCbc256 => "aes-cbc-eboiv",
        Cipher::AesCbc128Elephant | Cipher::AesCbc256Elephant => "aes-cbc-elephant",
        Cipher::AesXts128 | Cipher::AesXts256 => "aes-xts-plain64",
        Cipher::Unknown(_) => "unknown",
    }
}

const PROTECTOR_FIELDS: [(&str, ProtectorKind); 5] = [
    ("PW_VMK_GUID", ProtectorKind::Password),
    ("RP_VMK_GUID", ProtectorKind::RecoveryPassword),
    ("SK_VMK_GUID", ProtectorKind::StartupKey),
    ("SC_VMK_GUID", ProtectorKind::SmartCard),
    ("CLEARKEY_VMK_GUID", ProtectorKind::ClearKey),
];

#[test]
fn metadata_matches_images_conf() {
    let Some(dir) = fixtures() else { return };
    for (name, conf) in images(&dir) {
        let meta = load(&dir, &name);
        let info = &meta.info;
        assert_eq!(
            Some(info.guid.to_string().as_str()),
            field(&conf, "GUID"),
            "{name}"
        );
        assert_eq!(
            Some(cipher_name(info.cipher)),
            field(&conf, "CIPHER"),
            "{name}"
        );
        for (key, kind) in PROTECTOR_FIELDS {
            if let Some(guid) = field(&conf, key) {
                assert!(
                    info.protectors
                        .iter()
                        .any(|p| p.kind == kind && p.guid.to_string() == guid),
                    "{name}: no {kind} protector {guid} in {:?}",
                    info.protectors
                );
            }
        }
        assert_eq!(info.to_go, name.contains("togo"), "{name}");
        let partial = name.contains("partially");
        assert_eq!(info.state == EncryptionState::Complete, !partial, "{name}");
        let json = serde_json::to_string(&meta.info).unwrap();
        println!("{name}: {json}");
    }
}

/// The secrets images.conf gives for one image, with a label for the report.
fn secrets(dir: &Path, conf: &Section) -> Vec<(&'static str, Secret)> {
    let mut out = Vec::new();
    if let Some(pw) = field(conf, "PW") {
        out.push(("password", Secret::Password(pw.into())));
    }
    if let Some(rp) = field(conf, "RP") {
        out.push(("recovery key", Secret::Recovery(rp.into())));
    }
    if let Some(sk) = field(conf, "SK_VMK_GUID") {
        let bek = dir.join(format!("{}.BEK", sk.to_uppercase()));
        out.push(("startup key", Secret::Bek(fs::read(bek).unwrap())));
    }
    if field(conf, "CLEARKEY_VMK_GUID").is_some() {
        out.push(("clear key", Secret::Clear));
    }
    out
}

enum Secret {
    Password(SecretString),
    Recovery(SecretString),
    Bek(Vec<u8>),
    Clear,
}

impl Secret {
    fn key(&self) -> Key<'_> {
        match self {
            Self::Password(p) => Key::Password(p),
            Self::Recovery(r) => Key::RecoveryPassword(r),
            Self::Bek(b) => Key::StartupKey(b),
            Self::Clear => Key::ClearKey,
        }
    }
}

fn dislocker_ready() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return skip::<()>("not root (losetup and FUSE mounts need it)").is_some();
    }
    for tool in ["dislocker", "losetup", "umount"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return skip::<()>(&format!("{tool} is not installed")).is_some();
        }
    }
    true
}

#[test]
fn every_protector_unlocks_and_dislocker_agrees() {
    let Some(dir) = fixtures() else { return };
    if !dislocker_ready() {
        return;
    }
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for (name, conf) in images(&dir) {
        let image = dir.join(format!("{name}.img"));
        let meta = load(&dir, &name);
        let partial = meta.info.state != EncryptionState::Complete;
        for (label, secret) in secrets(&dir, &conf) {
            let line = if partial {
                // dislocker cannot read such volumes: report what we say about them.
                let refused = unlock(&meta, secret.key()).unwrap_err();
                let fvek = derive_fvek(&meta, secret.key())
                    .unwrap_or_else(|e| panic!("{name} / {label}: {e}"));
                // No hash to compare with: report what dislocker makes of the derived key.
                let view = decrypted_sha256(&image, &fvek.key_file());
                format!("unlock: {refused}; derive_fvek: ok; dislocker -k: {view:?}")
            } else {
                match unlock(&meta, secret.key()) {
                    Err(e) => {
                        failures.push(format!("{name} / {label}: {e}"));
                        format!("ERROR {e}")
                    }
                    Ok(fvek) => {
                        let expected = field(&conf, "SHA256SUM").unwrap();
                        match decrypted_sha256(&image, &fvek.key_file()) {
                            Ok(sum) if sum == expected => "dislocker -k: SHA-256 matches".into(),
                            Ok(sum) => {
                                failures.push(format!("{name} / {label}: sha256 {sum}"));
                                format!("MISMATCH {sum}")
                            }
                            Err(e) => {
                                failures.push(format!("{name} / {label}: {e}"));
                                format!("ERROR {e}")
                            }
                        }
                    }
                }
            };
            report.push(format!("{name:42} {label:13} {line}"));
        }
        if field(&conf, "PW").is_some() {
            let wrong = SecretString::from("anaconda?");
            let e = derive_fvek(&meta, Key::Password(&wrong)).unwrap_err();
            assert!(matches!(e, BitlockerError::WrongPassword), "{name}: {e}");
        } else if field(&conf, "SC_VMK_GUID").is_some() {
            let e = unlock(&meta, Key::Password(&SecretString::from("x"))).unwrap_err();
            report.push(format!("{name:42} {:13} {e}", "password"));
            assert_eq!(
                e.to_string(),
                "this drive has no password protector; use the recovery key"
            );
        }
    }
    println!("{}", report.join("\n"));
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
}

/// Attaches `image` read-only, mounts it with `dislocker -k`, hashes `dislocker-file`.
fn decrypted_sha256(image: &Path, key_file: &[u8]) -> Result<String, String> {
    let work = tempdir(image);
    // Dropped last, after the unmount: removes only what this function created.
    let _work = Cleanup(work.clone());
    let key_path = Path::new("/dev/shm").join(format!(
        "guilocker-test-fvek-{}-{}",
        std::process::id(),
        work.file_name().unwrap().to_string_lossy()
    ));
    let key = Removed(key_path.clone());
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key.0)
        .and_then(|mut f| f.write_all(key_file))
        .map_err(|e| format!("cannot write {}: {e}", key.0.display()))?;
    let loop_dev = LoopDevice::attach(image)?;
    let mount = work.join("mnt");
    fs::create_dir_all(&mount).unwrap();
    let log = work.join("dislocker.log");
    let log_file = File::create(&log).unwrap();
    // Never -v: dislocker's debug log prints secrets.
    let status = Command::new("dislocker")
        .arg("-r")
        .arg("-V")
        .arg(&loop_dev.0)
        .arg("-k")
        .arg(&key.0)
        .arg("--")
        .arg(&mount)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .status()
        .map_err(|e| format!("cannot run dislocker: {e}"))?;
    drop(key);
    let _unmount = Unmount(mount.clone());
    // The FUSE parent exits once the mount exists (or failed): its exit is the signal.
    if !status.success() || !mounted(&mount) {
        let text = fs::read_to_string(&log).unwrap_or_default();
        return Err(format!("dislocker failed ({status}): {}", text.trim()));
    }
    sha256_file(&mount.join("dislocker-file"))
}

fn mounted(dir: &Path) -> bool {
    let dir = fs::canonicalize(dir).unwrap();
    let table = fs::read_to_string("/proc/self/mountinfo").unwrap();
    table
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(dir.to_str().unwrap()))
}

fn sha256_file(path: &Path) -> Result<String, String> {
    let mut file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn tempdir(image: &Path) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "dislocker-{}-{n}-{}",
        std::process::id(),
        image.file_stem().unwrap().to_string_lossy()
    ));
    fs::create_dir_all(&dir).unwrap();
    dir
}

struct Removed(PathBuf);
impl Drop for Removed {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

struct LoopDevice(String);
impl LoopDevice {
    fn attach(image: &Path) -> Result<Self, String> {
        let out = Command::new("losetup")
            .args(["-r", "-f", "--show"])
            .arg(image)
            .output()
            .map_err(|e| format!("cannot run losetup: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "losetup failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Self(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ))
    }
}
impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

struct Unmount(PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        if mounted(&self.0) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
}

/// Removes the per-run directory, never recursively (a mount could still be inside).
struct Cleanup(PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.0.join("dislocker.log"));
        let _ = fs::remove_dir(self.0.join("mnt"));
        let _ = fs::remove_dir(&self.0);
    }
}

/// Our engine's read path (layout + sector cipher, no FUSE, no root) against cryptsetup's
/// decryption: the whole view of every complete image must hash to images.conf's value.
#[test]
fn native_view_matches_images_conf() {
    use guilocker::engine::Volume;
    let Some(dir) = fixtures() else { return };
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for (name, conf) in images(&dir) {
        let meta = load(&dir, &name);
        if meta.info.state != EncryptionState::Complete {
            continue;
        }
        let Some((label, secret)) = secrets(&dir, &conf).into_iter().next() else {
            continue;
        };
        let fvek = unlock(&meta, secret.key()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let image = dir.join(format!("{name}.img"));
        let volume = Volume::open(&image, &fvek, true).unwrap_or_else(|e| panic!("{name}: {e}"));
        let started = std::time::Instant::now();
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut offset = 0;
        loop {
            let n = volume.read_at(offset, &mut buf).unwrap();
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            offset += n as u64;
        }
        let sum = hex(&hash.finalize());
        let ok = Some(sum.as_str()) == field(&conf, "SHA256SUM");
        if !ok {
            failures.push(format!("{name}: sha256 {sum}"));
        }
        report.push(format!(
            "{name:42} {label:13} {} ({} MB in {:.0} ms, {})",
            if ok {
                "native view: SHA-256 matches"
            } else {
                "MISMATCH"
            },
            offset / 1_000_000,
            started.elapsed().as_secs_f64() * 1000.0,
            cipher_name(meta.info.cipher),
        ));
    }
    println!("{}", report.join("\n"));
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The key we hand to dm-crypt (`cryptsetup open --volume-key-file`) is, for every cipher,
/// the one cryptsetup itself derives: `cryptsetup bitlkDump --dump-volume-key` on each image
/// that has a password or a startup key (cryptsetup cannot open the others by itself). Needs
/// no device-mapper, so it runs on the host.
#[test]
fn dm_crypt_key_matches_cryptsetup() {
    let Some(dir) = fixtures() else { return };
    if Command::new("cryptsetup")
        .arg("--version")
        .output()
        .is_err()
    {
        skip::<()>("cryptsetup is not installed");
        return;
    }
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dm-keys");
    fs::create_dir_all(&work).unwrap();
    let mut report = Vec::new();
    for (name, conf) in images(&dir) {
        let meta = load(&dir, &name);
        if meta.info.state != EncryptionState::Complete {
            continue;
        }
        let image = dir.join(format!("{name}.img"));
        let dumped = work.join(format!("{name}.key"));
        let _ = fs::remove_file(&dumped);
        let mut cmd = Command::new("cryptsetup");
        cmd.args(["bitlkDump", "--dump-volume-key", "--volume-key-file"])
            .arg(&dumped);
        let (secret, stdin) = if let Some(pw) = field(&conf, "PW") {
            (Secret::Password(pw.into()), pw.as_bytes().to_vec())
        } else if let Some(sk) = field(&conf, "SK_VMK_GUID") {
            let bek = dir.join(format!("{}.BEK", sk.to_uppercase()));
            cmd.arg("--key-file").arg(&bek);
            (Secret::Bek(fs::read(&bek).unwrap()), Vec::new())
        } else {
            continue;
        };
        let mut child = cmd
            .arg(&image)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{name}: cryptsetup bitlkDump: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let theirs = fs::read(&dumped).unwrap();
        fs::remove_file(&dumped).unwrap();
        let fvek = unlock(&meta, secret.key()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let ours = fvek.dm_crypt_key().expect("a known cipher");
        assert!(
            *ours == theirs,
            "{name}: our dm-crypt key ({} bytes) differs from cryptsetup's ({} bytes)",
            ours.len(),
            theirs.len()
        );
        report.push(format!(
            "{name:42} {:16} {} bytes: same as cryptsetup's",
            cipher_name(meta.info.cipher),
            ours.len()
        ));
    }
    println!("{}", report.join("\n"));
    assert!(report.len() >= 6, "too few images compared: {report:?}");
}
