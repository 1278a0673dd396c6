//! Benchmark: sequential file throughput on an unlocked BitLocker stick, stack by stack.
//!
//! Rows: guilocker with its native engine, guilocker with dislocker, the tutorial recipe
//! (`dislocker` + `mount -o loop`) and the same FUSE driver on a plain image; columns NTFS and
//! exFAT. Then the raw decrypted view, native engine vs dislocker. A stack that cannot run is
//! `n/a (reason)`; the others go on.
//!
//! Needs root, dislocker, ntfs-3g, exfat-fuse and the fixtures (../shared). Tables on stdout,
//! progress on stderr; asserts nothing. `sudo cargo bench --bench throughput`.
//!
//! `-- --kernel-vm` boots Debian's kernel in a VM (tests/common/vm.rs) and measures the kernel
//! path there: guilocker on dm-crypt beside the native engine in the same VM. Emulation makes
//! the absolute figures meaningless; the ratios are the result. `-- --kernel-vm --ntfs3` boots
//! Debian's 6.12 instead and measures NTFS only, the kernel's ntfs3 against ntfs-3g
//! (`ntfs_driver`), through dm-crypt and through the native engine.
//!
//! Every wait is on a real condition (a daemon log line, an event on the socket, a process exit,
//! the mount table) with a deadline; whatever was made is put away on drop, even after a failure.

// Shared with the tests, which use more of it.
#[allow(dead_code)]
#[path = "../tests/common/vm.rs"]
mod vm;

use guilocker::bitlocker::{is_bitlocker, read_metadata, Layout};
use guilocker::client::{Client, ClientError, Events};
use guilocker::daemon::mounts::{mounted_at, mounts, MountWatch};
use guilocker::process::one_line;
use guilocker::protocol::{DeviceInfo, Engine, EventKind, FrameError, SOCKET_ENV};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

const MIB: u64 = 1 << 20;
const CHUNK: usize = MIB as usize;
const RUNS: usize = 3;
/// The deadline of every wait.
const WAIT: Duration = Duration::from_secs(120);
/// The fixture every stick is made from, and its section in images.conf.
const SOURCE: &str = "bitlk-aes-xts-128";
const LABEL: &str = "Bench";
/// The file written per run; SMALL when the filesystem inside has no room for it.
const FULL: u64 = 48 * MIB;
const SMALL: u64 = 32 * MIB;
/// Room left beside the file for the filesystem's own bookkeeping.
const SLACK: u64 = MIB;
/// Raw-view writes start here: well past the view's first bytes (served from the boot-sector
/// backup) and never rewriting anything a later stack needs (the image is a scratch copy).
const RAW_START: u64 = 32 * MIB;
const GUILOCKER: &str = env!("CARGO_BIN_EXE_guilocker");
/// Set inside the VM of `--kernel-vm`.
const IN_VM_ENV: &str = "GUILOCKER_BENCH_IN_VM";
/// Set inside the VM of `--kernel-vm --ntfs3`: ntfs3 against ntfs-3g.
const NTFS3_ENV: &str = "GUILOCKER_BENCH_NTFS3";

/// A failure, as the table shows it.
type Res<T> = Result<T, String>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fs {
    Ntfs,
    Exfat,
}

impl Fs {
    const ALL: [Fs; 2] = [Fs::Ntfs, Fs::Exfat];

    /// As make-bitlocker-stick and the daemon spell it.
    fn name(self) -> &'static str {
        ["ntfs", "exfat"][self as usize]
    }

    fn title(self) -> &'static str {
        ["NTFS", "exFAT"][self as usize]
    }

    /// The FUSE driver, as `mount -t` names it.
    fn fuse_type(self) -> &'static str {
        ["ntfs-3g", "exfat-fuse"][self as usize]
    }
}

/// The table row of a daemon with `engine = NAME`.
fn row(engine: Engine) -> &'static str {
    match engine {
        Engine::DmCrypt => "guilocker, dm-crypt",
        Engine::Native => "guilocker, native engine",
        Engine::Dislocker => "guilocker, dislocker",
    }
}

/// Medians over the runs, in MB/s (10^6 bytes per second).
#[derive(Clone, Copy)]
struct Speed {
    write: f64,
    read: f64,
}

type Cell = Res<Speed>;

/// What the stacks run, besides guilocker.
const PROGRAMS: &str = "losetup partx sfdisk mount umount tar python3 dislocker ntfs-3g mkntfs \
                        mount.exfat-fuse mkfs.exfat";

fn main() {
    if std::env::args().any(|a| a == "--kernel-vm") && std::env::var_os(IN_VM_ENV).is_none() {
        return in_kernel_vm();
    }
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("throughput benchmark: needs root (loop devices, mounts, drop_caches); skipped");
        return;
    }
    let mut missing: Vec<&str> = PROGRAMS
        .split_whitespace()
        .filter(|p| which(p).is_none())
        .collect();
    if !Path::new("/dev/fuse").exists() {
        missing.push("/dev/fuse");
    }
    if !missing.is_empty() {
        eprintln!(
            "throughput benchmark: needs {}; skipped",
            missing.join(", ")
        );
        return;
    }
    let setup = || -> Res<_> {
        let fixtures = fixtures()?;
        Ok((password(&fixtures)?, Scratch::new()?, fixtures))
    };
    let (password, scratch, fixtures) = match setup() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("throughput benchmark: {e}; skipped");
            return;
        }
    };
    let source = fixtures.join(format!("{SOURCE}.img"));
    let sticks = Fs::ALL.map(|fs| make_stick(&scratch.0, &source, fs, &password));
    let mut bench = Bench {
        scratch,
        password,
        source,
        sticks,
        sizes: [None, None],
        small: Vec::new(),
        notes: Vec::new(),
        raw_layout: None,
    };

    let in_vm = std::env::var_os(IN_VM_ENV).is_some();
    if in_vm && std::env::var_os(NTFS3_ENV).is_some() {
        let rows = bench.ntfs_drivers();
        return print_ntfs_drivers(&rows, &bench);
    }
    let engines = if in_vm {
        [Engine::DmCrypt, Engine::Native]
    } else {
        [Engine::Native, Engine::Dislocker]
    };
    let mut rows: Vec<(&str, [Cell; 2])> = Vec::new();
    let mut raw: Vec<(Engine, Cell)> = Vec::new();
    for engine in engines {
        let (cells, view) = bench.guilocker(engine);
        rows.push((row(engine), cells));
        raw.push((engine, view));
    }
    if !in_vm {
        rows.push(("tutorial recipe", Fs::ALL.map(|fs| bench.tutorial(fs))));
        rows.push((
            "same FUSE driver, no encryption",
            Fs::ALL.map(|fs| bench.plain(fs)),
        ));
    }
    bench.print(&rows, &raw);
    if in_vm {
        print_ratios(&rows);
    }
}

/// `-- --kernel-vm`: this benchmark again, inside a VM with Debian's kernel.
fn in_kernel_vm() {
    let ntfs3 = std::env::args().any(|a| a == "--ntfs3");
    let kernel = if ntfs3 {
        vm::Kernel::Debian6_12
    } else {
        vm::Kernel::Debian6_1
    };
    let missing = vm::missing(kernel);
    if !missing.is_empty() {
        eprintln!(
            "throughput benchmark in the VM: needs {}; skipped",
            missing.join(", ")
        );
        return;
    }
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .to_owned();
    let me = std::env::current_exe().expect("own path");
    let script = target.join("tmp/bench-throughput-vm.sh");
    let text = format!(
        "modprobe loop\nmodprobe ntfs3 2>/dev/null\n\
         {IN_VM_ENV}=1 {} GUILOCKER_SCRATCH={} GUILOCKER_SHARED='{}' '{}'\n",
        if ntfs3 {
            format!("{NTFS3_ENV}=1")
        } else {
            String::new()
        },
        vm::VM_SCRATCH,
        shared_dir().display(),
        me.display()
    );
    if let Err(e) = mkdir(script.parent().unwrap())
        .and_then(|()| fs::write(&script, text).map_err(|e| format!("{}: {e}", script.display())))
    {
        eprintln!("throughput benchmark in the VM: {e}");
        return;
    }
    if let Err(e) = vm::run(kernel, &script, &target, Duration::from_secs(40 * 60)) {
        eprintln!("throughput benchmark in the VM: {e}");
    }
}

/// The NTFS driver rows of `--ntfs3`: (engine, `ntfs_driver` key) and its cell.
type DriverRow = (Engine, &'static str, Cell);

/// ntfs3 against ntfs-3g, per engine, and their ratios.
fn print_ntfs_drivers(rows: &[DriverRow], bench: &Bench) {
    println!();
    println!(
        "NTFS drivers on Debian's 6.12 in a VM: a new {} MiB file per run written in 1 MiB chunks + fsync + flush, read back cold; median of {RUNS} runs. ntfs3 mounts the dm-crypt mapping directly, or a loop device over the native engine's view; ntfs-3g the same device.",
        bench.sizes[Fs::Ntfs as usize].unwrap_or(FULL) / MIB,
    );
    println!();
    let mut table = vec![vec![
        "stack".to_owned(),
        "driver".to_owned(),
        "NTFS write / read MB/s".to_owned(),
    ]];
    for (engine, driver, cell) in rows {
        table.push(vec![
            row(*engine).to_owned(),
            (if *driver == "auto" { "ntfs3" } else { driver }).to_owned(),
            match cell {
                Ok(s) => format!("{:.1} / {:.1}", s.write, s.read),
                Err(e) => na(e),
            },
        ]);
    }
    for engine in [Engine::DmCrypt, Engine::Native] {
        let cell = |d: &str| {
            rows.iter()
                .find(|(e, driver, _)| *e == engine && *driver == d)
                .and_then(|(_, _, c)| c.as_ref().ok())
        };
        table.push(vec![
            row(engine).to_owned(),
            "ntfs3 / ntfs-3g".to_owned(),
            match (cell("auto"), cell("ntfs-3g")) {
                (Some(k), Some(f)) => {
                    format!("{:.2}× / {:.2}×", k.write / f.write, k.read / f.read)
                }
                _ => "n/a".to_owned(),
            },
        ]);
    }
    print_table(&table);
}

/// dm-crypt's figures over the native engine's, cell by cell (in the VM, where only ratios
/// mean anything).
fn print_ratios(rows: &[(&str, [Cell; 2])]) {
    let [(_, kernel), (_, native)] = rows else {
        return;
    };
    println!();
    println!("dm-crypt / native engine, same VM, same kernel filesystem drivers:");
    println!();
    let mut table = vec![vec![
        "ratio".to_owned(),
        "NTFS write / read".to_owned(),
        "exFAT write / read".to_owned(),
    ]];
    let mut row = vec!["dm-crypt / native".to_owned()];
    for (k, n) in kernel.iter().zip(native) {
        row.push(match (k, n) {
            (Ok(k), Ok(n)) => format!("{:.2}× / {:.2}×", k.write / n.write, k.read / n.read),
            _ => "n/a".to_owned(),
        });
    }
    table.push(row);
    print_table(&table);
}

struct Bench {
    /// Everything the stacks make lives below it.
    scratch: Scratch,
    password: Zeroizing<String>,
    /// The fixture image (BitLocker volume, no partition table).
    source: PathBuf,
    /// The sticks made from it, one per filesystem; each stack works on a copy.
    sticks: [Res<PathBuf>; 2],
    /// File size per filesystem, chosen by the first stack that mounts it.
    sizes: [Option<u64>; 2],
    /// Why a column uses the smaller file.
    small: Vec<String>,
    notes: Vec<String>,
    /// Where the raw-view blocks went.
    raw_layout: Option<String>,
}

/// Prints the title of a stack, runs it, reports its cell.
fn stack(who: &str, f: impl FnOnce(&str) -> Cell) -> Cell {
    eprintln!("== {who}");
    let cell = f(who);
    match &cell {
        Ok(s) => eprintln!(
            "  {who}: median write {:.1} MB/s, read {:.1} MB/s",
            s.write, s.read
        ),
        Err(e) => eprintln!("  {who}: n/a: {e}"),
    }
    cell
}

impl Bench {
    fn path(&self, name: &str) -> PathBuf {
        self.scratch.0.join(name)
    }

    /// `password\n`, for a program's stdin.
    fn password_line(&self) -> Zeroizing<Vec<u8>> {
        let mut line = Zeroizing::new(self.password.as_bytes().to_vec());
        line.push(b'\n');
        line
    }

    /// A fresh copy of the stick for `fs`, removed on drop.
    fn stick_copy(&self, fs: Fs, tag: &str) -> Res<TempFile> {
        let stick = self.sticks[fs as usize].as_ref().map_err(Clone::clone)?;
        copy(stick, self.path(&format!("{tag}-{}.img", fs.name())))
    }

    /// `--ntfs3`: NTFS through each engine with each `ntfs_driver`, a daemon each.
    fn ntfs_drivers(&mut self) -> Vec<DriverRow> {
        let mut rows = Vec::new();
        for engine in [Engine::DmCrypt, Engine::Native] {
            for driver in ["auto", "ntfs-3g"] {
                let tag = format!("{}-{driver}", engine.as_str());
                let started = Daemon::start_with(
                    &self.scratch.0,
                    engine,
                    &tag,
                    &format!("ntfs_driver = \"{driver}\"\n"),
                );
                let daemon = started.as_ref().map_err(Clone::clone);
                let cell = stack(&format!("{} / NTFS / {driver}", row(engine)), |who| {
                    let image = self.stick_copy(Fs::Ntfs, &tag)?;
                    self.through_daemon(daemon?, engine, &image.0, true, |me, info| {
                        let mountpoint = info.mountpoint.as_deref().ok_or_else(|| {
                            format!("{}: no mountpoint after unlock", info.device)
                        })?;
                        eprintln!(
                            "  {who}: mounted at {mountpoint} by {}",
                            info.fs_driver.as_deref().unwrap_or("?")
                        );
                        me.measure(
                            who,
                            Fs::Ntfs,
                            Path::new(mountpoint),
                            Path::new(&info.device),
                        )
                    })
                });
                rows.push((engine, driver, cell));
            }
        }
        rows
    }

    /// Rows 1 and 2 and the raw view: a daemon with `engine = NAME`.
    fn guilocker(&mut self, engine: Engine) -> ([Cell; 2], Cell) {
        let started = Daemon::start(&self.scratch.0, engine);
        let daemon = started.as_ref().map_err(Clone::clone);
        let cells = Fs::ALL.map(|fs| {
            stack(&format!("{} / {}", row(engine), fs.title()), |who| {
                let image = self.stick_copy(fs, &format!("guilocker-{}", engine.as_str()))?;
                self.through_daemon(daemon.clone()?, engine, &image.0, true, |me, info| {
                    let mountpoint = info
                        .mountpoint
                        .as_deref()
                        .ok_or_else(|| format!("{}: no mountpoint after unlock", info.device))?;
                    eprintln!(
                        "  {who}: {} mounted at {mountpoint} ({}, decrypted view {})",
                        info.device,
                        info.fs_type.map_or("?", |f| f.as_str()),
                        info.decrypted.as_deref().unwrap_or("?")
                    );
                    me.measure(who, fs, Path::new(mountpoint), Path::new(&info.device))
                })
            })
        });
        let view = stack(&format!("{} / raw view", row(engine)), |who| {
            self.raw_view(daemon.clone()?, engine, who)
        });
        (cells, view)
    }

    /// Attaches `image` (a partitioned stick, mounted on unlock; else a bare volume, unlocked
    /// with `--no-mount`), waits for the daemon to list it, unlocks it, checks that `engine`
    /// serves it, runs `body` on its status, then locks and detaches it and waits until the
    /// daemon has let it go.
    fn through_daemon(
        &mut self,
        daemon: &Daemon,
        engine: Engine,
        image: &Path,
        stick: bool,
        body: impl FnOnce(&mut Self, &DeviceInfo) -> Cell,
    ) -> Cell {
        let mut events = daemon.events()?;
        let attached = Loop::attach(image, stick)?;
        let dev = attached.volume();
        wait_event(&mut events, &format!("{dev} to appear"), |k, d| {
            k == EventKind::Added && d.device == dev && d.bitlocker
        })?;
        let unlocked = Unlocked {
            daemon,
            dev: dev.clone(),
            done: false,
        };
        let mut args = vec!["unlock", dev.as_str(), "--password-stdin"];
        if !stick {
            args.push("--no-mount");
        }
        daemon.cli(&args, Some(&self.password_line()))?;
        let info = daemon.device(&dev)?;
        served_by(&info, engine)?;
        let speed = body(self, &info)?;
        unlocked.lock()?;
        drop(attached);
        wait_event(&mut events, &format!("{dev} to go"), |k, d| {
            k == EventKind::Removed && d.device == dev
        })?;
        Ok(speed)
    }

    /// The raw view: `unlock --no-mount` on a scratch copy of the fixture, then `FULL` bytes in
    /// 1 MiB blocks written (+ fsync) and read back cold, straight on `decrypted`.
    fn raw_view(&mut self, daemon: &Daemon, engine: Engine, who: &str) -> Cell {
        let image = copy(
            &self.source,
            self.path(&format!("raw-{}.img", engine.as_str())),
        )?;
        let plan = raw_plan(&image.0)?;
        self.raw_layout = Some(describe_plan(&plan));
        self.through_daemon(daemon, engine, &image.0, false, |_, info| {
            let decrypted = info.decrypted.as_deref().ok_or_else(|| {
                format!("{}: no decrypted view after unlock --no-mount", info.device)
            })?;
            eprintln!(
                "  {who}: {} unlocked, decrypted view {decrypted}",
                info.device
            );
            let size = File::open(decrypted)
                .and_then(|mut f| f.seek(SeekFrom::End(0)))
                .map_err(|e| format!("cannot size {decrypted}: {e}"))?;
            if plan.last().is_some_and(|&o| o + MIB > size) {
                return Err(format!("{decrypted} is only {} MiB", size / MIB));
            }
            timed_runs(who, &plan, false, Path::new(&info.device), |_| {
                PathBuf::from(decrypted)
            })
        })
    }

    /// Row 3: `dislocker -V DEV -u -- DIR`, then `mount -o loop DIR/dislocker-file MNT`.
    fn tutorial(&mut self, fs: Fs) -> Cell {
        stack(&format!("tutorial recipe / {}", fs.title()), |who| {
            let image = self.stick_copy(fs, "tutorial")?;
            let base = self.path(&format!("tutorial-{}", fs.name()));
            let (fuse_dir, mnt) = (base.join("dislocker"), base.join("mnt"));
            mkdir(&fuse_dir)?;
            mkdir(&mnt)?;
            let stick = Loop::attach(&image.0, true)?;
            let dislocker = Dislocker::start(&stick.volume(), &fuse_dir, &self.password_line())?;
            let file = fuse_dir.join("dislocker-file");
            let mount =
                |args: &[&str]| run_ok(Command::new("mount").args(args).arg(&file).arg(&mnt), None);
            // What a tutorial says: let mount pick the type. Without a kernel driver mount(8)
            // finds a helper for NTFS (mount.ntfs, from ntfs-3g) but none for exFAT
            // (exfat-fuse installs only mount.exfat-fuse): then name the FUSE driver.
            let mut how = "mount -o loop".to_owned();
            if let Err(e) = mount(&["-o", "loop"]) {
                eprintln!("  {who}: {e}; naming the type");
                how = format!("mount -t {} -o loop", fs.fuse_type());
                mount(&["-t", fs.fuse_type(), "-o", "loop"])?;
            }
            let mounted = FuseMount::adopt(&mnt)?;
            self.notes.push(format!(
                "tutorial recipe, {}: dislocker -V DEV -u -- -f DIR (password on stdin), then `{how} DIR/dislocker-file MNT` ({}).",
                fs.title(),
                mounted.describe()
            ));
            let speed = self.measure(who, fs, &mnt, Path::new(&stick.volume()))?;
            mounted.unmount()?;
            dislocker.stop()?;
            drop(stick);
            Ok(speed)
        })
    }

    /// Row 4: a loop device over a plain image of the volume's size, the same filesystem, the
    /// same FUSE driver.
    fn plain(&mut self, fs: Fs) -> Cell {
        stack(
            &format!("same FUSE driver, no encryption / {}", fs.title()),
            |who| {
                let size = fs::metadata(&self.source)
                    .map_err(|e| format!("{}: {e}", self.source.display()))?
                    .len();
                let image = TempFile(self.path(&format!("plain-{}.img", fs.name())));
                File::create(&image.0)
                    .and_then(|f| f.set_len(size))
                    .map_err(|e| format!("cannot make {}: {e}", image.0.display()))?;
                let mnt = self.path(&format!("plain-{}-mnt", fs.name()));
                mkdir(&mnt)?;
                let dev = Loop::attach(&image.0, false)?;
                let (mkfs, driver): (&[&str], _) = match fs {
                    Fs::Ntfs => (&["mkntfs", "-q", "-f"], "ntfs-3g"),
                    Fs::Exfat => (&["mkfs.exfat"], "mount.exfat-fuse"),
                };
                run_ok(
                    Command::new(mkfs[0])
                        .args(&mkfs[1..])
                        .args(["-L", LABEL, &dev.dev]),
                    None,
                )?;
                run_ok(Command::new(driver).arg(&dev.dev).arg(&mnt), None)?;
                let mounted = FuseMount::adopt(&mnt)?;
                let speed = self.measure(who, fs, &mnt, Path::new(&dev.dev))?;
                mounted.unmount()?;
                drop(dev);
                Ok(speed)
            },
        )
    }

    /// RUNS times: a new file of the column's size written in 1 MiB chunks and fsynced
    /// (timed together), caches dropped, read back cold in 1 MiB reads (timed), compared.
    fn measure(&mut self, who: &str, fs: Fs, dir: &Path, stick: &Path) -> Res<Speed> {
        let stat = nix::sys::statvfs::statvfs(dir)
            .map_err(|e| format!("statvfs {}: {e}", dir.display()))?;
        let free = stat.blocks_available() as u64 * stat.fragment_size() as u64;
        let free_mib = free as f64 / MIB as f64;
        let size = *self.sizes[fs as usize].get_or_insert_with(|| {
            if free >= FULL + SLACK {
                return FULL;
            }
            self.small.push(format!(
                "{}: only {free_mib:.1} MiB free inside, so {} MiB files",
                fs.title(),
                SMALL / MIB
            ));
            SMALL
        });
        eprintln!(
            "  {who}: {free_mib:.1} MiB free inside, {} MiB files",
            size / MIB
        );
        if free < size + SLACK {
            return Err(format!(
                "only {free_mib:.1} MiB free inside {}",
                dir.display()
            ));
        }
        let offsets: Vec<u64> = (0..size / MIB).map(|i| i * MIB).collect();
        timed_runs(who, &offsets, true, stick, |run| {
            dir.join(format!("throughput-{run}.bin"))
        })
    }

    fn print(&self, rows: &[(&str, [Cell; 2])], raw: &[(Engine, Cell)]) {
        let size = |fs: Fs| self.sizes[fs as usize].unwrap_or(FULL) / MIB;
        let file = if size(Fs::Ntfs) == size(Fs::Exfat) {
            format!("a new {} MiB file", size(Fs::Ntfs))
        } else {
            format!(
                "a new file of {} MiB (NTFS) / {} MiB (exFAT)",
                size(Fs::Ntfs),
                size(Fs::Exfat)
            )
        };
        println!();
        println!(
            "Sequential throughput on a BitLocker stick ({SOURCE}, MBR, one partition), median of {RUNS} runs per cell."
        );
        println!(
            "Per run: {file} written in 1 MiB chunks + fsync + flush of the stick itself (timed together), caches dropped, read back cold in 1 MiB reads."
        );
        for why in &self.small {
            println!("{why}.");
        }
        println!("MB/s = 10^6 bytes per second. {}", kernel_drivers());
        println!();
        let mut table = vec![vec![
            "stack".to_owned(),
            "NTFS write / read MB/s".to_owned(),
            "exFAT write / read MB/s".to_owned(),
        ]];
        for (name, cells) in rows {
            let mut row = vec![(*name).to_owned()];
            row.extend(cells.iter().map(|c| match c {
                Ok(s) => format!("{:.1} / {:.1}", s.write, s.read),
                Err(e) => na(e),
            }));
            table.push(row);
        }
        print_table(&table);
        if !self.notes.is_empty() {
            println!();
            for note in &self.notes {
                println!("- {note}");
            }
        }

        println!();
        println!(
            "Raw decrypted view (status `decrypted` after `unlock --no-mount`) of a scratch copy of {SOURCE}.img, median of {RUNS} runs."
        );
        println!(
            "Per run: {} × 1 MiB written from {} MiB on, skipping every MiB that touches a reserved area (FVE metadata, volume header backup: writes refused)",
            FULL / MIB,
            RAW_START / MIB
        );
        if let Some(layout) = &self.raw_layout {
            println!("({layout}), + fsync + flush of the stick (timed together); caches dropped; the same blocks read back cold in 1 MiB reads.");
        }
        println!();
        let mut table = vec![vec![
            "engine".to_owned(),
            "write MB/s".to_owned(),
            "read MB/s".to_owned(),
        ]];
        for (engine, cell) in raw {
            table.push(match cell {
                Ok(s) => vec![
                    engine.as_str().to_owned(),
                    format!("{:.1}", s.write),
                    format!("{:.1}", s.read),
                ],
                Err(e) => vec![engine.as_str().to_owned(), na(e), na(e)],
            });
        }
        let (ratio, name) = match raw {
            [(a, Ok(x)), (b, Ok(y))] => (
                vec![
                    format!("{:.2}×", x.write / y.write),
                    format!("{:.2}×", x.read / y.read),
                ],
                format!("{} / {}", a.as_str(), b.as_str()),
            ),
            _ => (vec!["n/a".to_owned(), "n/a".to_owned()], "ratio".to_owned()),
        };
        let mut row = vec![name];
        row.extend(ratio);
        table.push(row);
        print_table(&table);
    }
}

/// Which filesystem drivers the stacks get here.
fn kernel_drivers() -> String {
    let list = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let present: Vec<&str> = ["ntfs3", "exfat"]
        .into_iter()
        .filter(|d| {
            list.lines()
                .any(|l| l.split_whitespace().last() == Some(*d))
        })
        .collect();
    if present.is_empty() {
        "This kernel has no ntfs3/exfat driver: every filesystem runs in FUSE (ntfs-3g, exfat-fuse).".to_owned()
    } else {
        format!(
            "This kernel has {}: guilocker mounts with it (directly on dm-crypt, over a loop device on a FUSE engine); the last row uses the FUSE drivers.",
            present.join(", ")
        )
    }
}

/// RUNS times: chunk i of the pattern written at `offsets[i]` of `path(run)`, fsynced, and
/// the stick under it flushed (timed together, the open included), caches dropped, the same blocks read back cold in
/// 1 MiB reads (timed) and compared. `new`: each run creates its file and removes it after.
fn timed_runs(
    who: &str,
    offsets: &[u64],
    new: bool,
    stick: &Path,
    path: impl Fn(usize) -> PathBuf,
) -> Res<Speed> {
    let mut pattern = Pattern::new();
    let mut data = vec![0u8; offsets.len() * CHUNK];
    let bytes = data.len() as u64;
    let (mut writes, mut reads) = (Vec::new(), Vec::new());
    for run in 0..RUNS {
        let path = path(run);
        let name = path.display();
        let remove = new.then(|| TempFile(path.clone()));
        let t = Instant::now();
        let file = OpenOptions::new()
            .write(true)
            .create_new(new)
            .open(&path)
            .map_err(|e| format!("cannot open {name} for writing: {e}"))?;
        for (i, &at) in offsets.iter().enumerate() {
            file.write_all_at(pattern.chunk(run, i), at)
                .map_err(|e| format!("write at byte {at} of {name}: {e}"))?;
        }
        file.sync_all()
            .map_err(|e| format!("fsync of {name}: {e}"))?;
        // The data is on the stick only once the stick's own cache is flushed too: an
        // engine whose fsync does nothing (dislocker 0.7.3) would otherwise look faster.
        File::open(stick)
            .and_then(|f| f.sync_all())
            .map_err(|e| format!("fsync of {}: {e}", stick.display()))?;
        let write = t.elapsed();
        drop(file);
        drop_caches()?;
        let t = Instant::now();
        let file = File::open(&path).map_err(|e| format!("cannot open {name}: {e}"))?;
        for (block, &at) in data.chunks_mut(CHUNK).zip(offsets) {
            file.read_exact_at(block, at)
                .map_err(|e| format!("read at byte {at} of {name}: {e}"))?;
        }
        let read = t.elapsed();
        for (i, (block, &at)) in data.chunks(CHUNK).zip(offsets).enumerate() {
            if block != pattern.chunk(run, i) {
                return Err(format!("{name} reads back differently at byte {at}"));
            }
        }
        drop(file);
        if let Some(file) = remove {
            drop(file);
            nix::unistd::sync();
        }
        writes.push(mb_per_s(bytes, write));
        reads.push(mb_per_s(bytes, read));
        eprintln!(
            "  {who}: run {}/{RUNS}: write {:.1} MB/s, read {:.1} MB/s",
            run + 1,
            writes[run],
            reads[run]
        );
    }
    Ok(Speed {
        write: median(writes),
        read: median(reads),
    })
}

/// 1 MiB of random-ish bytes; each chunk handed out carries its run and index in its first
/// bytes, so no two blocks written are alike.
struct Pattern(Vec<u8>);

impl Pattern {
    fn new() -> Self {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut buf = Vec::with_capacity(CHUNK);
        while buf.len() < CHUNK {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf.extend_from_slice(&x.to_le_bytes());
        }
        Self(buf)
    }

    fn chunk(&mut self, run: usize, index: usize) -> &[u8] {
        self.0[..8].copy_from_slice(&(index as u64).to_le_bytes());
        self.0[8..16].copy_from_slice(&(run as u64).to_le_bytes());
        &self.0
    }
}

fn mb_per_s(bytes: u64, time: Duration) -> f64 {
    bytes as f64 / time.as_secs_f64() / 1e6
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// `sync; echo 3 > /proc/sys/vm/drop_caches`: page cache (FUSE files included), dentries, inodes.
fn drop_caches() -> Res<()> {
    nix::unistd::sync();
    fs::write("/proc/sys/vm/drop_caches", "3\n")
        .map_err(|e| format!("cannot write /proc/sys/vm/drop_caches: {e}"))
}

/// Offsets of the raw view's `FULL / MIB` blocks: 1 MiB apart from `RAW_START`, skipping every
/// block that touches a reserved area of the volume's layout (FVE metadata blocks, volume
/// header backup: they refuse writes).
fn raw_plan(image: &Path) -> Res<Vec<u64>> {
    let name = image.display();
    let mut file = File::open(image).map_err(|e| format!("cannot open {name}: {e}"))?;
    let mut sector = [0u8; 512];
    file.read_exact(&mut sector)
        .map_err(|e| format!("cannot read {name}: {e}"))?;
    if !is_bitlocker(&sector) {
        return Err(format!("{name} has no BitLocker volume header"));
    }
    let size = file.metadata().map_err(|e| format!("{name}: {e}"))?.len();
    let layout = read_metadata(&file)
        .and_then(|meta| Layout::new(&meta, size))
        .map_err(|e| format!("{name}: {e}"))?;
    let reserved = layout.reserved();
    let plan: Vec<u64> = (RAW_START / MIB..layout.size() / MIB)
        .map(|i| i * MIB)
        .filter(|&at| !reserved.iter().any(|r| at < r.end && r.start < at + MIB))
        .take((FULL / MIB) as usize)
        .collect();
    if (plan.len() as u64) < FULL / MIB {
        return Err(format!(
            "the {} MiB view of {name} has no room for {} MiB from {} MiB on",
            size / MIB,
            FULL / MIB,
            RAW_START / MIB
        ));
    }
    Ok(plan)
}

/// `MiB 32, 35-43, 46-54, 57-86 of the view`.
fn describe_plan(plan: &[u64]) -> String {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for mib in plan.iter().map(|o| o / MIB) {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == mib => *end = mib,
            _ => runs.push((mib, mib)),
        }
    }
    let runs: Vec<String> = runs
        .iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    format!("MiB {} of the view", runs.join(", "))
}

fn na(reason: &str) -> String {
    format!("n/a ({reason})")
}

fn print_table(rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |row: &[String]| {
        let cells: Vec<String> = widths
            .iter()
            .enumerate()
            .map(|(c, w)| {
                let s = row.get(c).map(String::as_str).unwrap_or("");
                format!("{s}{}", " ".repeat(w - s.chars().count()))
            })
            .collect();
        println!("| {} |", cells.join(" | "));
    };
    for (i, row) in rows.iter().enumerate() {
        line(row);
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            println!("|-{}-|", rule.join("-|-"));
        }
    }
}

// ---- fixtures and sticks ----

fn shared_dir() -> PathBuf {
    std::env::var_os("GUILOCKER_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"))
}

fn mkdir(dir: &Path) -> Res<()> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

/// The unpacked fixture images: `$GUILOCKER_FIXTURES`, else the tarball unpacked once under
/// target/tmp/fixtures (the same place the tests use).
fn fixtures() -> Res<PathBuf> {
    if let Some(dir) = std::env::var_os("GUILOCKER_FIXTURES") {
        return Ok(PathBuf::from(dir));
    }
    let tarball = shared_dir().join("fixtures/bitlocker/bitlk-images.tar.xz");
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixtures");
    let dir = base.join("bitlk-images");
    if !dir.join("images.conf").exists() {
        if !tarball.is_file() {
            return Err(format!("{} is missing", tarball.display()));
        }
        mkdir(&base)?;
        eprintln!("unpacking {}", tarball.display());
        run_ok(
            Command::new("tar")
                .arg("xJSf")
                .arg(&tarball)
                .arg("-C")
                .arg(&base),
            None,
        )?;
    }
    Ok(dir)
}

/// `PW` of the `[SOURCE]` section of images.conf.
fn password(fixtures: &Path) -> Res<Zeroizing<String>> {
    let conf = fixtures.join("images.conf");
    let text = fs::read_to_string(&conf).map_err(|e| format!("{}: {e}", conf.display()))?;
    let mut section = false;
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name == SOURCE;
        } else if let (true, Some((key, value))) = (section, line.split_once('=')) {
            if key.trim() == "PW" && !value.trim().is_empty() {
                return Ok(Zeroizing::new(value.trim().to_owned()));
            }
        }
    }
    Err(format!("{}: no PW for [{SOURCE}]", conf.display()))
}

/// `make-bitlocker-stick -s SOURCE -p PW -t FS -L Bench -P mbr -o OUT`.
fn make_stick(root: &Path, source: &Path, fs: Fs, password: &str) -> Res<PathBuf> {
    eprintln!("making the {} stick", fs.title());
    let out = root.join(format!("stick-{}.img", fs.name()));
    // The tool takes the password only in argv; it is the fixture's published password.
    let args = [
        "-p",
        password,
        "-t",
        fs.name(),
        "-L",
        LABEL,
        "-P",
        "mbr",
        "-o",
    ];
    let tool = shared_dir().join("tools/make-bitlocker-stick");
    let result = run(
        Command::new(tool)
            .arg("-s")
            .arg(source)
            .args(args)
            .arg(&out),
        None,
        Duration::from_secs(600),
    )?;
    // It prints the image's path when it has written it; with exFAT it may then fail in its
    // own cleanup and exit 1.
    let printed = result.stdout.lines().any(|l| Path::new(l.trim()) == out);
    if out.is_file() && (printed || result.code == Some(0)) {
        Ok(out)
    } else {
        Err(format!(
            "make-bitlocker-stick -t {} -o {} failed: {}",
            fs.name(),
            out.display(),
            summary(&result.stderr)
        ))
    }
}

/// `cp --sparse=always FROM TO`; TO is removed on drop (also after a failed copy).
fn copy(from: &Path, to: PathBuf) -> Res<TempFile> {
    let copy = TempFile(to);
    run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(from)
            .arg(&copy.0),
        None,
    )?;
    Ok(copy)
}

// ---- processes ----

fn which(program: &str) -> Option<PathBuf> {
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.exists())
}

struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// An anonymous file for a child's output: nothing blocks on it, whoever keeps it open.
fn capture() -> Res<File> {
    nix::sys::memfd::memfd_create(c"throughput-output", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .map(File::from)
        .map_err(|e| format!("memfd_create: {e}"))
}

/// A child's end of a `capture` file.
fn stdio(file: &File) -> Res<Stdio> {
    file.try_clone()
        .map(Stdio::from)
        .map_err(|e| format!("cannot duplicate an output memfd: {e}"))
}

fn captured(mut file: &File) -> String {
    let mut bytes = Vec::new();
    let _ = file.seek(SeekFrom::Start(0));
    let _ = file.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A program's complaint on one line: its last line, without mount(8)'s pointer to dmesg.
fn summary(text: &str) -> String {
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().starts_with("dmesg(1) may have more information"))
        .collect();
    one_line(&kept.join("\n"))
}

/// Runs `cmd` to its end (killed after `timeout`), `stdin` on its stdin.
fn run(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> Res<Output> {
    let name = cmd.get_program().to_string_lossy().into_owned();
    let (out, err) = (capture()?, capture()?);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(stdio(&out)?)
    .stderr(stdio(&err)?);
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {name}: {e}"))?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A child that exits without reading gets EPIPE here (SIGPIPE is ignored): fine.
        let _ = pipe.write_all(data);
    }
    let status = wait_exit(&mut child, timeout).map_err(|e| format!("{name} {e}"))?;
    Ok(Output {
        code: status.code(),
        stdout: captured(&out),
        stderr: captured(&err),
    })
}

/// `run`, then its stdout; a failure shows the command line (never a secret in it), its
/// status and its last line of complaint.
fn run_ok(cmd: &mut Command, stdin: Option<&[u8]>) -> Res<String> {
    let out = run(cmd, stdin, WAIT)?;
    if out.code == Some(0) {
        return Ok(out.stdout);
    }
    let program = Path::new(cmd.get_program());
    let line: Vec<String> = std::iter::once(program.file_name().unwrap_or(program.as_os_str()))
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let code = out.code.map_or("a signal".to_owned(), |c| c.to_string());
    let text = if out.stderr.trim().is_empty() {
        &out.stdout
    } else {
        &out.stderr
    };
    Err(format!(
        "`{}` exited {code}: {}",
        line.join(" "),
        summary(text)
    ))
}

fn pidfd(pid: u32) -> Result<OwnedFd, Errno> {
    guilocker::process::pidfd_open(nix::unistd::Pid::from_raw(pid as i32))
}

fn sigterm(child: &Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGTERM,
    );
}

/// poll(2) on `set` until something is ready (true) or the deadline passes (false).
fn poll_until(set: &mut [PollFd], deadline: Instant) -> Res<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let timeout = PollTimeout::try_from(left.as_millis().min(60_000) as i32 + 1)
            .unwrap_or(PollTimeout::MAX);
        match poll(set, timeout) {
            Ok(0) | Err(Errno::EINTR) => {}
            Ok(_) => return Ok(true),
            Err(e) => return Err(format!("poll: {e}")),
        }
    }
}

/// Waits until every pidfd reports its process gone; false at the deadline.
fn wait_pidfds(fds: &[OwnedFd], timeout: Duration) -> Res<bool> {
    let deadline = Instant::now() + timeout;
    for fd in fds {
        if !poll_until(&mut [PollFd::new(fd.as_fd(), PollFlags::POLLIN)], deadline)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Waits for our child to exit (its pidfd), killing it at the deadline or when it cannot be
/// watched.
fn wait_exit(child: &mut Child, timeout: Duration) -> Res<ExitStatus> {
    let exited = match pidfd(child.id()) {
        Ok(fd) => wait_pidfds(&[fd], timeout),
        Err(e) => Err(format!("pidfd_open: {e}")),
    };
    let why = match exited {
        Ok(true) => {
            return child
                .wait()
                .map_err(|e| format!("(pid {}): wait: {e}", child.id()))
        }
        Ok(false) => format!("did not exit within {} s", timeout.as_secs()),
        Err(e) => format!("cannot be waited for ({e})"),
    };
    let _ = child.kill();
    let _ = child.wait();
    Err(format!("(pid {}) {why}: killed", child.id()))
}

/// Pidfds of the processes other than us with `arg` in their command line (FUSE drivers name
/// their mountpoint there).
fn processes_with_arg(arg: &Path) -> Vec<OwnedFd> {
    let me = std::process::id();
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = fs::read(e.path().join("cmdline")).ok()?;
            let wanted = arg.as_os_str().as_encoded_bytes();
            (pid != me && cmdline.split(|b| *b == 0).any(|a| a == wanted))
                .then(|| pidfd(pid).ok())
                .flatten()
        })
        .collect()
}

// ---- the mount table ----

/// Waits until `done()`, re-checking at every mount-table change; fails at the deadline, or
/// when the process behind `exited` ends first.
fn wait_until(what: &str, exited: Option<&OwnedFd>, mut done: impl FnMut() -> bool) -> Res<()> {
    let table = MountWatch::open().map_err(|e| format!("cannot open mountinfo: {e}"))?;
    let deadline = Instant::now() + WAIT;
    loop {
        if done() {
            return Ok(());
        }
        let mut set = vec![PollFd::new(table.fd(), PollFlags::POLLPRI)];
        if let Some(fd) = exited {
            set.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
        }
        if !poll_until(&mut set, deadline).map_err(|e| format!("waiting for {what}: {e}"))? {
            return Err(format!(
                "timed out after {} s waiting for {what}",
                WAIT.as_secs()
            ));
        }
        let gone = set
            .get(1)
            .and_then(PollFd::revents)
            .is_some_and(|r| r.contains(PollFlags::POLLIN));
        if gone {
            return if done() {
                Ok(())
            } else {
                Err(format!("exited before {what}"))
            };
        }
    }
}

/// `umount DIR`, lazily if it is busy.
fn unmount(dir: &Path) -> Res<()> {
    if mounted_at(dir).is_none() {
        return Ok(());
    }
    if let Err(e) = run_ok(Command::new("umount").arg(dir), None) {
        eprintln!("  {e}; detaching {} lazily", dir.display());
        run_ok(Command::new("umount").arg("--lazy").arg(dir), None)?;
    }
    Ok(())
}

// ---- things to put away ----

/// The scratch directory under target/tmp. On drop: whatever is still mounted or attached
/// below it is detached, then it is removed.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Res<Self> {
        // In the VM, target/ is 9p, where no socket can be made: its tmpfs instead.
        let base = std::env::var_os("GUILOCKER_SCRATCH")
            .map_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")), PathBuf::from);
        let dir = base.join(format!("bench-throughput-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        mkdir(&dir)?;
        // Mountpoints are compared with the mount table, which has canonical paths.
        let dir = fs::canonicalize(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let mut left: Vec<PathBuf> = mounts()
            .into_iter()
            .map(|m| m.mountpoint)
            .filter(|p| p.starts_with(&self.0))
            .collect();
        left.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for point in left {
            eprintln!("cleanup: {} was still mounted", point.display());
            if let Err(e) = run_ok(Command::new("umount").arg("--lazy").arg(&point), None) {
                eprintln!("cleanup: {e}");
            }
        }
        let list = run_ok(
            Command::new("losetup").args(["--list", "--noheadings", "--output", "NAME,BACK-FILE"]),
            None,
        );
        for line in list.as_deref().unwrap_or_default().lines() {
            if let Some((dev, file)) = line.trim().split_once(' ') {
                if Path::new(file.trim()).starts_with(&self.0) {
                    eprintln!("cleanup: {dev} was still attached");
                    detach(dev);
                }
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.0) {
            eprintln!("cleanup: cannot remove {}: {e}", self.0.display());
        }
    }
}

/// A scratch file, removed on drop.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// `losetup -d DEV`, a failure logged.
fn detach(dev: &str) {
    if let Err(e) = run_ok(Command::new("losetup").args(["-d", dev]), None) {
        eprintln!("cleanup: {e}");
    }
}

/// A disk image attached as a loop device: our USB stick. Detached on drop.
struct Loop {
    dev: String,
    partitioned: bool,
}

impl Loop {
    /// `losetup -P` then `partx -a`, as tests/common does (this kernel does not scan the
    /// partition tables of loop devices by itself).
    fn attach(image: &Path, partitioned: bool) -> Res<Self> {
        let mut cmd = Command::new("losetup");
        cmd.args(["--find", "--show"]);
        if partitioned {
            cmd.arg("--partscan");
        }
        let dev = run_ok(cmd.arg(image), None)?.trim().to_owned();
        if !dev.starts_with("/dev/loop") {
            return Err(format!("losetup printed {dev:?} for {}", image.display()));
        }
        let stick = Self { dev, partitioned };
        if partitioned {
            // Fails harmlessly when the kernel added the partition already.
            let partx = run_ok(Command::new("partx").args(["-a", &stick.dev]), None);
            if !Path::new(&stick.volume()).exists() {
                return Err(format!(
                    "{} (partition 1 of {}) did not appear: {}",
                    stick.volume(),
                    image.display(),
                    partx
                        .err()
                        .unwrap_or_else(|| "partx -a succeeded".to_owned())
                ));
            }
        }
        Ok(stick)
    }

    /// The device that carries BitLocker (or the filesystem).
    fn volume(&self) -> String {
        if self.partitioned {
            format!("{}p1", self.dev)
        } else {
            self.dev.clone()
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        detach(&self.dev);
    }
}

/// A FUSE filesystem mounted by a helper that daemonized: unmounted on drop, waiting for the
/// driver to exit (it may still be writing after umount returns).
struct FuseMount {
    dir: PathBuf,
    drivers: Vec<OwnedFd>,
    done: bool,
}

impl FuseMount {
    fn adopt(dir: &Path) -> Res<Self> {
        wait_until(&format!("a mount at {}", dir.display()), None, || {
            mounted_at(dir).is_some()
        })?;
        Ok(Self {
            dir: dir.to_owned(),
            drivers: processes_with_arg(dir),
            done: false,
        })
    }

    fn describe(&self) -> String {
        mounts()
            .into_iter()
            .rev()
            .find(|m| m.mountpoint == self.dir)
            .map_or_else(String::new, |m| format!("{} on {}", m.fs_type, m.source))
    }

    fn unmount(mut self) -> Res<()> {
        self.put_away()?;
        self.done = true;
        Ok(())
    }

    fn put_away(&mut self) -> Res<()> {
        unmount(&self.dir)?;
        if self.drivers.is_empty() {
            eprintln!(
                "  warning: found no driver process for {}: cannot wait for it to exit",
                self.dir.display()
            );
        } else if !wait_pidfds(&self.drivers, WAIT)? {
            return Err(format!(
                "the driver of {} still runs {} s after unmount",
                self.dir.display(),
                WAIT.as_secs()
            ));
        }
        Ok(())
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = self.put_away() {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// dislocker in the foreground (`-- -f DIR`), our child: unmounted and waited for on drop.
struct Dislocker {
    child: Option<Child>,
    dir: PathBuf,
}

impl Dislocker {
    /// Never with -v: dislocker's debug log prints the password.
    fn start(volume: &str, dir: &Path, password_line: &[u8]) -> Res<Self> {
        let err = capture()?;
        let mut child = Command::new("dislocker")
            .args(["-V", volume, "-u", "--", "-f"])
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(stdio(&err)?)
            .spawn()
            .map_err(|e| format!("cannot run dislocker: {e}"))?;
        if let Some(mut pipe) = child.stdin.take() {
            let _ = pipe.write_all(password_line);
        }
        let pid = pidfd(child.id()).ok();
        let me = Self {
            child: Some(child),
            dir: dir.to_owned(),
        };
        wait_until("dislocker's FUSE mount", pid.as_ref(), || {
            mounted_at(dir).is_some_and(|t| t == "fuse.dislocker")
        })
        .map_err(|e| {
            format!(
                "dislocker -V {volume} on {} {e}: {}",
                dir.display(),
                summary(&captured(&err))
            )
        })?;
        Ok(me)
    }

    fn stop(mut self) -> Res<()> {
        self.put_away()
    }

    /// umount (lazily while the loop device over its file is still being released), then
    /// wait for dislocker to exit.
    fn put_away(&mut self) -> Res<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let unmounted = if mounted_at(&self.dir).is_some() {
            unmount(&self.dir)
        } else {
            // Never mounted (wrong password, a timeout): nothing to flush.
            sigterm(&child);
            Ok(())
        };
        wait_exit(&mut child, WAIT).map_err(|e| format!("dislocker {e}"))?;
        unmounted
    }
}

impl Drop for Dislocker {
    fn drop(&mut self) {
        if let Err(e) = self.put_away() {
            eprintln!("cleanup: {e}");
        }
    }
}

/// A guilocker daemon of our own, in the foreground, with its own config, socket, pidfile,
/// runtime dir and mount root. SIGTERM and waited for on drop.
struct Daemon {
    child: Option<Child>,
    socket: PathBuf,
}

impl Daemon {
    fn start(root: &Path, engine: Engine) -> Res<Self> {
        Self::start_with(root, engine, engine.as_str(), "")
    }

    /// A daemon in `daemon-TAG` with `extra` config lines.
    fn start_with(root: &Path, engine: Engine, tag: &str, extra: &str) -> Res<Self> {
        let name = engine.as_str();
        let dir = root.join(format!("daemon-{tag}"));
        let media = dir.join("media");
        mkdir(&media)?;
        let config = dir.join("config.toml");
        fs::write(
            &config,
            format!(
                "include_loop_devices = true\nmount_root = \"{}\"\nengine = \"{name}\"\n{extra}",
                media.display()
            ),
        )
        .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
        let socket = dir.join("control.sock");
        let mut child = Command::new(GUILOCKER)
            .args(["daemon", "--foreground", "--config"])
            .arg(&config)
            .arg("--socket")
            .arg(&socket)
            .arg("--pidfile")
            .arg(dir.join("guilocker.pid"))
            .arg("--runtime-dir")
            .arg(dir.join("run"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {GUILOCKER}: {e}"))?;
        let stderr = child.stderr.take();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr
                .into_iter()
                .flat_map(|s| BufReader::new(s).lines().map_while(Result::ok))
            {
                eprintln!("  daemon[{name}]| {line}");
                let _ = tx.send(line);
            }
        });
        // Dropped on failure: SIGTERM, waited for.
        let daemon = Self {
            child: Some(child),
            socket,
        };
        let deadline = Instant::now() + WAIT;
        let mut last = String::new();
        let why = loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains("listening on") => return Ok(daemon),
                Ok(line) => last = line,
                Err(RecvTimeoutError::Timeout) => {
                    break format!("did not listen within {} s", WAIT.as_secs())
                }
                Err(RecvTimeoutError::Disconnected) => break "exited".to_owned(),
            }
        };
        Err(format!(
            "{GUILOCKER} daemon (socket {}) {why}; its last log line: {}",
            daemon.socket.display(),
            one_line(&last)
        ))
    }

    /// The CLI against this daemon, as root; its stdout, or why it failed.
    fn cli(&self, args: &[&str], stdin: Option<&[u8]>) -> Res<String> {
        run_ok(
            Command::new(GUILOCKER)
                .args(args)
                .env(SOCKET_ENV, &self.socket),
            stdin,
        )
    }

    /// A subscription; `wait_event` sets its read deadlines.
    fn events(&self) -> Res<Events> {
        Client::connect(&self.socket)
            .and_then(Client::subscribe)
            .map_err(|e| format!("cannot subscribe at {}: {e}", self.socket.display()))
    }

    fn device(&self, dev: &str) -> Res<DeviceInfo> {
        let socket = self.socket.display();
        Client::connect(&self.socket)
            .and_then(|mut c| c.status())
            .map_err(|e| format!("status from {socket}: {e}"))?
            .into_iter()
            .find(|d| d.device == dev)
            .ok_or_else(|| format!("the daemon at {socket} does not list {dev}"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            sigterm(&child);
            if let Err(e) = wait_exit(&mut child, WAIT) {
                eprintln!("cleanup: the daemon {e}");
            }
        }
    }
}

/// A volume unlocked through the daemon: `guilocker unmount DEV` (which also locks a volume
/// opened with --no-mount) on drop, `--force` if that fails, unless `lock` did it.
struct Unlocked<'a> {
    daemon: &'a Daemon,
    dev: String,
    done: bool,
}

impl Unlocked<'_> {
    fn lock(mut self) -> Res<()> {
        self.daemon.cli(&["unmount", &self.dev], None)?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Unlocked<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // After a failed unlock there is nothing to unmount: that error is expected.
        if self.daemon.cli(&["unmount", &self.dev], None).is_err() {
            if let Err(e) = self.daemon.cli(&["unmount", &self.dev, "--force"], None) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// Fails when status says another engine serves the volume than the row is about.
fn served_by(info: &DeviceInfo, engine: Engine) -> Res<()> {
    match info.engine {
        Some(other) if other != engine => Err(format!(
            "{}: served by {}, not {}",
            info.device,
            other.as_str(),
            engine.as_str()
        )),
        _ => Ok(()),
    }
}

/// Reads events until one matches; fails at the deadline or when the stream ends.
fn wait_event(
    events: &mut Events,
    what: &str,
    mut pred: impl FnMut(EventKind, &DeviceInfo) -> bool,
) -> Res<()> {
    let deadline = Instant::now() + WAIT;
    let timed_out = || format!("timed out waiting for {what}");
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        events
            .stream()
            .set_read_timeout(Some(left))
            .map_err(|e| format!("cannot set a read timeout on the event stream: {e}"))?;
        match events.next() {
            Some(Ok((kind, info))) if pred(kind, &info) => return Ok(()),
            Some(Ok(_)) => {}
            Some(Err(ClientError::Frame(FrameError::Io(e))))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                return Err(timed_out())
            }
            Some(Err(e)) => return Err(format!("waiting for {what}: {e}")),
            None => {
                return Err(format!(
                    "the daemon closed its events while waiting for {what}"
                ))
            }
        }
    }
}
