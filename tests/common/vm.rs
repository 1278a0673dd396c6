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

/// Debian 12's own kernel series: 6.1 (`linux-image-amd64`, no ntfs3) and 6.12
/// (`linux-image-6.12-amd64`, ntfs3 as a module, as the kernels of Ubuntu, Fedora and Arch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Debian6_1,
    Debian6_12,
}

impl Kernel {
    /// The prefix of its `vmlinuz-` version.
    fn series(self) -> &'static str {
        match self {
            Self::Debian6_1 => "6.1.",
            Self::Debian6_12 => "6.12.",
        }
    }

    /// Its series as people name it (`6.1`, `6.12`).
    pub fn version(self) -> &'static str {
        self.series().trim_end_matches('.')
    }

    /// The Debian package that brings it.
    pub fn package(self) -> &'static str {
        match self {
            Self::Debian6_1 => "linux-image-amd64",
            Self::Debian6_12 => "linux-image-6.12-amd64",
        }
    }
}

/// Debian's kernel image of `kernel`'s series in /boot, the newest if there are several.
pub fn debian_kernel(kernel: Kernel) -> Option<PathBuf> {
    let prefix = format!("vmlinuz-{}", kernel.series());
    let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with("-amd64"))
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

/// What is missing to boot the VM on `kernel`, in words; empty when nothing is.
pub fn missing(kernel: Kernel) -> Vec<String> {
    let mut missing = Vec::new();
    if debian_kernel(kernel).is_none() {
        missing.push(format!(
            "a Debian {} kernel in /boot ({})",
            kernel.series().trim_end_matches('.'),
            kernel.package()
        ));
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

/// This machine's root filesystem as a VM with systemd as PID 1 sees it: an overlay of `/`
/// (writes go to a tmpfs) without `/.dockerenv`, which would make the guest's systemd take
/// itself for a container and never start the console vng runs the script on, nor Docker's
/// `/usr/sbin/policy-rc.d`. Unmounted on drop; the host's `/` is never written.
pub struct SystemdRoot {
    base: PathBuf,
    pub root: PathBuf,
}

impl SystemdRoot {
    pub fn mount(base: &Path) -> Result<Self, String> {
        let layers = base.join("layers");
        let root = base.join("root");
        for dir in [&layers, &root] {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let this = Self {
            base: base.to_owned(),
            root: root.clone(),
        };
        let run = |cmd: &mut Command| -> Result<(), String> {
            let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
            out.status
                .success()
                .then_some(())
                .ok_or_else(|| format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
        };
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", "mode=755", "guilocker-vm-upper"])
            .arg(&layers))?;
        for dir in ["upper", "work"] {
            std::fs::create_dir_all(layers.join(dir)).map_err(|e| e.to_string())?;
        }
        run(Command::new("mount")
            .args(["-t", "overlay", "guilocker-vm-root", "-o"])
            .arg(format!(
                "lowerdir=/,upperdir={},workdir={}",
                layers.join("upper").display(),
                layers.join("work").display()
            ))
            .arg(&root))?;
        // Docker's policy-rc.d (exit 101) would also keep a package's service from starting
        // under the guest's real systemd. A guilocker installed on this machine
        // (packaging/install.sh) would start in the guest too, beside the daemons the tests
        // start and the package they install.
        for artifact in [
            ".dockerenv",
            "usr/sbin/policy-rc.d",
            "etc/systemd/system/guilocker.service",
            "etc/systemd/system/multi-user.target.wants/guilocker.service",
            "etc/xdg/autostart/guilocker-agent.desktop",
        ] {
            match std::fs::remove_file(root.join(artifact)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("hiding /{artifact}: {e}")),
            }
        }
        Ok(this)
    }
}

impl Drop for SystemdRoot {
    fn drop(&mut self) {
        for dir in [self.root.clone(), self.base.join("layers")] {
            let _ = Command::new("umount").arg(&dir).output();
        }
    }
}

/// Whether the VM can boot here; if not, says why and the test skips, except under CI=true,
/// where it fails.
pub fn can_boot(what: &str, kernel: Kernel) -> bool {
    let missing = missing(kernel);
    if missing.is_empty() {
        return true;
    }
    let why = format!("{what} needs {}", missing.join(", "));
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{why} (CI=true: not skipping)"
    );
    eprintln!("SKIPPED: {why}");
    false
}

/// Runs one group of tests in one boot: `script(status_file)` is the shell the VM runs,
/// which writes its exit status to `status_file`. Its output goes to `target/NAME.log`.
/// Passes when the status is 0 and each of the `binaries` test binaries passed some tests
/// and failed none.
pub fn run_group(
    name: &str,
    kernel: Kernel,
    script: impl FnOnce(&Path) -> String,
    binaries: usize,
    timeout: Duration,
    systemd: Option<&SystemdRoot>,
) {
    let boot = Boot {
        systemd,
        ..Boot::new(kernel)
    };
    run_group_on(name, &boot, script, binaries, timeout);
}

/// How a group's VM boots: the kernel, systemd as PID 1 over an overlay root, extra QEMU
/// options (a USB controller, a QMP socket), and disks present at boot.
pub struct Boot<'a> {
    pub kernel: Kernel,
    pub systemd: Option<&'a SystemdRoot>,
    /// Handed to QEMU as is (vng's `--qemu-opts` takes one string, which its shell splits:
    /// no spaces or quotes inside an option).
    pub qemu_opts: Vec<String>,
    /// Image files attached at boot as virtio-blk disks (vng `--disk`): `/dev/vda`, `/dev/vdb`…
    /// in this order, as a disk inside the machine.
    pub disks: Vec<PathBuf>,
}

impl Boot<'_> {
    pub fn new(kernel: Kernel) -> Self {
        Self {
            kernel,
            systemd: None,
            qemu_opts: Vec::new(),
            disks: Vec::new(),
        }
    }
}

/// [`run_group`], booted as `boot` says.
pub fn run_group_on(
    name: &str,
    boot: &Boot,
    script: impl FnOnce(&Path) -> String,
    binaries: usize,
    timeout: Duration,
) {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .to_owned();
    let status_file = target.join(format!("{name}.status"));
    let _ = std::fs::remove_file(&status_file);
    let script_path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-run.sh"));
    std::fs::write(&script_path, script(&status_file)).unwrap();
    let log_path = target.join(format!("{name}.log"));

    let started = std::time::Instant::now();
    let (out, errors) =
        run_on(boot, &script_path, &target, timeout).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&log_path, out.join("\n")).unwrap();
    println!(
        "{name} group: {:.0} s in all, boot included",
        started.elapsed().as_secs_f64()
    );
    let inner = std::fs::read_to_string(&status_file).unwrap_or_default();
    assert_eq!(
        inner.trim(),
        "0",
        "the VM's tests failed or did not finish; log in {}\n{errors}",
        log_path.display()
    );
    let results: Vec<&String> = out
        .iter()
        .filter(|l| l.starts_with("test result: "))
        .collect();
    assert_eq!(results.len(), binaries, "{results:?}");
    for r in results {
        assert!(r.contains(" 0 failed") && !r.contains(" 0 passed"), "{r}");
    }
}

/// Boots the VM once with `rw` writable, runs `script` (a shell file on this machine) in it,
/// relays each line it prints (prefixed `vm| `) and returns them, with vng's stderr, once it
/// has powered off. Fails after `timeout`.
pub fn run(
    kernel: Kernel,
    script: &Path,
    rw: &Path,
    timeout: Duration,
) -> Result<(Vec<String>, String), String> {
    run_in(kernel, script, rw, timeout, None)
}

/// [`run`], with systemd as the VM's init over `systemd` (logind, the system bus, sessions)
/// when given.
pub fn run_in(
    kernel: Kernel,
    script: &Path,
    rw: &Path,
    timeout: Duration,
    systemd: Option<&SystemdRoot>,
) -> Result<(Vec<String>, String), String> {
    let boot = Boot {
        systemd,
        ..Boot::new(kernel)
    };
    run_on(&boot, script, rw, timeout)
}

/// [`run`], booted as `boot` says.
pub fn run_on(
    boot: &Boot,
    script: &Path,
    rw: &Path,
    timeout: Duration,
) -> Result<(Vec<String>, String), String> {
    let (kernel, systemd) = (boot.kernel, boot.systemd);
    let kernel = debian_kernel(kernel).ok_or(format!(
        "no Debian {} kernel in /boot ({})",
        kernel.series().trim_end_matches('.'),
        kernel.package()
    ))?;
    let vng = vng().ok_or("vng is not installed")?;
    let mut vng = Command::new(vng);
    vng.arg("--disable-kvm")
        .arg("--run")
        .arg(&kernel)
        .args(["--memory", "2G", "--cpus", "2"]);
    match systemd {
        // With another root, a writable directory is named as guest=host.
        Some(systemd) => vng
            .arg("--systemd")
            .arg("--root")
            .arg(&systemd.root)
            .arg(format!("--rwdir={0}={0}", rw.display())),
        None => vng.arg(format!("--rwdir={}", rw.display())),
    };
    // vng puts virtme-run's command line together for a shell: a path with a space would split.
    for disk in &boot.disks {
        let path = disk.to_str().filter(|p| !p.contains(char::is_whitespace));
        vng.arg("--disk").arg(path.ok_or(format!(
            "{}: vng cannot pass a path with spaces as a disk",
            disk.display()
        ))?);
    }
    vng.arg("--exec").arg(format!("bash {}", script.display()));
    if !boot.qemu_opts.is_empty() {
        vng.arg(format!("--qemu-opts={}", boot.qemu_opts.join(" ")));
    }
    let mut child = vng
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

/// The test binary cargo builds for `tests/NAME.rs`, built now if it is stale (cargo runs
/// this test with `$CARGO` set).
pub fn test_binary(name: &str) -> PathBuf {
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
