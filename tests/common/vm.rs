//! Booting Debian's kernel under QEMU (virtme-ng) over this machine's root filesystem, for
//! the kernel-path tests (tests/kernel_vm.rs) and the kernel-path benchmark rows
//! (benches/throughput.rs, `-- --kernel-vm`). Software emulation: /dev/kvm on these machines
//! cannot run a stock kernel.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Scratch space inside the VM: its /run is a tmpfs (target/ comes over 9p, which cannot
/// hold a socket).
pub const VM_SCRATCH: &str = "/run/guilocker-vm";

/// Debian's kernel image in /boot (linux-image-amd64), the newest if there are several.
pub fn debian_kernel() -> Option<PathBuf> {
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

/// virtme-ng's `vng` (pip puts it under pyenv or ~/.local, not always on root's PATH).
pub fn vng() -> Option<PathBuf> {
    let out = Command::new("sh")
        .args(["-c", "command -v vng"])
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (!path.is_empty()).then(|| PathBuf::from(path))
}

/// What is missing to boot the VM, in words; empty when nothing is.
pub fn missing() -> Vec<String> {
    let mut missing = Vec::new();
    if debian_kernel().is_none() {
        missing.push("a Debian kernel in /boot (linux-image-amd64)".to_owned());
    }
    if vng().is_none() {
        missing.push("vng (pip install virtme-ng)".to_owned());
    }
    let qemu = Command::new("sh")
        .args(["-c", "command -v qemu-system-x86_64"])
        .output();
    if !qemu.is_ok_and(|o| o.status.success()) {
        missing.push("qemu-system-x86_64 (qemu-system-x86)".to_owned());
    }
    missing
}

/// Boots the VM once with `rw` writable, runs `script` (a shell file on this machine) in it,
/// relays each line it prints (prefixed `vm| `) and returns them, with vng's stderr, once it
/// has powered off. Fails after `timeout`.
pub fn run(script: &Path, rw: &Path, timeout: Duration) -> Result<(Vec<String>, String), String> {
    let kernel = debian_kernel().ok_or("no Debian kernel in /boot")?;
    let vng = vng().ok_or("vng is not installed")?;
    let mut child = Command::new(vng)
        .arg("--disable-kvm")
        .arg("--run")
        .arg(&kernel)
        .args(["--memory", "2G", "--cpus", "2"])
        .arg(format!("--rwdir={}", rw.display()))
        .arg("--exec")
        .arg(format!("bash {}", script.display()))
        .current_dir(rw)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start vng: {e}"))?;
    let pid = child.id();
    // The deadline: kill vng (and so QEMU) if the VM does not power off in time.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(timeout).is_err() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::SIGKILL,
            );
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::SIGKILL,
            );
        }
    });
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
    let status = child.wait().map_err(|e| format!("waiting for vng: {e}"))?;
    let _ = done_tx.send(());
    let _ = watchdog.join();
    let errors = err_thread.join().unwrap_or_default();
    if status.code().is_none() {
        return Err(format!(
            "the VM did not finish within {} s ({status}): {errors}",
            timeout.as_secs()
        ));
    }
    Ok((out, errors))
}
