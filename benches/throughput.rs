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
//! Every wait is on a real condition (a daemon log line, an event on the socket, a process exit,
//! the mount table) with a deadline; whatever was made is put away on drop, even after a failure.

use guilocker::client::{Client, Events};
use guilocker::protocol::{DeviceInfo, EventKind};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

const MIB: u64 = 1 << 20;
const CHUNK: usize = 1 << 20;
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
        match self {
            Fs::Ntfs => "ntfs",
            Fs::Exfat => "exfat",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Fs::Ntfs => "NTFS",
            Fs::Exfat => "exFAT",
        }
    }

    /// The FUSE driver, as `mount -t` names it.
    fn fuse_type(self) -> &'static str {
        match self {
            Fs::Ntfs => "ntfs-3g",
            Fs::Exfat => "exfat-fuse",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Engine {
    Native,
    Dislocker,
}

impl Engine {
    /// The value of the config key `engine`.
    fn name(self) -> &'static str {
        match self {
            Engine::Native => "native",
            Engine::Dislocker => "dislocker",
        }
    }

    fn row(self) -> &'static str {
        match self {
            Engine::Native => "guilocker, native engine",
            Engine::Dislocker => "guilocker, dislocker",
        }
    }
}

/// Medians over the runs, in MB/s (10^6 bytes per second).
#[derive(Clone, Copy)]
struct Speed {
    write: f64,
    read: f64,
}

type Cell = Res<Speed>;

const PROGRAMS: &[&str] = &[
    "losetup",
    "partx",
    "sfdisk",
    "mount",
    "umount",
    "tar",
    "python3",
    "dislocker",
    "ntfs-3g",
    "mkntfs",
    "mount.exfat-fuse",
    "mkfs.exfat",
];

fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("throughput benchmark: needs root (loop devices, mounts, drop_caches); skipped");
        return;
    }
    let missing: Vec<&str> = PROGRAMS
        .iter()
        .copied()
        .filter(|p| which(p).is_none())
        .collect();
    if !missing.is_empty() || !Path::new("/dev/fuse").exists() {
        eprintln!(
            "throughput benchmark: needs /dev/fuse and {}; skipped",
            PROGRAMS.join(", ")
        );
        return;
    }
    let fixtures = match fixtures() {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("throughput benchmark: {e}; skipped");
            return;
        }
    };
    let password = match password(&fixtures) {
        Ok(pw) => pw,
        Err(e) => {
            eprintln!("throughput benchmark: {e}; skipped");
            return;
        }
    };
    let scratch = match Scratch::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("throughput benchmark: {e}; skipped");
            return;
        }
    };
    let source = fixtures.join(format!("{SOURCE}.img"));
    let sticks = Fs::ALL.map(|fs| make_stick(&scratch.0, &source, fs, &password));
    let mut bench = Bench {
        root: scratch.0.clone(),
        password,
        source,
        sticks,
        sizes: [None, None],
        small: Vec::new(),
        notes: Vec::new(),
        raw_layout: None,
    };

    let mut rows: Vec<(&str, [Cell; 2])> = Vec::new();
    let mut raw: Vec<(Engine, Cell)> = Vec::new();
    for engine in [Engine::Native, Engine::Dislocker] {
        let (cells, view) = bench.guilocker(engine);
        rows.push((engine.row(), cells));
        raw.push((engine, view));
    }
    rows.push(("tutorial recipe", Fs::ALL.map(|fs| bench.tutorial(fs))));
    rows.push((
        "same FUSE driver, no encryption",
        Fs::ALL.map(|fs| bench.plain(fs)),
    ));
    bench.print(&rows, &raw);
    drop(bench);
    drop(scratch);
}

struct Bench {
    root: PathBuf,
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

impl Bench {
    /// `password\n`, for a program's stdin.
    fn password_line(&self) -> Zeroizing<Vec<u8>> {
        let mut line = Zeroizing::new(self.password.as_bytes().to_vec());
        line.push(b'\n');
        line
    }

    /// A fresh copy of the stick for `fs`, removed on drop.
    fn stick_copy(&self, fs: Fs, tag: &str) -> Res<TempFile> {
        let stick = self.sticks[fs as usize].as_ref().map_err(Clone::clone)?;
        let copy = TempFile(self.root.join(format!("{tag}-{}.img", fs.name())));
        run_ok(
            Command::new("cp")
                .arg("--sparse=always")
                .arg(stick)
                .arg(&copy.0),
            None,
        )?;
        Ok(copy)
    }

    /// Rows 1 and 2 and the raw view: a daemon with `engine = NAME`.
    fn guilocker(&mut self, engine: Engine) -> ([Cell; 2], Cell) {
        eprintln!("== {}", engine.row());
        let config = format!("engine = \"{}\"\n", engine.name());
        let daemon = match Daemon::start(&self.root, engine.name(), &config) {
            Err(e) if engine == Engine::Dislocker && e.contains("unknown field `engine`") => {
                // A daemon from before the native engine: dislocker is all it has.
                self.notes.push(format!(
                    "{}: this daemon has no `engine` key yet (dislocker is its only engine): started without it.",
                    engine.row()
                ));
                Daemon::start(&self.root, "dislocker-default", "")
            }
            other => other,
        };
        let daemon = match daemon {
            Ok(d) => d,
            Err(e) => return ([Err(e.clone()), Err(e.clone())], Err(e)),
        };
        let tag = format!("guilocker-{}", engine.name());
        let cells = Fs::ALL.map(|fs| {
            let who = format!("{} / {}", engine.row(), fs.title());
            let cell = self.guilocker_fs(&daemon, engine, fs, &tag, &who);
            report(&who, &cell);
            cell
        });
        let who = format!("{} / raw view", engine.row());
        let view = self.raw_view(&daemon, engine);
        report(&who, &view);
        (cells, view)
    }

    fn guilocker_fs(
        &mut self,
        daemon: &Daemon,
        engine: Engine,
        fs: Fs,
        tag: &str,
        who: &str,
    ) -> Cell {
        let image = self.stick_copy(fs, tag)?;
        let mut events = daemon.events()?;
        let stick = Loop::attach(&image.0, true)?;
        let dev = stick.volume();
        wait_event(&mut events, &format!("{dev} to appear"), |k, d| {
            k == EventKind::Added && d.device == dev && d.bitlocker
        })?;
        let unlocked = Unlocked::new(daemon, &dev);
        daemon.cli(
            &["unlock", &dev, "--password-stdin"],
            Some(&self.password_line()),
        )?;
        let info = daemon.device(&dev)?;
        served_by(&info, engine)?;
        let mountpoint = info
            .mountpoint
            .ok_or_else(|| format!("{dev}: no mountpoint after unlock"))?;
        eprintln!(
            "  {who}: {dev} mounted at {mountpoint} ({}, decrypted view {})",
            info.fs_type.as_deref().unwrap_or("?"),
            info.decrypted.as_deref().unwrap_or("?")
        );
        let speed = self.measure(who, fs, Path::new(&mountpoint))?;
        unlocked.lock()?;
        drop(stick);
        wait_event(&mut events, &format!("{dev} to go"), |k, d| {
            k == EventKind::Removed && d.device == dev
        })?;
        Ok(speed)
    }

    /// The raw view: `unlock --no-mount` on a scratch copy of the fixture, then `FULL` bytes in
    /// 1 MiB blocks written (+ fsync) and read back cold, straight on `decrypted`.
    fn raw_view(&mut self, daemon: &Daemon, engine: Engine) -> Cell {
        let image = TempFile(self.root.join(format!("raw-{}.img", engine.name())));
        run_ok(
            Command::new("cp")
                .arg("--sparse=always")
                .arg(&self.source)
                .arg(&image.0),
            None,
        )?;
        let size = fs::metadata(&image.0).map_err(|e| e.to_string())?.len();
        let plan = raw_plan(size, &metadata_offsets(&image.0)?)?;
        self.raw_layout = Some(describe_plan(&plan));
        let mut events = daemon.events()?;
        let stick = Loop::attach(&image.0, false)?;
        let dev = stick.volume();
        wait_event(&mut events, &format!("{dev} to appear"), |k, d| {
            k == EventKind::Added && d.device == dev && d.bitlocker
        })?;
        let unlocked = Unlocked::new(daemon, &dev);
        daemon.cli(
            &["unlock", &dev, "--no-mount", "--password-stdin"],
            Some(&self.password_line()),
        )?;
        let info = daemon.device(&dev)?;
        served_by(&info, engine)?;
        let decrypted = info
            .decrypted
            .ok_or_else(|| format!("{dev}: no decrypted view after unlock --no-mount"))?;
        eprintln!(
            "  {}: {dev} unlocked, decrypted view {decrypted}",
            engine.row()
        );
        let mut view = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&decrypted)
            .map_err(|e| format!("cannot open {decrypted}: {e}"))?;
        let view_size = view
            .seek(SeekFrom::End(0))
            .map_err(|e| format!("{decrypted}: {e}"))?;
        if plan.last().is_some_and(|&o| o + MIB > view_size) {
            return Err(format!("the view is only {} MiB", view_size / MIB));
        }
        let mut pattern = Pattern::new();
        let mut data = vec![0u8; plan.len() * CHUNK];
        let bytes = data.len() as u64;
        let (mut writes, mut reads) = (Vec::new(), Vec::new());
        for run in 0..RUNS {
            let t = Instant::now();
            for (i, &offset) in plan.iter().enumerate() {
                view.write_all_at(pattern.chunk(run, i), offset)
                    .map_err(|e| format!("write at byte {offset} of the view: {e}"))?;
            }
            view.sync_all()
                .map_err(|e| format!("fsync of the view: {e}"))?;
            let write = t.elapsed();
            drop_caches()?;
            let t = Instant::now();
            for (block, &offset) in data.chunks_mut(CHUNK).zip(&plan) {
                view.read_exact_at(block, offset)
                    .map_err(|e| format!("read at byte {offset} of the view: {e}"))?;
            }
            let read = t.elapsed();
            for (i, (block, &offset)) in data.chunks(CHUNK).zip(&plan).enumerate() {
                if block != pattern.chunk(run, i) {
                    return Err(format!("read back differs at byte {offset} of the view"));
                }
            }
            writes.push(mb_per_s(bytes, write));
            reads.push(mb_per_s(bytes, read));
            eprintln!(
                "  {} / raw view: run {}/{RUNS}: write {:.1} MB/s, read {:.1} MB/s",
                engine.row(),
                run + 1,
                writes[run],
                reads[run]
            );
        }
        drop(view);
        unlocked.lock()?;
        drop(stick);
        wait_event(&mut events, &format!("{dev} to go"), |k, d| {
            k == EventKind::Removed && d.device == dev
        })?;
        Ok(Speed {
            write: median(writes),
            read: median(reads),
        })
    }

    /// Row 3: `dislocker -V DEV -u -- DIR`, then `mount -o loop DIR/dislocker-file MNT`.
    fn tutorial(&mut self, fs: Fs) -> Cell {
        let who = format!("tutorial recipe / {}", fs.title());
        eprintln!("== {who}");
        let cell = self.tutorial_fs(fs, &who);
        report(&who, &cell);
        cell
    }

    fn tutorial_fs(&mut self, fs: Fs, who: &str) -> Cell {
        let image = self.stick_copy(fs, "tutorial")?;
        let base = self.root.join(format!("tutorial-{}", fs.name()));
        let (fuse_dir, mnt) = (base.join("dislocker"), base.join("mnt"));
        for d in [&fuse_dir, &mnt] {
            fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        }
        let stick = Loop::attach(&image.0, true)?;
        let dislocker = Dislocker::start(&stick.volume(), &fuse_dir, &self.password_line())?;
        let file = fuse_dir.join("dislocker-file");
        // What a tutorial says: let mount pick the type. Without a kernel driver mount(8)
        // finds a helper for NTFS (mount.ntfs, from ntfs-3g) but none for exFAT
        // (exfat-fuse installs only mount.exfat-fuse): then name the FUSE driver.
        let mut how = "mount -o loop".to_owned();
        let first = run_ok(
            Command::new("mount")
                .args(["-o", "loop"])
                .arg(&file)
                .arg(&mnt),
            None,
        );
        if let Err(e) = first {
            eprintln!("  {who}: {e}; naming the type");
            how = format!("mount -t {} -o loop", fs.fuse_type());
            run_ok(
                Command::new("mount")
                    .args(["-t", fs.fuse_type(), "-o", "loop"])
                    .arg(&file)
                    .arg(&mnt),
                None,
            )?;
        }
        let mounted = FuseMount::adopt(&mnt)?;
        self.notes.push(format!(
            "tutorial recipe, {}: dislocker -V DEV -u -- -f DIR (password on stdin), then `{how} DIR/dislocker-file MNT` ({}).",
            fs.title(),
            mounted.describe()
        ));
        let speed = self.measure(who, fs, &mnt)?;
        mounted.unmount()?;
        dislocker.stop()?;
        drop(stick);
        Ok(speed)
    }

    /// Row 4: a loop device over a plain image of the volume's size, the same filesystem, the
    /// same FUSE driver.
    fn plain(&mut self, fs: Fs) -> Cell {
        let who = format!("same FUSE driver, no encryption / {}", fs.title());
        eprintln!("== {who}");
        let cell = self.plain_fs(fs, &who);
        report(&who, &cell);
        cell
    }

    fn plain_fs(&mut self, fs: Fs, who: &str) -> Cell {
        let size = fs::metadata(&self.source).map_err(|e| e.to_string())?.len();
        let image = TempFile(self.root.join(format!("plain-{}.img", fs.name())));
        File::create(&image.0)
            .and_then(|f| f.set_len(size))
            .map_err(|e| format!("cannot make {}: {e}", image.0.display()))?;
        let mnt = self.root.join(format!("plain-{}-mnt", fs.name()));
        fs::create_dir_all(&mnt).map_err(|e| format!("cannot create {}: {e}", mnt.display()))?;
        let dev = Loop::attach(&image.0, false)?;
        match fs {
            Fs::Ntfs => {
                run_ok(
                    Command::new("mkntfs").args(["-q", "-f", "-L", LABEL, &dev.dev]),
                    None,
                )?;
                run_ok(Command::new("ntfs-3g").arg(&dev.dev).arg(&mnt), None)?;
            }
            Fs::Exfat => {
                run_ok(
                    Command::new("mkfs.exfat").args(["-L", LABEL, &dev.dev]),
                    None,
                )?;
                run_ok(
                    Command::new("mount.exfat-fuse").arg(&dev.dev).arg(&mnt),
                    None,
                )?;
            }
        }
        let mounted = FuseMount::adopt(&mnt)?;
        let speed = self.measure(who, fs, &mnt)?;
        mounted.unmount()?;
        drop(dev);
        Ok(speed)
    }

    /// RUNS times: a new file of the column's size written in 1 MiB chunks and fsynced
    /// (timed together), caches dropped, read back cold in 1 MiB reads (timed), compared.
    fn measure(&mut self, who: &str, fs: Fs, dir: &Path) -> Res<Speed> {
        let stat = nix::sys::statvfs::statvfs(dir)
            .map_err(|e| format!("statvfs {}: {e}", dir.display()))?;
        let free = stat.blocks_available() as u64 * stat.fragment_size() as u64;
        let size = match self.sizes[fs as usize] {
            Some(size) => size,
            None => {
                let size = if free >= FULL + SLACK { FULL } else { SMALL };
                if size == SMALL {
                    self.small.push(format!(
                        "{}: only {:.1} MiB free inside, so {} MiB files",
                        fs.title(),
                        free as f64 / MIB as f64,
                        SMALL / MIB
                    ));
                }
                self.sizes[fs as usize] = Some(size);
                size
            }
        };
        eprintln!(
            "  {who}: {:.1} MiB free inside, {} MiB files",
            free as f64 / MIB as f64,
            size / MIB
        );
        if free < size + SLACK {
            return Err(format!(
                "only {:.1} MiB free inside",
                free as f64 / MIB as f64
            ));
        }
        let mut pattern = Pattern::new();
        let mut data = vec![0u8; size as usize];
        let (mut writes, mut reads) = (Vec::new(), Vec::new());
        for run in 0..RUNS {
            let file = TempFile(dir.join(format!("throughput-{run}.bin")));
            let (write, read) = file_run(&file.0, &mut pattern, &mut data, run)?;
            drop(file);
            nix::unistd::sync();
            writes.push(mb_per_s(size, write));
            reads.push(mb_per_s(size, read));
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
            "Per run: {file} written in 1 MiB chunks + fsync (timed together), caches dropped, read back cold in 1 MiB reads."
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
            "Per run: {} × 1 MiB written from {} MiB on, skipping the MiB at each FVE metadata block (reserved: writes refused)",
            FULL / MIB,
            RAW_START / MIB
        );
        if let Some(layout) = &self.raw_layout {
            println!("({layout}), + fsync (timed together); caches dropped; the same blocks read back cold in 1 MiB reads.");
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
                    engine.name().to_owned(),
                    format!("{:.1}", s.write),
                    format!("{:.1}", s.read),
                ],
                Err(e) => vec![engine.name().to_owned(), na(e), na(e)],
            });
        }
        let find = |which: Engine| raw.iter().find(|(e, _)| *e == which).map(|(_, c)| c);
        let ratio = match (find(Engine::Native), find(Engine::Dislocker)) {
            (Some(Ok(n)), Some(Ok(d))) => vec![
                format!("{:.2}×", n.write / d.write),
                format!("{:.2}×", n.read / d.read),
            ],
            _ => vec!["n/a".to_owned(), "n/a".to_owned()],
        };
        let mut row = vec!["native / dislocker".to_owned()];
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
            "This kernel has {}: guilocker mounts with it (over a loop device); the last row uses the FUSE drivers.",
            present.join(", ")
        )
    }
}

/// One run on `path`: (write + fsync time, cold read time).
fn file_run(
    path: &Path,
    pattern: &mut Pattern,
    data: &mut [u8],
    run: usize,
) -> Res<(Duration, Duration)> {
    let size = data.len();
    let io = |what: &str, e: std::io::Error| format!("{what} {}: {e}", path.display());
    let t = Instant::now();
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| io("cannot create", e))?;
    for i in 0..size / CHUNK {
        file.write_all(pattern.chunk(run, i))
            .map_err(|e| io("write", e))?;
    }
    file.sync_all().map_err(|e| io("fsync", e))?;
    let write = t.elapsed();
    drop(file);
    drop_caches()?;
    let t = Instant::now();
    let mut file = File::open(path).map_err(|e| io("cannot open", e))?;
    let mut done = 0;
    while done < size {
        let end = (done + CHUNK).min(size);
        match file.read(&mut data[done..end]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io("read", e)),
        }
    }
    let read = t.elapsed();
    if done < size {
        return Err(format!(
            "read {done} of {size} bytes from {}",
            path.display()
        ));
    }
    for (i, block) in data.chunks(CHUNK).enumerate() {
        if block != pattern.chunk(run, i) {
            return Err(format!(
                "{} reads back differently at byte {}",
                path.display(),
                i * CHUNK
            ));
        }
    }
    Ok((write, read))
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
    fs::write("/proc/sys/vm/drop_caches", "3\n").map_err(|e| format!("drop_caches: {e}"))
}

/// The offsets of the three FVE metadata blocks, from the volume header (Windows 7 and later).
fn metadata_offsets(image: &Path) -> Res<Vec<u64>> {
    let mut sector = [0u8; 512];
    File::open(image)
        .and_then(|mut f| f.read_exact(&mut sector))
        .map_err(|e| format!("cannot read {}: {e}", image.display()))?;
    if &sector[3..11] != b"-FVE-FS-" {
        return Err(format!(
            "{} has no BitLocker volume header",
            image.display()
        ));
    }
    Ok((0..3)
        .map(|i| {
            let at = 0xB0 + 8 * i;
            u64::from_le_bytes(sector[at..at + 8].try_into().unwrap_or_default())
        })
        .collect())
}

/// Offsets of the raw view's `FULL / MIB` blocks: 1 MiB apart from `RAW_START`, skipping every
/// block that touches the MiB from a metadata block on (the 64 KiB block itself and, after the
/// first, the volume-header backup: both refuse writes).
fn raw_plan(size: u64, metadata: &[u64]) -> Res<Vec<u64>> {
    let reserved = |at: u64| metadata.iter().any(|&m| at < m + MIB && m < at + MIB);
    let plan: Vec<u64> = (RAW_START / MIB..size / MIB)
        .map(|i| i * MIB)
        .filter(|&at| !reserved(at))
        .take((FULL / MIB) as usize)
        .collect();
    if (plan.len() as u64) < FULL / MIB {
        return Err(format!(
            "a {} MiB view has no room for {} MiB from {} MiB on",
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

fn report(who: &str, cell: &Cell) {
    match cell {
        Ok(s) => eprintln!(
            "  {who}: median write {:.1} MB/s, read {:.1} MB/s",
            s.write, s.read
        ),
        Err(e) => eprintln!("  {who}: n/a: {e}"),
    }
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
        fs::create_dir_all(&base).map_err(|e| format!("cannot create {}: {e}", base.display()))?;
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
    let result = run(
        Command::new(shared_dir().join("tools/make-bitlocker-stick"))
            .arg("-s")
            .arg(source)
            .args([
                "-p",
                password,
                "-t",
                fs.name(),
                "-L",
                LABEL,
                "-P",
                "mbr",
                "-o",
            ])
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
            "make-bitlocker-stick -t {} failed: {}",
            fs.name(),
            last_line(&result.stderr)
        ))
    }
}

// ---- processes ----

fn which(program: &str) -> Option<PathBuf> {
    [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ]
    .iter()
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

fn captured(mut file: &File) -> String {
    let mut bytes = Vec::new();
    let _ = file.seek(SeekFrom::Start(0));
    let _ = file.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("(no output)")
}

/// A program's complaint on one line, without mount(8)'s pointer to dmesg.
fn gist(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("dmesg(1) may have more information"))
        .collect();
    if lines.is_empty() {
        "(no output)".to_owned()
    } else {
        lines.join(" ")
    }
}

/// Runs `cmd` to its end (killed after `timeout`), `stdin` on its stdin.
fn run(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> Res<Output> {
    let name = cmd.get_program().to_string_lossy().into_owned();
    let (out, err) = (capture()?, capture()?);
    let as_stdio = |f: &File| f.try_clone().map(Stdio::from).map_err(|e| e.to_string());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(as_stdio(&out)?)
    .stderr(as_stdio(&err)?);
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {name}: {e}"))?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A child that exits without reading gets EPIPE here (SIGPIPE is ignored): fine.
        let _ = pipe.write_all(data);
    }
    let status = wait_exit(&mut child, timeout).map_err(|e| format!("{name}: {e}"))?;
    Ok(Output {
        code: status.code(),
        stdout: captured(&out),
        stderr: captured(&err),
    })
}

/// `run`, then its stdout; a failure names the program, its status and its last stderr line.
fn run_ok(cmd: &mut Command, stdin: Option<&[u8]>) -> Res<String> {
    let out = run(cmd, stdin, WAIT)?;
    if out.code == Some(0) {
        return Ok(out.stdout);
    }
    let name = Path::new(cmd.get_program())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let code = out.code.map_or("a signal".to_owned(), |c| c.to_string());
    let text = if out.stderr.trim().is_empty() {
        &out.stdout
    } else {
        &out.stderr
    };
    Err(format!("{name} exited {code}: {}", gist(text)))
}

fn pidfd(pid: u32) -> Option<OwnedFd> {
    guilocker::process::pidfd_open(nix::unistd::Pid::from_raw(pid as i32)).ok()
}

fn poll_timeout(left: Duration) -> PollTimeout {
    PollTimeout::try_from(left.as_millis().min(60_000) as i32 + 1).unwrap_or(PollTimeout::MAX)
}

/// Waits until every pidfd reports its process gone; false at the deadline.
fn wait_pidfds(fds: &[OwnedFd], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    for fd in fds {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let mut set = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
            if matches!(poll(&mut set, poll_timeout(left)), Ok(n) if n > 0) {
                break;
            }
        }
    }
    true
}

/// Waits for our child to exit (its pidfd), killing it at the deadline.
fn wait_exit(child: &mut Child, timeout: Duration) -> Res<ExitStatus> {
    if let Some(fd) = pidfd(child.id()) {
        if !wait_pidfds(&[fd], timeout) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "did not exit within {} s (killed)",
                timeout.as_secs()
            ));
        }
    }
    child.wait().map_err(|e| e.to_string())
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
                .then(|| pidfd(pid))
                .flatten()
        })
        .collect()
}

// ---- the mount table ----

struct Mount {
    point: PathBuf,
    fstype: String,
    source: String,
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push(d.iter().fold(0u8, |v, c| v.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mounts() -> Vec<Mount> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            let mut right = right.split(' ');
            Some(Mount {
                point: PathBuf::from(unescape(point)),
                fstype: right.next()?.to_owned(),
                source: unescape(right.next()?),
            })
        })
        .collect()
}

/// The top mount at `dir`.
fn mount_at(dir: &Path) -> Option<Mount> {
    mounts().into_iter().rev().find(|m| m.point == dir)
}

/// Waits until `done()`, re-checking at every mount-table change; fails at the deadline, or
/// when the process behind `exited` ends first.
fn wait_until(what: &str, exited: Option<&OwnedFd>, mut done: impl FnMut() -> bool) -> Res<()> {
    let table = File::open("/proc/self/mountinfo").map_err(|e| format!("mountinfo: {e}"))?;
    let deadline = Instant::now() + WAIT;
    loop {
        if done() {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "timed out after {} s waiting for {what}",
                WAIT.as_secs()
            ));
        }
        let mut set = vec![PollFd::new(table.as_fd(), PollFlags::POLLPRI)];
        if let Some(fd) = exited {
            set.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
        }
        let _ = poll(&mut set, poll_timeout(left));
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
    if mount_at(dir).is_none() {
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
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("bench-throughput-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        // Mountpoints are compared with the mount table, which has canonical paths.
        let dir = fs::canonicalize(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let mut left: Vec<PathBuf> = mounts()
            .into_iter()
            .map(|m| m.point)
            .filter(|p| p.starts_with(&self.0))
            .collect();
        left.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for point in left {
            eprintln!("cleanup: {} was still mounted", point.display());
            let _ = run(Command::new("umount").arg("--lazy").arg(&point), None, WAIT);
        }
        if let Ok(list) = run_ok(
            Command::new("losetup").args(["--list", "--noheadings", "--output", "NAME,BACK-FILE"]),
            None,
        ) {
            for line in list.lines() {
                if let Some((dev, file)) = line.trim().split_once(' ') {
                    if Path::new(file.trim()).starts_with(&self.0) {
                        eprintln!("cleanup: {dev} was still attached");
                        let _ = run(Command::new("losetup").args(["-d", dev]), None, WAIT);
                    }
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
            return Err(format!("losetup printed {dev:?}"));
        }
        let stick = Self { dev, partitioned };
        if partitioned {
            // Fails harmlessly when the kernel added the partition already.
            let _ = run(Command::new("partx").args(["-a", &stick.dev]), None, WAIT);
            if !Path::new(&stick.volume()).exists() {
                return Err(format!("{} did not appear", stick.volume()));
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
        let _ = run(Command::new("losetup").args(["-d", &self.dev]), None, WAIT);
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
        let mut me = Self {
            dir: dir.to_owned(),
            drivers: Vec::new(),
            done: false,
        };
        wait_until(&format!("a mount at {}", dir.display()), None, || {
            mount_at(dir).is_some()
        })?;
        me.drivers = processes_with_arg(dir);
        Ok(me)
    }

    fn describe(&self) -> String {
        mount_at(&self.dir).map_or_else(String::new, |m| format!("{} on {}", m.fstype, m.source))
    }

    fn unmount(mut self) -> Res<()> {
        self.done = true;
        self.put_away()
    }

    fn put_away(&mut self) -> Res<()> {
        unmount(&self.dir)?;
        if !wait_pidfds(&self.drivers, WAIT) {
            return Err(format!(
                "the driver of {} still runs after unmount",
                self.dir.display()
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
            .stderr(err.try_clone().map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("cannot run dislocker: {e}"))?;
        if let Some(mut pipe) = child.stdin.take() {
            let _ = pipe.write_all(password_line);
        }
        let pid = pidfd(child.id());
        let me = Self {
            child: Some(child),
            dir: dir.to_owned(),
        };
        wait_until("dislocker's FUSE mount", pid.as_ref(), || {
            mount_at(dir).is_some_and(|m| m.fstype == "fuse.dislocker")
        })
        .map_err(|e| format!("dislocker {e}: {}", last_line(&captured(&err))))?;
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
        let unmounted = if mount_at(&self.dir).is_some() {
            unmount(&self.dir)
        } else {
            // Never mounted (wrong password, a timeout): nothing to flush.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::SIGTERM,
            );
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
    fn start(root: &Path, name: &str, extra_config: &str) -> Res<Self> {
        let dir = root.join(format!("daemon-{name}"));
        let media = dir.join("media");
        fs::create_dir_all(&media)
            .map_err(|e| format!("cannot create {}: {e}", media.display()))?;
        let config = dir.join("config.toml");
        fs::write(
            &config,
            format!(
                "include_loop_devices = true\nmount_root = \"{}\"\n{extra_config}",
                media.display()
            ),
        )
        .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
        let socket = dir.join("control.sock");
        let mut child = Command::new(env!("CARGO_BIN_EXE_guilocker"))
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
            .map_err(|e| format!("cannot run the daemon: {e}"))?;
        let stderr = child.stderr.take();
        let (tx, rx) = mpsc::channel();
        let tag = name.to_owned();
        std::thread::spawn(move || {
            for line in stderr
                .into_iter()
                .flat_map(|s| BufReader::new(s).lines().map_while(Result::ok))
            {
                eprintln!("  daemon[{tag}]| {line}");
                let _ = tx.send(line);
            }
        });
        let mut daemon = Self {
            child: Some(child),
            socket,
        };
        let deadline = Instant::now() + WAIT;
        let mut last = String::new();
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains("listening on") => return Ok(daemon),
                Ok(line) => last = line,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "the daemon did not listen within {} s",
                        WAIT.as_secs()
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    if let Some(mut child) = daemon.child.take() {
                        let _ = wait_exit(&mut child, WAIT);
                    }
                    return Err(format!("daemon does not start: {}", short_error(&last)));
                }
            }
        }
    }

    /// The CLI against this daemon, as root; its stdout, or why it failed.
    fn cli(&self, args: &[&str], stdin: Option<&[u8]>) -> Res<String> {
        run_ok(
            Command::new(env!("CARGO_BIN_EXE_guilocker"))
                .args(args)
                .env("GUILOCKER_SOCKET", &self.socket),
            stdin,
        )
        .map_err(|e| format!("{}: {e}", args.first().copied().unwrap_or("")))
    }

    /// A subscription, with a read deadline.
    fn events(&self) -> Res<Events> {
        let events = Client::connect(&self.socket)
            .and_then(Client::subscribe)
            .map_err(|e| e.to_string())?;
        events
            .stream()
            .set_read_timeout(Some(WAIT))
            .map_err(|e| e.to_string())?;
        Ok(events)
    }

    fn device(&self, dev: &str) -> Res<DeviceInfo> {
        Client::connect(&self.socket)
            .and_then(|mut c| c.status())
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|d| d.device == dev)
            .ok_or_else(|| format!("the daemon does not list {dev}"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::SIGTERM,
            );
            if let Err(e) = wait_exit(&mut child, WAIT) {
                eprintln!("cleanup: the daemon {e}");
            }
        }
    }
}

/// `guilocker: config /x/config.toml: unknown field `engine`, expected one of …` →
/// `unknown field `engine``.
fn short_error(line: &str) -> String {
    let line = line.strip_prefix("guilocker: ").unwrap_or(line);
    let line = match line.strip_prefix("config ") {
        Some(rest) => rest.split_once(": ").map_or(rest, |(_, why)| why),
        None => line,
    };
    let line = line.split(", expected").next().unwrap_or(line);
    if line.is_empty() {
        "it exited".to_owned()
    } else {
        line.to_owned()
    }
}

/// A volume unlocked through the daemon: `guilocker unmount DEV` (which also locks a volume
/// opened with --no-mount) on drop, unless `lock` did it.
struct Unlocked<'a> {
    daemon: &'a Daemon,
    dev: String,
    done: bool,
}

impl<'a> Unlocked<'a> {
    fn new(daemon: &'a Daemon, dev: &str) -> Self {
        Self {
            daemon,
            dev: dev.to_owned(),
            done: false,
        }
    }

    fn lock(mut self) -> Res<()> {
        self.done = true;
        self.daemon.cli(&["unmount", &self.dev], None).map(drop)
    }
}

impl Drop for Unlocked<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // After a failed unlock there is nothing to unmount: that error is expected.
        if self.daemon.cli(&["unmount", &self.dev], None).is_err() {
            let _ = self.daemon.cli(&["unmount", &self.dev, "--force"], None);
        }
    }
}

/// Fails when status says another engine serves the volume than the row is about.
fn served_by(info: &DeviceInfo, engine: Engine) -> Res<()> {
    match info.engine.map(|e| e.as_str()) {
        Some(other) if other != engine.name() => Err(format!(
            "{}: served by {other}, not {}",
            info.device,
            engine.name()
        )),
        _ => Ok(()),
    }
}

/// Reads events until one matches; fails at the deadline or when the stream ends.
fn wait_event(
    events: &mut Events,
    what: &str,
    mut pred: impl FnMut(EventKind, &DeviceInfo) -> bool,
) -> Res<DeviceInfo> {
    let deadline = Instant::now() + WAIT;
    loop {
        if Instant::now() >= deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        match events.next() {
            Some(Ok((kind, info))) if pred(kind, &info) => return Ok(info),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("waiting for {what}: {e}")),
            None => {
                return Err(format!(
                    "the daemon closed its events while waiting for {what}"
                ))
            }
        }
    }
}
