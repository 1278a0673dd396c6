//! The kernel path's end-to-end group, on Debian's real kernel in a VM.
//!
//! This machine's kernel has no device-mapper; Debian's does. One test here boots
//! `/boot/vmlinuz-*` (package linux-image-amd64) once under QEMU with virtme-ng, over this
//! machine's root filesystem, and runs the tests left to the VM (`#[ignore]`d with
//! [`common::IN_THE_VM`]) inside it: every fixture and protector through dm-crypt, and the
//! stick tests on dm-crypt. The sticks are made here first, so the VM only uses them.
//!
//! Prerequisites (root, vng, qemu-system-x86_64, a Debian kernel in /boot): missing ones
//! skip, except under CI=true, where they fail. `tests/run.sh` installs them.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The whole group in one boot: TCG boots in ~75 s, then every test inside.
const VM_TIMEOUT: Duration = Duration::from_secs(25 * 60);

/// The test binaries (cargo's names) and the filter of what each runs in the VM.
const GROUPS: [(&str, &str); 2] = [
    ("e2e_fixtures", "every_fixture_and_protector_on_dm_crypt"),
    ("e2e_sticks", "dm_crypt::"),
];

/// The sticks the VM's tests use (tests/e2e_sticks.rs): source, filesystem, label, table.
const VM_STICKS: [(&str, &str, &str, &str); 5] = [
    ("bitlk-aes-xts-128", "ntfs", "My Stick", "mbr"),
    ("bitlk-aes-xts-256", "exfat", "EXSTICK", "gpt"),
    ("bitlk-togo-aes-xts-128", "vfat", "TOGO", "none"),
    ("bitlk-aes-cbc-128", "ntfs", "YANKED", "mbr"),
    ("bitlk-aes-xts-128", "ntfs", "TERM", "none"),
];

/// Debian's kernel image in /boot, the newest if there are several.
fn debian_kernel() -> Option<PathBuf> {
    let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort();
    kernels.pop()
}

/// The test binary cargo builds for `tests/NAME.rs`, built now if it is stale (cargo runs
/// this test with `$CARGO` set).
fn test_binary(name: &str) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["test", "--no-run", "--message-format=json", "--test", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo test --no-run");
    assert!(
        out.status.success(),
        "cargo could not build tests/{name}.rs"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"]["name"] == name)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo names no executable for tests/{name}.rs"))
}

fn vng() -> Option<PathBuf> {
    which("vng").or_else(|| {
        // pip installs it for root under pyenv or ~/.local.
        let out = Command::new("sh")
            .args(["-c", "command -v vng"])
            .output()
            .ok()?;
        let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (!path.is_empty()).then(|| PathBuf::from(path))
    })
}

/// The script the VM runs: each group's binary with its filter, `--ignored`, one test at a
/// time; it exits with the first failure's code. Scratch space is the VM's tmpfs: target/
/// comes over 9p, which cannot hold a socket.
fn script(target: &Path) -> String {
    let mut s = String::from(
        "set -u\nstatus=0\nmodprobe dm_crypt 2>/dev/null; modprobe loop 2>/dev/null\n",
    );
    for (binary, filter) in GROUPS {
        let bin = test_binary(binary);
        s.push_str(&format!(
            "echo '== VM: {binary} {filter}'\n\
             {KERNEL_VM_ENV}=1 CI=\"${{CI:-}}\" GUILOCKER_SCRATCH=/run/guilocker-tests GUILOCKER_SHARED='{shared}' '{bin}' '{filter}' --ignored --test-threads=1 --nocapture || status=$?\n",
            shared = shared_dir().display(),
            bin = bin.display(),
        ));
    }
    s.push_str(&format!(
        "echo \"== VM: done, status $status\"\necho $status > '{}'\nexit $status\n",
        target.join("kernel-vm.status").display()
    ));
    s
}

#[test]
fn kernel_path_in_a_vm() {
    if in_kernel_vm() {
        return;
    }
    let mut missing = Vec::new();
    let kernel = debian_kernel();
    if kernel.is_none() {
        missing.push("a Debian kernel in /boot (linux-image-amd64)".to_owned());
    }
    let vng = vng();
    if vng.is_none() {
        missing.push("vng (pip install virtme-ng)".to_owned());
    }
    if which("qemu-system-x86_64").is_none() {
        missing.push("qemu-system-x86_64 (qemu-system-x86)".to_owned());
    }
    if !missing.is_empty() {
        let why = format!("the kernel-path VM needs {}", missing.join(", "));
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{why} (CI=true: not skipping)"
        );
        eprintln!("SKIPPED: {why}");
        return;
    }
    if !prerequisites(&[
        "losetup",
        "partx",
        "sfdisk",
        "runuser",
        "mkntfs",
        "mkfs.exfat",
    ]) {
        return;
    }
    // Everything the VM needs from the fixtures is made here, at full speed: the images
    // unpacked, and the sticks (make-bitlocker-stick runs dislocker and mkfs).
    let _ = images();
    let dir = scratch("kernel-vm-sticks");
    for (source, fs, label, table) in VM_STICKS {
        make_stick(&dir, source, fs, label, table);
    }
    let _ = std::fs::remove_dir_all(&dir);

    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .to_owned();
    let status_file = target.join("kernel-vm.status");
    let _ = std::fs::remove_file(&status_file);
    let script_path = scratch("kernel-vm").join("run-in-vm.sh");
    std::fs::write(&script_path, script(&target)).unwrap();
    let log_path = target.join("kernel-vm.log");

    let started = Instant::now();
    let mut child = Command::new(vng.unwrap())
        .arg("--disable-kvm")
        .arg("--run")
        .arg(kernel.as_ref().unwrap())
        .args(["--memory", "2G", "--cpus", "2"])
        .arg(format!("--rwdir={}", target.display()))
        .arg("--exec")
        .arg(format!("bash {}", script_path.display()))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vng");
    let stderr = child.stderr.take().unwrap();
    let err_thread = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut text);
        text
    });
    let mut out = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        println!("  vm| {line}");
        out.push(line);
    }
    let status = wait_child(&mut child, VM_TIMEOUT);
    let errors = err_thread.join().unwrap();
    let elapsed = started.elapsed();
    std::fs::write(&log_path, out.join("\n")).unwrap();
    println!(
        "kernel-path VM group: {:.0} s in all (boot included), {status}",
        elapsed.as_secs_f64()
    );
    let inner = std::fs::read_to_string(&status_file).unwrap_or_default();
    assert_eq!(
        inner.trim(),
        "0",
        "the VM's tests failed or did not finish (vng {status}); log in {}\n{errors}",
        log_path.display()
    );
    // Every group ran some tests, and none failed.
    let results: Vec<&String> = out
        .iter()
        .filter(|l| l.starts_with("test result: "))
        .collect();
    assert_eq!(results.len(), GROUPS.len(), "{results:?}");
    for r in results {
        assert!(r.contains(" 0 failed") && !r.contains(" 0 passed"), "{r}");
    }
}
