//! Applying one layer tar to a snapshot directory, safe against hostile
//! layers, in the form overlayfs wants for a lower directory.
//!
//! Every path is resolved inside the snapshot by file descriptor, one
//! component at a time with `O_NOFOLLOW`, so nothing the tar creates can
//! make a later entry land outside the snapshot. What is rejected, with an
//! error naming the entry:
//! - absolute paths and paths with `..`;
//! - entries whose parent path goes through a symlink (a layer tar lists
//!   real paths; only a crafted one writes through a link);
//! - symlinks whose target, resolved lexically from the link's directory
//!   (absolute targets from the snapshot root), climbs above the root, as
//!   Docker refuses them;
//! - hardlinks whose target is absolute, has `..`, or does not exist in
//!   this layer.
//!
//! Kept as the tar says: numeric ownership (when running as root), mode
//! including setuid/setgid/sticky (set after chown, which clears them),
//! mtimes, device nodes and FIFOs, and extended attributes from PAX
//! `SCHILY.xattr.*` records on files and directories, except the
//! `trusted.overlay.*`/`user.overlay.*` ones a layer must not forge; an
//! xattr the filesystem does not support is skipped.
//!
//! Whiteouts become what containerd's overlay snapshotter writes, since the
//! snapshot serves as an overlay lowerdir: `.wh.<name>` is a 0/0 character
//! device `<name>`, `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its
//! directory, and other `.wh..wh.` names (aufs bookkeeping) are skipped. As
//! the OCI image spec says, a whiteout hides only lower layers: an entry of
//! the same layer under that name stays, and a directory stays but turns
//! opaque.
//!
//! This module writes into the directory it is given and does not clean
//! up: the store unpacks into a temporary directory and removes it when
//! this fails, so a rejected layer leaves nothing behind.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{
    FchmodatFlags, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, fstatat, futimens, makedev,
    mkdirat, mknodat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, linkat, symlinkat, unlinkat};
use tar::EntryType;

const WHITEOUT_PREFIX: &str = ".wh.";
const WHITEOUT_META_PREFIX: &str = ".wh..wh.";
const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";
const PATH_MAX: usize = libc::PATH_MAX as usize;

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The layer tries something unsafe or impossible; nothing was done for
    /// this entry.
    #[error("layer entry {entry:?} rejected: {reason}")]
    Rejected { entry: String, reason: String },
    #[error("layer entry {entry:?} has unsupported type {kind:?}")]
    UnsupportedType { entry: String, kind: u8 },
    #[error("layer entry {entry:?}: failed to {action}")]
    Entry {
        entry: String,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("failed to open snapshot directory {}", path.display())]
    Root {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to read the layer tar")]
    Read(#[source] io::Error),
}

/// Applies the uncompressed layer tar `layer` to the directory `root`,
/// which should be new and empty. Reads the tar up to its end-of-archive
/// marker, not necessarily to the end of the stream.
pub fn unpack_layer<R: Read>(layer: R, root: &Path) -> Result<(), UnpackError> {
    let root_fd = open_dir_nofollow(None, root.as_os_str()).map_err(|e| UnpackError::Root {
        path: root.to_owned(),
        source: e.into(),
    })?;
    let mut unpacker = Unpacker {
        root: root_fd,
        same_owner: nix::unistd::geteuid().is_root(),
        dir_times: Vec::new(),
        cache: None,
    };
    let mut archive = tar::Archive::new(layer);
    for entry in archive.entries().map_err(UnpackError::Read)? {
        let mut entry = entry.map_err(UnpackError::Read)?;
        unpacker.apply(&mut entry)?;
    }
    unpacker.finish()
}

/// The attributes of one entry, from its header and PAX records.
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: i64,
    xattrs: Vec<(CString, Vec<u8>)>,
}

struct Unpacker {
    root: OwnedFd,
    same_owner: bool,
    /// Directory mtimes, set last because creating entries inside a
    /// directory changes its mtime.
    dir_times: Vec<(Vec<OsString>, i64)>,
    /// The parent directory of the previous entry: tars list a directory's
    /// entries together. Dropped whenever anything is removed.
    cache: Option<(Vec<OsString>, OwnedFd)>,
}

/// The components of an entry or hardlink path, or why it is unsafe.
/// `./` prefixes, `.` and empty components are dropped; no components left
/// means the snapshot root.
fn components(raw: &[u8]) -> Result<Vec<OsString>, String> {
    if raw.is_empty() {
        return Err("empty path".into());
    }
    if raw[0] == b'/' {
        return Err("absolute path".into());
    }
    // Also bounds the depth of the recursive removal below.
    if raw.len() > PATH_MAX {
        return Err(format!("path longer than {PATH_MAX} bytes"));
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("path contains '..'".into()),
            c => out.push(OsStr::from_bytes(c).to_owned()),
        }
    }
    Ok(out)
}

/// Whether a symlink at `entry` (components) pointing at `target` would,
/// resolved lexically, leave the snapshot root.
fn symlink_escapes(entry: &[OsString], target: &[u8]) -> bool {
    let mut depth: isize = if target.first() == Some(&b'/') {
        0
    } else {
        entry.len() as isize - 1
    };
    for c in target.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => depth += 1,
        }
    }
    false
}

fn open_dir_nofollow(dir: Option<BorrowedFd<'_>>, name: &OsStr) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match dir {
        Some(dir) => openat(dir, name, flags, Mode::empty()),
        None => openat(nix::fcntl::AT_FDCWD, name, flags, Mode::empty()),
    }
}

fn is_whiteout_device(st: &nix::sys::stat::FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFCHR && st.st_rdev == 0
}

fn is_dir(st: &nix::sys::stat::FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

/// `fsetxattr(2)`: nix has no xattr calls.
fn fsetxattr(fd: BorrowedFd<'_>, name: &CString, value: &[u8]) -> io::Result<()> {
    // SAFETY: name is NUL-terminated, value is a valid buffer of its length.
    let rc = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Removes `name` in `parent` and, for a directory, everything under it,
/// never following a symlink.
fn remove_all_at(parent: BorrowedFd<'_>, name: &OsStr) -> nix::Result<()> {
    let st = fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
    if !is_dir(&st) {
        return unlinkat(parent, name, UnlinkatFlags::NoRemoveDir);
    }
    let fd = open_dir_nofollow(Some(parent), name)?;
    let children: Vec<OsString> = {
        let mut dir = nix::dir::Dir::from_fd(fd.try_clone().map_err(|_| Errno::EMFILE)?)?;
        dir.iter()
            .filter_map(|e| e.ok())
            .map(|e| OsStr::from_bytes(e.file_name().to_bytes()).to_owned())
            .filter(|n| n != "." && n != "..")
            .collect()
    };
    for child in children {
        remove_all_at(fd.as_fd(), &child)?;
    }
    unlinkat(parent, name, UnlinkatFlags::RemoveDir)
}

impl Unpacker {
    fn apply<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw_path = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw_path).into_owned();
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader) {
            return Ok(());
        }
        let reject = |reason: String| UnpackError::Rejected {
            entry: name.clone(),
            reason,
        };
        let comps = components(&raw_path).map_err(&reject)?;
        let meta = self.meta(entry, &name)?;

        let Some((last, parents)) = comps.split_last() else {
            // "./": the attributes of the snapshot root itself.
            if !kind.is_dir() {
                return Err(reject("the layer root must be a directory".into()));
            }
            let root = self
                .root
                .try_clone()
                .map_err(|e| io_err(&name, "open", e))?;
            self.set_owner_mode(root.as_fd(), &meta, &name)?;
            self.set_xattrs(root.as_fd(), &meta, &name)?;
            self.dir_times.push((Vec::new(), meta.mtime));
            return Ok(());
        };
        let last_bytes = last.as_bytes();
        let parent = self.parent(parents, true, &name)?;

        if last_bytes.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return self.whiteout(parent.as_fd(), last_bytes, &name);
        }

        // What is already there, from an earlier entry of this layer.
        let existing = match fstatat(
            parent.as_fd(),
            last.as_os_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => Some(st),
            Err(Errno::ENOENT) => None,
            Err(e) => return Err(nix_err(&name, "stat", e)),
        };
        let was_whiteout = existing.as_ref().is_some_and(is_whiteout_device);
        let keep_dir = kind.is_dir() && existing.as_ref().is_some_and(is_dir);
        if existing.is_some() && !keep_dir {
            self.cache = None;
            remove_all_at(parent.as_fd(), last)
                .map_err(|e| nix_err(&name, "replace the existing entry", e))?;
        }

        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let fd = openat(
                    parent.as_fd(),
                    last.as_os_str(),
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| nix_err(&name, "create file", e))?;
                let mut file = File::from(fd);
                io::copy(entry, &mut file).map_err(|e| io_err(&name, "write file", e))?;
                self.set_owner_mode(file.as_fd(), &meta, &name)?;
                self.set_xattrs(file.as_fd(), &meta, &name)?;
                let t = TimeSpec::new(meta.mtime, 0);
                futimens(file.as_fd(), &t, &t).map_err(|e| nix_err(&name, "set mtime", e))?;
            }
            EntryType::Directory => {
                if !keep_dir {
                    mkdirat(
                        parent.as_fd(),
                        last.as_os_str(),
                        Mode::from_bits_truncate(0o700),
                    )
                    .map_err(|e| nix_err(&name, "create directory", e))?;
                }
                let dir = open_dir_nofollow(Some(parent.as_fd()), last)
                    .map_err(|e| nix_err(&name, "open directory", e))?;
                self.set_owner_mode(dir.as_fd(), &meta, &name)?;
                self.set_xattrs(dir.as_fd(), &meta, &name)?;
                if was_whiteout {
                    // Recreated over its own whiteout: still hide the lower one.
                    self.set_opaque(dir.as_fd(), &name)?;
                }
                self.dir_times.push((comps.clone(), meta.mtime));
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| reject("symlink without a target".into()))?
                    .into_owned();
                if target.is_empty() {
                    return Err(reject("symlink with an empty target".into()));
                }
                if symlink_escapes(&comps, &target) {
                    return Err(reject(format!(
                        "symlink target {:?} points outside the layer root",
                        String::from_utf8_lossy(&target)
                    )));
                }
                symlinkat(OsStr::from_bytes(&target), parent.as_fd(), last.as_os_str())
                    .map_err(|e| nix_err(&name, "create symlink", e))?;
                self.set_link_attrs(parent.as_fd(), last, &meta, &name)?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| reject("hardlink without a target".into()))?
                    .into_owned();
                let shown = String::from_utf8_lossy(&target).into_owned();
                let target_comps = components(&target)
                    .map_err(|why| reject(format!("hardlink target {shown:?}: {why}")))?;
                let Some((target_last, target_parents)) = target_comps.split_last() else {
                    return Err(reject("hardlink to the layer root".into()));
                };
                let target_parent =
                    self.parent(target_parents, false, &name)
                        .map_err(|e| match e {
                            UnpackError::Entry { source, .. }
                                if source.kind() == io::ErrorKind::NotFound =>
                            {
                                reject(format!("hardlink target {shown:?} is not in this layer"))
                            }
                            e => e,
                        })?;
                linkat(
                    target_parent.as_fd(),
                    target_last.as_os_str(),
                    parent.as_fd(),
                    last.as_os_str(),
                    AtFlags::empty(),
                )
                .map_err(|e| match e {
                    Errno::ENOENT => {
                        reject(format!("hardlink target {shown:?} is not in this layer"))
                    }
                    e => nix_err(&name, "create hardlink", e),
                })?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (sflag, dev) = match kind {
                    EntryType::Fifo => (SFlag::S_IFIFO, 0),
                    _ => {
                        let major = entry
                            .header()
                            .device_major()
                            .ok()
                            .flatten()
                            .ok_or_else(|| reject("device without a major number".into()))?;
                        let minor = entry
                            .header()
                            .device_minor()
                            .ok()
                            .flatten()
                            .ok_or_else(|| reject("device without a minor number".into()))?;
                        let sflag = if kind == EntryType::Char {
                            SFlag::S_IFCHR
                        } else {
                            SFlag::S_IFBLK
                        };
                        (sflag, makedev(major.into(), minor.into()))
                    }
                };
                mknodat(
                    parent.as_fd(),
                    last.as_os_str(),
                    sflag,
                    Mode::from_bits_truncate(0o600),
                    dev,
                )
                .map_err(|e| nix_err(&name, "create device node", e))?;
                self.set_link_attrs(parent.as_fd(), last, &meta, &name)?;
                fchmodat(
                    parent.as_fd(),
                    last.as_os_str(),
                    Mode::from_bits_truncate(meta.mode),
                    FchmodatFlags::FollowSymlink,
                )
                .map_err(|e| nix_err(&name, "chmod", e))?;
            }
            other => {
                return Err(UnpackError::UnsupportedType {
                    entry: name,
                    kind: other.as_byte(),
                });
            }
        }
        Ok(())
    }

    fn whiteout(
        &mut self,
        parent: BorrowedFd<'_>,
        last: &[u8],
        name: &str,
    ) -> Result<(), UnpackError> {
        if last == WHITEOUT_OPAQUE.as_bytes() {
            return self.set_opaque(parent, name);
        }
        if last.starts_with(WHITEOUT_META_PREFIX.as_bytes()) {
            return Ok(());
        }
        let hidden = OsStr::from_bytes(&last[WHITEOUT_PREFIX.len()..]);
        if hidden.is_empty() {
            return Err(UnpackError::Rejected {
                entry: name.to_owned(),
                reason: "whiteout without a name".into(),
            });
        }
        match fstatat(parent, hidden, AtFlags::AT_SYMLINK_NOFOLLOW) {
            // An entry of this same layer: the whiteout hides only the lower
            // layers, which the entry already hides, unless it is a directory.
            Ok(st) if is_dir(&st) => {
                let dir = open_dir_nofollow(Some(parent), hidden)
                    .map_err(|e| nix_err(name, "open directory", e))?;
                self.set_opaque(dir.as_fd(), name)
            }
            Ok(_) => Ok(()),
            Err(Errno::ENOENT) => {
                mknodat(parent, hidden, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                    .map_err(|e| nix_err(name, "create whiteout device", e))
            }
            Err(e) => Err(nix_err(name, "stat", e)),
        }
    }

    fn set_opaque(&self, dir: BorrowedFd<'_>, name: &str) -> Result<(), UnpackError> {
        let key = CString::new(OVERLAY_OPAQUE_XATTR).expect("no NUL");
        fsetxattr(dir, &key, b"y").map_err(|e| io_err(name, "mark directory opaque", e))
    }

    /// Opens the directory `parents` below the root, each component with
    /// `O_NOFOLLOW`; with `create`, missing ones are made (0755, root).
    fn parent(
        &mut self,
        parents: &[OsString],
        create: bool,
        name: &str,
    ) -> Result<OwnedFd, UnpackError> {
        if let Some((comps, fd)) = &self.cache
            && comps.as_slice() == parents
        {
            return fd
                .try_clone()
                .map_err(|e| io_err(name, "open parent directory", e));
        }
        let mut dir = self
            .root
            .try_clone()
            .map_err(|e| io_err(name, "open parent directory", e))?;
        for (i, c) in parents.iter().enumerate() {
            let shown = || {
                parents[..=i]
                    .iter()
                    .map(|c| c.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/")
            };
            let next = match open_dir_nofollow(Some(dir.as_fd()), c) {
                Err(Errno::ENOENT) if create => {
                    mkdirat(dir.as_fd(), c.as_os_str(), Mode::from_bits_truncate(0o755))
                        .map_err(|e| nix_err(name, "create parent directory", e))?;
                    // 0755 whatever the umask: the layer did not say otherwise.
                    open_dir_nofollow(Some(dir.as_fd()), c).and_then(|fd| {
                        fchmod(fd.as_fd(), Mode::from_bits_truncate(0o755)).map(|()| fd)
                    })
                }
                r => r,
            };
            dir = match next {
                Ok(fd) => fd,
                // O_NOFOLLOW|O_DIRECTORY fails a symlink with ENOTDIR or ELOOP.
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    let symlink = fstatat(dir.as_fd(), c.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                        .is_ok_and(|st| {
                            SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK
                        });
                    let what = if symlink {
                        "is a symlink"
                    } else {
                        "is not a directory"
                    };
                    return Err(UnpackError::Rejected {
                        entry: name.to_owned(),
                        reason: format!("parent {:?} {what}", shown()),
                    });
                }
                Err(e) => return Err(nix_err(name, "open parent directory", e)),
            };
        }
        if create {
            let cached = dir
                .try_clone()
                .map_err(|e| io_err(name, "open parent directory", e))?;
            self.cache = Some((parents.to_vec(), cached));
        }
        Ok(dir)
    }

    fn meta<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
    ) -> Result<Meta, UnpackError> {
        let h = entry.header();
        let field = |r: io::Result<u64>, what: &'static str| r.map_err(|e| io_err(name, what, e));
        let mut meta = Meta {
            uid: field(h.uid(), "read uid")? as u32,
            gid: field(h.gid(), "read gid")? as u32,
            mode: field(h.mode().map(u64::from), "read mode")? as u32 & 0o7777,
            mtime: field(h.mtime(), "read mtime")? as i64,
            xattrs: Vec::new(),
        };
        let Some(pax) = entry
            .pax_extensions()
            .map_err(|e| io_err(name, "read PAX records", e))?
        else {
            return Ok(meta);
        };
        for ext in pax {
            let ext = ext.map_err(|e| io_err(name, "read PAX records", e))?;
            let Ok(key) = ext.key() else { continue };
            let value = ext.value_bytes();
            let number = || {
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.split('.').next())
                    .and_then(|v| v.parse::<i64>().ok())
            };
            match key {
                "uid" => meta.uid = number().map_or(meta.uid, |v| v as u32),
                "gid" => meta.gid = number().map_or(meta.gid, |v| v as u32),
                "mtime" => meta.mtime = number().unwrap_or(meta.mtime),
                _ => {
                    if let Some(xattr) = key.strip_prefix(PAX_XATTR_PREFIX)
                        && !xattr.starts_with("trusted.overlay.")
                        && !xattr.starts_with("user.overlay.")
                        && let Ok(c) = CString::new(xattr)
                    {
                        meta.xattrs.push((c, value.to_vec()));
                    }
                }
            }
        }
        Ok(meta)
    }

    /// chown, then chmod: chown clears setuid and setgid.
    fn set_owner_mode(
        &self,
        fd: BorrowedFd<'_>,
        meta: &Meta,
        name: &str,
    ) -> Result<(), UnpackError> {
        if self.same_owner {
            fchown(
                fd,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
            )
            .map_err(|e| nix_err(name, "chown", e))?;
        }
        fchmod(fd, Mode::from_bits_truncate(meta.mode)).map_err(|e| nix_err(name, "chmod", e))
    }

    fn set_xattrs(&self, fd: BorrowedFd<'_>, meta: &Meta, name: &str) -> Result<(), UnpackError> {
        for (key, value) in &meta.xattrs {
            match fsetxattr(fd, key, value) {
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
                r => r.map_err(|e| io_err(name, "set extended attribute", e))?,
            }
        }
        Ok(())
    }

    /// Owner and mtime of a symlink or device node, by name without following.
    fn set_link_attrs(
        &self,
        parent: BorrowedFd<'_>,
        last: &OsStr,
        meta: &Meta,
        name: &str,
    ) -> Result<(), UnpackError> {
        if self.same_owner {
            fchownat(
                parent,
                last,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| nix_err(name, "chown", e))?;
        }
        let t = TimeSpec::new(meta.mtime, 0);
        utimensat(parent, last, &t, &t, UtimensatFlags::NoFollowSymlink)
            .map_err(|e| nix_err(name, "set mtime", e))
    }

    fn finish(mut self) -> Result<(), UnpackError> {
        self.cache = None;
        for (comps, mtime) in std::mem::take(&mut self.dir_times).into_iter().rev() {
            let name = comps
                .iter()
                .map(|c| c.to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            let t = TimeSpec::new(mtime, 0);
            let Some((last, parents)) = comps.split_last() else {
                futimens(self.root.as_fd(), &t, &t).map_err(|e| nix_err(".", "set mtime", e))?;
                continue;
            };
            let parent = self.parent(parents, false, &name)?;
            match utimensat(
                parent.as_fd(),
                last.as_os_str(),
                &t,
                &t,
                UtimensatFlags::NoFollowSymlink,
            ) {
                // Replaced by a later entry of the layer.
                Err(Errno::ENOENT) => {}
                r => r.map_err(|e| nix_err(&name, "set mtime", e))?,
            }
        }
        Ok(())
    }
}

fn io_err(entry: &str, action: &'static str, source: io::Error) -> UnpackError {
    UnpackError::Entry {
        entry: entry.to_owned(),
        action,
        source,
    }
}

fn nix_err(entry: &str, action: &'static str, e: Errno) -> UnpackError {
    io_err(entry, action, e.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_reject_absolute_and_dotdot() {
        assert_eq!(
            components(b"./usr//bin/./sh").unwrap(),
            ["usr", "bin", "sh"].map(OsString::from)
        );
        assert!(components(b"./").unwrap().is_empty());
        assert!(components(b"/etc/passwd").unwrap_err().contains("absolute"));
        assert!(components(b"a/../../b").unwrap_err().contains(".."));
        assert!(components(b"").is_err());
    }

    #[test]
    fn symlink_escape_is_lexical_from_the_link_dir() {
        let at = |p: &str| components(p.as_bytes()).unwrap();
        assert!(!symlink_escapes(&at("bin/sh"), b"busybox"));
        assert!(!symlink_escapes(&at("bin/sh"), b"/bin/busybox"));
        assert!(!symlink_escapes(&at("usr/lib/x"), b"../../lib/x"));
        assert!(symlink_escapes(&at("usr/lib/x"), b"../../../lib/x"));
        assert!(symlink_escapes(&at("evil"), b".."));
        assert!(symlink_escapes(&at("evil"), b"/../etc"));
        assert!(!symlink_escapes(&at("a/b"), b"c/../../d"));
    }
}
