//! A container's root filesystem: overlayfs over the image's layer snapshots.
//!
//! The classic `mount(2)` takes all options in one page (4096 bytes), which with
//! `…/snapshots/<64-hex chain id>/fs` paths fits about 40 layers. Beyond that the layers
//! are given one by one through the new mount API (`fsconfig` `lowerdir+`, Linux 6.8+),
//! which has no such limit (overlayfs itself allows 500 lower layers).

use std::io;
use std::path::{Path, PathBuf};

use rustix::fd::AsFd;
use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, fsconfig_create,
    fsconfig_set_string, fsmount, fsopen, move_mount,
};

/// Room for the options in one page, with the terminating NUL.
const MAX_OPTIONS: usize = 4095;

/// Mounts overlayfs at `target`: `lowers` topmost first, then the writable upper layer.
pub fn mount(target: &Path, lowers: &[PathBuf], upper: &Path, work: &Path) -> io::Result<()> {
    let lowerdir = lowers
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let opts = format!(
        "lowerdir={lowerdir},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    if opts.len() <= MAX_OPTIONS {
        return nix::mount::mount(
            Some("overlay"),
            target,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(opts.as_str()),
        )
        .map_err(io::Error::from);
    }
    mount_layer_by_layer(target, lowers, upper, work).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "{} layers do not fit in mount options ({} bytes), and the kernel's \
                 layer-by-layer overlay mount (Linux 6.8+) failed: {e}",
                lowers.len(),
                opts.len()
            ),
        )
    })
}

fn mount_layer_by_layer(
    target: &Path,
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
) -> io::Result<()> {
    let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
    for l in lowers {
        fsconfig_set_string(fs.as_fd(), "lowerdir+", l)?;
    }
    fsconfig_set_string(fs.as_fd(), "upperdir", upper)?;
    fsconfig_set_string(fs.as_fd(), "workdir", work)?;
    fsconfig_create(fs.as_fd())?;
    let mnt = fsmount(
        fs.as_fd(),
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::empty(),
    )?;
    move_mount(
        mnt.as_fd(),
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )?;
    Ok(())
}
