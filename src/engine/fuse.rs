//! The decrypted view over FUSE: a root-only directory holding one file, [`VIEW_FILE`].
//!
//! Requests are served by several threads, each on its own cloned /dev/fuse fd; writes of up
//! to 1 MiB arrive whole (max_write) and reads are prefetched 1 MiB ahead.

use super::volume::{with_scratch, ScratchCell, Volume};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, ReplyXattr, Request, WriteFlags,
};
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Name of the decrypted view inside the engine's mountpoint.
pub const VIEW_FILE: &str = "volume";
/// What the mount table shows as the source of the engine's FUSE mount.
pub const FS_NAME: &str = "guilocker-engine";
const MAX_IO: u32 = 1 << 20;
const FILE_INO: INodeNo = INodeNo(2);
/// Nothing about the view ever changes but through us.
const TTL: Duration = Duration::from_secs(3600);

pub struct ViewFs {
    volume: Arc<Volume>,
    created: SystemTime,
}

impl ViewFs {
    pub fn new(volume: Arc<Volume>) -> Self {
        Self {
            volume,
            created: SystemTime::now(),
        }
    }

    fn attr(&self, ino: INodeNo) -> Option<FileAttr> {
        let (kind, perm, size, nlink) = match ino {
            INodeNo::ROOT => (FileType::Directory, 0o700, 0, 2),
            FILE_INO => {
                let perm = if self.volume.read_only() {
                    0o400
                } else {
                    0o600
                };
                (FileType::RegularFile, perm, self.volume.size(), 1)
            }
            _ => return None,
        };
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: self.created,
            mtime: self.created,
            ctime: self.created,
            crtime: self.created,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            flags: 0,
            blksize: 4096,
        })
    }
}

fn errno(e: &super::EngineError) -> Errno {
    Errno::from_i32(e.errno())
}

impl Filesystem for ViewFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // The kernel may cap these lower; take what it allows.
        let _ = config
            .set_max_write(MAX_IO)
            .or_else(|n| config.set_max_write(n));
        let _ = config
            .set_max_readahead(MAX_IO)
            .or_else(|n| config.set_max_readahead(n));
        let _ = config.set_max_background(32);
        // A loop device over the view (dio=1) submits its I/O asynchronously; with async
        // direct I/O the kernel keeps several of its requests in flight, and our threads
        // work on them side by side instead of one at a time.
        let _ = config.add_capabilities(InitFlags::FUSE_ASYNC_DIO);
        // No writeback cache: it would accept a write into a reserved area and fail it only
        // at flush, with the refused bytes left readable in the cache. Writes reach us as
        // they are made (a loop device in between gathers small ones).
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.attr(FILE_INO) {
            Some(attr) if parent == INodeNo::ROOT && name == VIEW_FILE => {
                reply.entry(&TTL, &attr, Generation(0))
            }
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    /// Tools touch the view's times; it has none to keep, and its size is the volume's.
    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.attr(ino) {
            Some(_) if size.is_some_and(|s| s != self.volume.size()) => reply.error(Errno::EPERM),
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino != FILE_INO {
            return reply.error(Errno::EISDIR);
        }
        if self.volume.read_only() && flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        // Only we change the view, so its page cache stays valid from one open to the next.
        reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        thread_local! {
            static READ_BUF: ScratchCell = ScratchCell::default();
        }
        with_scratch(&READ_BUF, size.min(MAX_IO) as usize, |buf| {
            match self.volume.read_at(offset, buf) {
                Ok(n) => reply.data(&buf[..n]),
                Err(e) => {
                    log::warn!("{e}");
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.volume.write_at(offset, data) {
            Ok(n) => reply.written(n as u32),
            Err(e) => {
                if !matches!(e, super::EngineError::Reserved { .. }) {
                    log::warn!("{e}");
                }
                reply.error(errno(&e))
            }
        }
    }

    // The view has no extended attributes. ENOSYS makes the kernel stop asking for this
    // mount; fuser's default says the same but logs a warning each time (umount asks).
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.volume.sync() {
            Ok(()) => reply.ok(),
            Err(e) => {
                log::warn!("{e}");
                reply.error(errno(&e))
            }
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (INodeNo::ROOT, FileType::Directory, "."),
            (INodeNo::ROOT, FileType::Directory, ".."),
            (FILE_INO, FileType::RegularFile, VIEW_FILE),
        ];
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(ino, (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}
