//! Benchmark: time from plugging a stick (attaching a loop device) to the event at a
//! subscribed client, over many plugs; and the daemon's CPU time and memory while idle.
//!
//! Needs root and the fixture images (../shared). Prints figures; asserts nothing.
//! `sudo cargo bench --bench plug` (PLUGS and IDLE_SECONDS override the defaults).

use guilocker::client::Client;
use guilocker::protocol::EventKind;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn proc_field(pid: u32, file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(") ").unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("plug benchmark: needs root (loop devices); skipped");
        return;
    }
    let shared = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/bitlocker/bitlk-images.tar.xz");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bench-plug-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let status = Command::new("tar")
        .arg("xJSf")
        .arg(&shared)
        .arg("-C")
        .arg(&dir)
        .status();
    if !status.is_ok_and(|s| s.success()) {
        eprintln!(
            "plug benchmark: cannot unpack {}; skipped",
            shared.display()
        );
        return;
    }
    let image = dir.join("bitlk-images/bitlk-aes-xts-128.img");
    let config = dir.join("config.toml");
    std::fs::write(&config, "include_loop_devices = true\n").unwrap();
    let socket = dir.join("sock");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_guilocker"))
        .args(["daemon", "--foreground", "--config"])
        .arg(&config)
        .arg("--socket")
        .arg(&socket)
        .arg("--pidfile")
        .arg(dir.join("pid"))
        .arg("--runtime-dir")
        .arg(dir.join("run"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(daemon.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().contains("listening on") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let pid = daemon.id();

    let plugs = env_or("PLUGS", 60);
    let mut events = Client::connect(&socket).unwrap().subscribe().unwrap();
    events
        .stream()
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut latencies = Vec::new();
    for _ in 0..plugs {
        let t0 = Instant::now();
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image)
            .output()
            .unwrap();
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        loop {
            let (kind, info) = events.next().unwrap().unwrap();
            if kind == EventKind::Added && info.device == dev {
                latencies.push(t0.elapsed().as_secs_f64() * 1000.0);
                break;
            }
        }
        Command::new("losetup").args(["-d", &dev]).status().unwrap();
        loop {
            let (kind, info) = events.next().unwrap().unwrap();
            if kind == EventKind::Removed && info.device == dev {
                break;
            }
        }
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    println!(
        "plug → event at a subscribed client, {} plugs (losetup included):",
        latencies.len()
    );
    println!(
        "  median {:.2} ms   p99 {:.2} ms   min {:.2} ms   max {:.2} ms",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[0],
        latencies[latencies.len() - 1]
    );

    let idle = env_or("IDLE_SECONDS", 30);
    let ticks_per_s = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap_or(100) as f64;
    let before = cpu_ticks(pid);
    let t = Instant::now();
    // The measured interval itself, not a wait for some condition.
    std::thread::sleep(Duration::from_secs(idle));
    let cpu_ms = (cpu_ticks(pid) - before) as f64 / ticks_per_s * 1000.0;
    let rss = proc_field(pid, "status", "VmRSS:").unwrap_or(0);
    println!(
        "daemon idle for {:.0} s: CPU {:.0} ms ({:.3} % of one core), RSS {} kB",
        t.elapsed().as_secs_f64(),
        cpu_ms,
        cpu_ms / t.elapsed().as_secs_f64() / 10.0,
        rss
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::SIGTERM,
    );
    let _ = daemon.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
