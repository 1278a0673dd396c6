//! Password → FVEK, native vs `dislocker -u`, on bitlk-aes-xts-128 (right and wrong password).
//!
//! Run as root with `cargo bench --bench kdf`; fixtures as for tests/bitlocker_fixtures.rs
//! (`$GUILOCKER_FIXTURES`, else the tarball in ../shared, unpacked under target/).

use guilocker::bitlocker::{read_metadata, unlock, Key};
use guilocker::secret::SecretString;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const IMAGE: &str = "bitlk-aes-xts-128.img";
const RUNS: usize = 5;

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing useful: run anyway.
    let Some(dir) = fixtures() else { return };
    let image = dir.join(IMAGE);
    let right = SecretString::from("anaconda");
    let wrong = SecretString::from("anaconda?");

    let native = |pw: &SecretString| {
        median(|| {
            let t = Instant::now();
            let meta = read_metadata(File::open(&image).unwrap()).unwrap();
            let r = unlock(&meta, Key::Password(pw));
            (t.elapsed(), r.is_ok())
        })
    };
    let (ok_time, ok) = native(&right);
    let (bad_time, bad) = native(&wrong);
    assert!(ok && !bad);
    println!("{IMAGE}, median of {RUNS} runs");
    println!(
        "  native password -> FVEK            {:>8.1} ms",
        ms(ok_time)
    );
    println!(
        "  native wrong password -> error     {:>8.1} ms",
        ms(bad_time)
    );

    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !has("dislocker") || !has("losetup") {
        println!("  (dislocker part skipped: needs root, dislocker and losetup)");
        return;
    }
    let loop_dev = LoopDevice::attach(&image);
    let mnt = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-mnt");
    fs::create_dir_all(&mnt).unwrap();

    let (t, ok) = median(|| {
        let t = Instant::now();
        let meta = read_metadata(File::open(&loop_dev.0).unwrap()).unwrap();
        let fvek = unlock(&meta, Key::Password(&right)).unwrap();
        // The key goes to dislocker in a memfd it inherits, as in the daemon: never a file.
        let fd = nix::sys::memfd::memfd_create(
            c"guilocker-bench-fvek",
            nix::sys::memfd::MFdFlags::empty(),
        )
        .unwrap();
        let mut f = File::from(fd);
        f.write_all(&fvek.key_file()).unwrap();
        let key = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&f));
        let ok = dislocker(&loop_dev.0, &mnt, &["-k", &key], None);
        drop(f);
        let elapsed = t.elapsed();
        unmount(&mnt);
        (elapsed, ok)
    });
    assert!(ok, "dislocker -k failed");
    println!("  native + dislocker -k -> mounted   {:>8.1} ms", ms(t));

    let (t, ok) = median(|| {
        let t = Instant::now();
        let ok = dislocker(&loop_dev.0, &mnt, &["-u"], Some("anaconda\n"));
        let elapsed = t.elapsed();
        unmount(&mnt);
        (elapsed, ok)
    });
    assert!(ok, "dislocker -u failed");
    println!("  dislocker -u -> mounted            {:>8.1} ms", ms(t));

    let (t, ok) = median(|| {
        let t = Instant::now();
        let ok = dislocker(&loop_dev.0, &mnt, &["-u"], Some("anaconda?\n"));
        (t.elapsed(), ok)
    });
    assert!(!ok, "dislocker accepted a wrong password");
    println!("  dislocker -u wrong password -> exit {:>7.1} ms", ms(t));
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut f: impl FnMut() -> (Duration, bool)) -> (Duration, bool) {
    let mut runs: Vec<_> = (0..RUNS).map(|_| f()).collect();
    runs.sort_by_key(|r| r.0);
    runs[RUNS / 2]
}

/// Runs dislocker (never with -v: its debug log prints the password); true when it mounted.
/// The FUSE parent process exits once the mount is in place or has failed.
fn dislocker(dev: &str, mnt: &Path, method: &[&str], stdin: Option<&str>) -> bool {
    let mut child = Command::new("dislocker")
        .args(["-r", "-V", dev])
        .args(method)
        .arg("--")
        .arg(mnt)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot run dislocker");
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let _ = pipe.write_all(text.as_bytes());
    }
    let status = child.wait().unwrap();
    status.success() && mounted(mnt)
}

fn mounted(dir: &Path) -> bool {
    let dir = fs::canonicalize(dir).unwrap();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == dir.to_str())
}

fn unmount(dir: &Path) {
    if mounted(dir) {
        let _ = Command::new("umount").arg(dir).status();
    }
}

fn has(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn fixtures() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("GUILOCKER_FIXTURES") {
        return Some(PathBuf::from(dir));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tarball = root.join("../shared/fixtures/bitlocker/bitlk-images.tar.xz");
    let out = root.join("target/bench-fixtures");
    let dir = out.join("bitlk-images");
    if !dir.join(IMAGE).is_file() {
        if !tarball.is_file() {
            println!("skipped: {} is missing", tarball.display());
            return None;
        }
        fs::create_dir_all(&out).unwrap();
        let ok = Command::new("tar")
            .arg("xJSf")
            .arg(&tarball)
            .arg("-C")
            .arg(&out)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "tar failed");
    }
    Some(dir)
}

struct LoopDevice(String);

impl LoopDevice {
    fn attach(image: &Path) -> Self {
        let out = Command::new("losetup")
            .args(["-r", "-f", "--show"])
            .arg(image)
            .output()
            .unwrap();
        assert!(out.status.success(), "losetup failed");
        Self(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}
