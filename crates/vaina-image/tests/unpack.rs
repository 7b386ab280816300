//! Layer unpacking: hostile tars are refused by entry name without
//! touching anything outside the snapshot; whiteouts become overlay's
//! forms; attributes are kept.

mod common;

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::{can_unpack, chain, entries};
use vaina_image::testimage::LayerBuilder;
use vaina_image::unpack::OVERLAY_OPAQUE_XATTR;
use vaina_image::{UnpackError, unpack_layer};

/// A temp dir with `layer/` (where the tar goes) and `outside/` next to it.
struct Scene {
    dir: tempfile::TempDir,
}

impl Scene {
    fn new() -> Scene {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("layer")).unwrap();
        fs::create_dir(dir.path().join("outside")).unwrap();
        Scene { dir }
    }
    fn layer(&self) -> std::path::PathBuf {
        self.dir.path().join("layer")
    }
    fn outside(&self) -> std::path::PathBuf {
        self.dir.path().join("outside")
    }
    fn unpack(&self, build: impl FnOnce(&mut LayerBuilder)) -> Result<(), UnpackError> {
        let mut b = LayerBuilder::new();
        build(&mut b);
        unpack_layer(&b.finish().unwrap()[..], &self.layer())
    }
    fn assert_outside_untouched(&self) {
        assert_eq!(entries(&self.outside()), Vec::<String>::new());
        assert_eq!(
            entries(self.dir.path()),
            vec!["layer".to_string(), "outside".to_string()]
        );
    }
}

fn getxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid NUL-terminated strings and a buffer of the given size.
    let len =
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        return None;
    }
    buf.truncate(len as usize);
    Some(buf)
}

fn assert_rejected(result: Result<(), UnpackError>, entry: &str, why: &str) {
    let err = result.expect_err("a hostile layer must be refused");
    let msg = chain(&err);
    assert!(
        matches!(err, UnpackError::Rejected { entry: ref e, .. } if e == entry),
        "{msg}"
    );
    assert!(msg.contains(&format!("{entry:?}")), "{msg}");
    assert!(msg.contains(why), "{msg}");
}

#[test]
fn absolute_paths_are_refused() {
    if !can_unpack() {
        return;
    }
    let s = Scene::new();
    let target = s.outside().join("abs");
    let name = target.to_str().unwrap().to_owned();
    let r = s.unpack(|b| {
        b.file(&name, 0o644, b"x").unwrap();
    });
    assert_rejected(r, &name, "absolute");
    s.assert_outside_untouched();
}

#[test]
fn dotdot_is_refused() {
    if !can_unpack() {
        return;
    }
    let s = Scene::new();
    let r = s.unpack(|b| {
        b.dir("a/", 0o755).unwrap();
        b.file("a/../../outside/escape", 0o644, b"x").unwrap();
    });
    assert_rejected(r, "a/../../outside/escape", "..");
    s.assert_outside_untouched();
}

#[test]
fn writing_through_a_symlink_is_refused() {
    if !can_unpack() {
        return;
    }
    let s = Scene::new();
    // An absolute target is fine as a link (it means the container's root)…
    let outside = s.outside().to_str().unwrap().to_owned();
    let r = s.unpack(|b| {
        b.symlink("evil", &outside).unwrap();
        // …but nothing is written through it.
        b.file("evil/pwned", 0o644, b"x").unwrap();
    });
    assert_rejected(r, "evil/pwned", "symlink");
    s.assert_outside_untouched();

    let s = Scene::new();
    let r = s.unpack(|b| {
        b.dir("d/", 0o755).unwrap();
        b.symlink("d/up", "../../outside").unwrap();
        b.file("d/up/pwned", 0o644, b"x").unwrap();
    });
    assert_rejected(r, "d/up", "outside the layer root");
    s.assert_outside_untouched();

    // A symlink replaced by a directory of the same name is no way out either.
    let s = Scene::new();
    let r = s.unpack(|b| {
        b.symlink("x", "/").unwrap();
        b.dir("x/", 0o755).unwrap();
        b.file("x/inside", 0o644, b"ok").unwrap();
    });
    r.unwrap();
    assert!(s.layer().join("x/inside").is_file());
    assert!(
        !fs::symlink_metadata(s.layer().join("x"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    s.assert_outside_untouched();
}

#[test]
fn hardlinks_out_of_the_layer_are_refused() {
    if !can_unpack() {
        return;
    }
    let s = Scene::new();
    let r = s.unpack(|b| {
        b.hardlink("passwd", "/etc/passwd").unwrap();
    });
    assert_rejected(r, "passwd", "absolute");
    let r = s.unpack(|b| {
        b.hardlink("passwd", "../../../../../../etc/passwd")
            .unwrap();
    });
    assert_rejected(r, "passwd", "..");
    // A target not in this layer (it would have to come from outside).
    let r = s.unpack(|b| {
        b.hardlink("passwd", "etc/passwd").unwrap();
    });
    assert_rejected(r, "passwd", "not in this layer");
    // Through a symlink to the host's /etc.
    let r = s.unpack(|b| {
        b.symlink("etc", "/etc").unwrap();
        b.hardlink("passwd", "etc/passwd").unwrap();
    });
    assert_rejected(r, "passwd", "symlink");
    assert!(!s.layer().join("passwd").exists());
    s.assert_outside_untouched();
}

#[test]
fn attributes_are_kept() {
    if !can_unpack() {
        return;
    }
    let s = Scene::new();
    s.unpack(|b| {
        b.dir("bin/", 0o755).unwrap();
        b.file("bin/su", 0o4755, b"su").unwrap();
        b.hardlink("bin/su2", "bin/su").unwrap();
        b.dir_owned("home/app/", 0o750, 1000, 1000).unwrap();
        b.file_owned("home/app/f", 0o600, 1000, 1001, b"mine")
            .unwrap();
        b.dir("dev/", 0o755).unwrap();
        b.char_device("dev/null", 0o666, 1, 3).unwrap();
        b.fifo("dev/fifo", 0o620).unwrap();
        b.dir("tmp/", 0o1777).unwrap();
        b.file_with_xattrs(
            "cap",
            0o755,
            b"c",
            &[("user.vaina", b"yes"), ("trusted.overlay.opaque", b"y")],
        )
        .unwrap();
        b.file("later/deep/f", 0o644, b"implicit parents").unwrap();
    })
    .unwrap();
    let l = s.layer();
    let su = fs::metadata(l.join("bin/su")).unwrap();
    assert_eq!(su.permissions().mode() & 0o7777, 0o4755);
    assert_eq!(su.ino(), fs::metadata(l.join("bin/su2")).unwrap().ino());
    assert_eq!(su.mtime(), 1_704_067_200);
    let app = fs::metadata(l.join("home/app")).unwrap();
    assert_eq!(
        (app.uid(), app.gid(), app.mode() & 0o7777),
        (1000, 1000, 0o750)
    );
    assert_eq!(app.mtime(), 1_704_067_200, "directory mtimes are set last");
    let f = fs::metadata(l.join("home/app/f")).unwrap();
    assert_eq!((f.uid(), f.gid()), (1000, 1001));
    let null = fs::symlink_metadata(l.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
    assert_eq!(null.mode() & 0o7777, 0o666);
    assert!(
        fs::symlink_metadata(l.join("dev/fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert_eq!(fs::metadata(l.join("tmp")).unwrap().mode() & 0o7777, 0o1777);
    assert_eq!(
        getxattr(&l.join("cap"), "user.vaina").as_deref(),
        Some(&b"yes"[..])
    );
    assert_eq!(
        getxattr(&l.join("cap"), OVERLAY_OPAQUE_XATTR),
        None,
        "forged overlay xattr"
    );
    assert_eq!(
        fs::read(l.join("later/deep/f")).unwrap(),
        b"implicit parents"
    );
}

#[test]
fn whiteouts_take_the_overlay_forms() {
    if !can_unpack() {
        return;
    }
    let s = Scene::new();
    s.unpack(|b| {
        b.dir("etc/", 0o755).unwrap();
        b.whiteout("etc/motd").unwrap();
        b.dir("var/www/", 0o755).unwrap();
        b.opaque("var/www").unwrap();
        b.file("var/www/new.html", 0o644, b"new").unwrap();
        // Recreated in the same layer after its whiteout: an opaque dir.
        b.whiteout("data").unwrap();
        b.dir("data/", 0o755).unwrap();
        // A whiteout after a file of the same layer: the file stays.
        b.file("keep", 0o644, b"kept").unwrap();
        b.whiteout("keep").unwrap();
        // aufs bookkeeping: ignored.
        b.file(".wh..wh.plnk", 0o644, b"").unwrap();
    })
    .unwrap();
    let l = s.layer();
    let motd = fs::symlink_metadata(l.join("etc/motd")).unwrap();
    assert!(motd.file_type().is_char_device());
    assert_eq!(motd.rdev(), 0);
    assert!(!l.join("etc/.wh.motd").exists());
    assert_eq!(
        getxattr(&l.join("var/www"), OVERLAY_OPAQUE_XATTR).as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(entries(&l.join("var/www")), vec!["new.html".to_string()]);
    assert_eq!(
        getxattr(&l.join("data"), OVERLAY_OPAQUE_XATTR).as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(fs::read(l.join("keep")).unwrap(), b"kept");
    assert_eq!(
        entries(&l),
        ["data", "etc", "keep", "var"].map(String::from).to_vec()
    );
}
