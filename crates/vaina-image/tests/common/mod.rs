//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;

pub mod registry;
pub mod token;

/// Unpacking keeps ownership and makes device nodes and whiteouts, which
/// needs root; tests that unpack return early after saying why.
pub fn can_unpack() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: needs root to chown and mknod while unpacking layers");
        return false;
    }
    if !Path::new(vaina_image::testimage::BUSYBOX).exists() {
        eprintln!(
            "skipping: {} is missing (apt-get install -y busybox-static)",
            vaina_image::testimage::BUSYBOX
        );
        return false;
    }
    true
}

/// The names in `dir`, sorted; empty if it does not exist.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// Asserts the store under `root` holds nothing: no record, blob,
/// snapshot or scratch file.
pub fn assert_store_empty(root: &Path) {
    for dir in ["images", "blobs/sha256", "snapshots", "tmp", "ingest"] {
        assert_eq!(entries(&root.join(dir)), Vec::<String>::new(), "{dir}");
    }
}

/// The error and all its sources, as one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
