//! A real overlayfs mount of an imported image's lowerdirs shows the image
//! as its layers say: the whiteout deletes, the opaque directory hides.
//!
//! The mount is made on a throwaway thread inside its own mount namespace
//! (propagation private), so the host never sees it; a guard unmounts it
//! even if an assertion panics, and the namespace goes with the thread.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{can_unpack, entries};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use vaina_image::ImageStore;
use vaina_image::testimage::{MOTD, busybox_two_layer_oci_layout};

struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = umount2(&self.0, MntFlags::MNT_DETACH) {
            eprintln!("unmount {}: {e}", self.0.display());
        }
    }
}

fn mount_overlay(lower: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Mounted {
    let lowerdir = lower
        .iter()
        .map(|p| p.to_str().unwrap())
        .collect::<Vec<_>>()
        .join(":");
    let options = format!(
        "lowerdir={lowerdir},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .unwrap_or_else(|e| panic!("mount overlay {options}: {e}"));
    Mounted(target.to_owned())
}

#[test]
fn overlay_of_the_two_layer_image_applies_whiteouts() {
    if !can_unpack() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    let layout = busybox_two_layer_oci_layout(&tmp.path().join("oci"), "busybox:two").unwrap();
    let image = store.import(&layout).unwrap().remove(0);
    let lower = store.lowerdirs(&image).unwrap();
    assert_eq!(lower.len(), 2);
    // Topmost first: the whiteout layer.
    assert!(lower[0].join("etc/added").exists());
    assert_eq!(fs::read_to_string(lower[1].join("etc/motd")).unwrap(), MOTD);

    let (upper, work, merged) = (
        tmp.path().join("upper"),
        tmp.path().join("work"),
        tmp.path().join("merged"),
    );
    for d in [&upper, &work, &merged] {
        fs::create_dir(d).unwrap();
    }

    std::thread::scope(|s| {
        s.spawn(|| {
            unshare(CloneFlags::CLONE_NEWNS).expect("unshare mount namespace");
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .expect("make mounts private");
            let _mounted = mount_overlay(&lower, &upper, &work, &merged);

            assert!(
                !merged.join("etc/motd").exists(),
                "whiteout must delete motd"
            );
            assert_eq!(
                fs::read_to_string(merged.join("etc/added")).unwrap(),
                "added by layer 2\n"
            );
            assert_eq!(
                entries(&merged.join("var/www")),
                vec!["v2.html".to_string()]
            );
            assert_eq!(
                fs::read_to_string(merged.join("etc/passwd")).unwrap(),
                vaina_image::testimage::PASSWD
            );
            // The busybox of the image runs, and sees the merged tree.
            let out = Command::new(merged.join("bin/busybox"))
                .arg("ls")
                .arg(merged.join("etc"))
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            let listing = String::from_utf8(out.stdout).unwrap();
            assert!(
                listing.contains("added") && !listing.contains("motd"),
                "{listing}"
            );
        })
        .join()
        .expect("overlay checks");
    });
    // The mount lived only in the thread's namespace.
    assert_eq!(entries(&merged), Vec::<String>::new());
}
