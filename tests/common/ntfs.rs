//! NTFS sticks as Windows leaves them: marked dirty (taken out without Eject), or with a
//! hibernated Windows' `hiberfil.sys` (Fast Startup). Made on the host before a VM boots:
//! the flag is set in the decrypted volume through dislocker's view.

use super::*;

/// How Windows left an NTFS stick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeftBy {
    /// Ejected, or Windows shut down: clean.
    ShutDown,
    /// Pulled out without Eject: the volume is marked dirty.
    Pulled,
    /// Windows hibernated (Fast Startup) with it in use: `hiberfil.sys` says `HIBR`.
    Hibernated,
}

impl LeftBy {
    fn as_str(self) -> &'static str {
        match self {
            Self::ShutDown => "shut-down",
            Self::Pulled => "pulled",
            Self::Hibernated => "hibernated",
        }
    }
}

/// An NTFS BitLocker stick (from `bitlk-aes-xts-128`, password `anaconda`, `hello.txt`
/// inside) as Windows left it, copied into `dir`. Built once into [`stick_cache`].
pub fn windows_stick(dir: &Path, label: &str, table: &str, left: LeftBy) -> PathBuf {
    let name = format!("windows-{}-{table}-{label}.img", left.as_str());
    let cached = stick_cache().join(&name);
    if !cached.exists() {
        let extra: Vec<(&str, Vec<u8>)> = match left {
            LeftBy::Hibernated => vec![("hiberfil.sys", hibernated_hiberfil())],
            _ => Vec::new(),
        };
        let partial = cached.with_extension("build");
        build_stick_with(&partial, "bitlk-aes-xts-128", "ntfs", label, table, &extra);
        if left == LeftBy::Pulled {
            mark_stick_dirty(&partial, table != "none");
        }
        std::fs::rename(&partial, &cached).unwrap();
    }
    let out = dir.join(name);
    run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(&cached)
            .arg(&out),
    );
    out
}

/// `$Volume` is MFT record 3; its `$VOLUME_INFORMATION` attribute (type 0x70) holds the
/// volume flags at byte 10 of its value; VOLUME_IS_DIRTY is bit 0.
const VOLUME_RECORD: u64 = 3;
const VOLUME_INFORMATION: u32 = 0x70;
const END_OF_ATTRIBUTES: u32 = 0xffff_ffff;
const VOLUME_IS_DIRTY: u16 = 0x0001;

/// The start of a hibernation file of a Windows that hibernated (Fast Startup): its
/// signature, then what would be the image's header.
pub fn hibernated_hiberfil() -> Vec<u8> {
    let mut file = b"HIBR".to_vec();
    file.resize(64 * 1024, 0);
    file
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// The byte offsets of record 3 in `$MFT` and in `$MFTMirr` (both hold it; ntfs-3g
/// compares them), and the record size, from the boot sector.
fn volume_records(boot: &[u8]) -> ([u64; 2], usize) {
    assert_eq!(&boot[3..11], b"NTFS    ", "not an NTFS boot sector");
    let sector = u64::from(le16(boot, 0x0b));
    let per_cluster = boot[0x0d];
    let cluster = if per_cluster > 0x80 {
        1u64 << (256 - u32::from(per_cluster))
    } else {
        u64::from(per_cluster)
    } * sector;
    let mft = u64::from_le_bytes(boot[0x30..0x38].try_into().unwrap());
    let mirror = u64::from_le_bytes(boot[0x38..0x40].try_into().unwrap());
    let per_record = boot[0x40] as i8;
    let record = if per_record > 0 {
        per_record as u64 * cluster
    } else {
        1u64 << -per_record
    } as usize;
    (
        [mft, mirror].map(|lcn| lcn * cluster + VOLUME_RECORD * record as u64),
        record,
    )
}

/// Undoes (`apply = false`) or redoes (`true`) a record's update sequence array: the last
/// two bytes of each 512-byte stride hold the update sequence number on disk, and their
/// real contents sit in the array.
fn fixups(record: &mut [u8], apply: bool) {
    let (at, count) = (le16(record, 4) as usize, le16(record, 6) as usize);
    let usn = [record[at], record[at + 1]];
    for i in 1..count {
        let end = i * 512 - 2;
        let saved = at + 2 * i;
        if apply {
            record.copy_within(end..end + 2, saved);
            record[end..end + 2].copy_from_slice(&usn);
        } else {
            assert_eq!(record[end..end + 2], usn, "torn MFT record");
            record.copy_within(saved..saved + 2, end);
        }
    }
}

/// Where the volume flags sit in a record whose fixups are undone.
fn flags_at(record: &[u8]) -> usize {
    assert_eq!(&record[..4], b"FILE", "not an MFT record");
    let mut at = le16(record, 0x14) as usize;
    loop {
        let kind = le32(record, at);
        assert_ne!(kind, END_OF_ATTRIBUTES, "no $VOLUME_INFORMATION in $Volume");
        if kind == VOLUME_INFORMATION {
            return at + le16(record, at + 0x14) as usize + 10;
        }
        at += le32(record, at + 4) as usize;
    }
}

/// The volume flags of the NTFS in `view` (a decrypted volume, a file or a device).
pub fn volume_flags(view: &Path) -> u16 {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(view).unwrap();
    let mut boot = [0u8; 512];
    file.read_exact_at(&mut boot, 0).unwrap();
    let ([mft, _], size) = volume_records(&boot);
    let mut record = vec![0u8; size];
    file.read_exact_at(&mut record, mft).unwrap();
    fixups(&mut record, false);
    le16(&record, flags_at(&record))
}

/// Sets or clears VOLUME_IS_DIRTY in `$Volume` and its mirror, as Windows does while the
/// volume is in use.
pub fn set_dirty(view: &Path, dirty: bool) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::options()
        .read(true)
        .write(true)
        .open(view)
        .unwrap();
    let mut boot = [0u8; 512];
    file.read_exact_at(&mut boot, 0).unwrap();
    let (offsets, size) = volume_records(&boot);
    for offset in offsets {
        let mut record = vec![0u8; size];
        file.read_exact_at(&mut record, offset).unwrap();
        fixups(&mut record, false);
        let at = flags_at(&record);
        let flags = le16(&record, at);
        let flags = if dirty {
            flags | VOLUME_IS_DIRTY
        } else {
            flags & !VOLUME_IS_DIRTY
        };
        record[at..at + 2].copy_from_slice(&flags.to_le_bytes());
        fixups(&mut record, true);
        file.write_all_at(&record, offset).unwrap();
    }
    file.sync_all().unwrap();
}

/// Marks the NTFS inside the BitLocker stick `image` (password `anaconda`) dirty, through
/// dislocker's decrypted view.
pub fn mark_stick_dirty(image: &Path, partitioned: bool) {
    let stick = Stick::plug(image, partitioned);
    let dev = stick.volume();
    let fuse = scratch("dirty-view");
    std::fs::create_dir_all(&fuse).unwrap();
    let (code, out, err) = output_of(
        Command::new("dislocker")
            .args(["-V", &dev, "-u", "--"])
            .arg(&fuse),
        "anaconda\n",
    );
    assert_eq!(code, 0, "dislocker: {out}{err}");
    let engines = engines_for(&dev);
    set_dirty(&fuse.join("dislocker-file"), true);
    run_ok(Command::new("umount").arg(&fuse));
    // dislocker exits once unmounted; the stick goes only after it.
    wait_exit(&engines);
    drop(stick);
    let _ = std::fs::remove_dir(&fuse);
}
