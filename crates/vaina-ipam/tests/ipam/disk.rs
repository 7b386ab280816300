//! DiskStore in temp dirs: the reference's on-disk format, read and written,
//! and allocation from many threads and processes at once.

use std::collections::BTreeSet;
use std::fs;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use vaina_ipam::{DiskStore, Reservation, Store, StoreError, allocate, gc, release};

use crate::{ip, subnets};

fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

fn read(dir: &Path, name: &str) -> String {
    fs::read_to_string(dir.join(name)).unwrap()
}

fn sorted_list(store: &DiskStore) -> Vec<Reservation> {
    let mut list = store.list().unwrap();
    list.sort_by_key(|r| r.ip);
    list
}

#[test]
fn writes_the_reference_format() {
    let data = tempfile::tempdir().unwrap();
    let store = DiskStore::open(data.path(), "mynet").unwrap();
    let dir = data.path().join("mynet");
    assert_eq!(store.dir(), dir);

    {
        let _lock = store.lock().unwrap();
        assert!(store.reserve(" abc \n", "eth0", ip("10.0.0.2"), 0).unwrap());
        assert!(!store.reserve("other", "eth0", ip("10.0.0.2"), 0).unwrap());
        assert!(store.reserve("v6", "net1", ip("2001:db8:1::2"), 1).unwrap());
        assert!(
            store
                .reserve("v6", "net2", ip("2001:db8:0:0:1:0:0:1"), 1)
                .unwrap()
        );
        assert!(
            store
                .reserve("v6", "net3", ip("2001:DB8:0:1:1:1:1:1"), 1)
                .unwrap()
        );
        // An IPv4-mapped address is stored as IPv4, as Go canonicalises it.
        assert!(
            store
                .reserve("mapped", "eth0", ip("::ffff:10.0.0.7"), 0)
                .unwrap()
        );
    }

    assert_eq!(
        names(&dir),
        [
            "10.0.0.2",
            "10.0.0.7",
            "2001:db8:0:1:1:1:1:1",
            "2001:db8:1::2",
            "2001:db8::1:0:0:1",
            "last_reserved_ip.0",
            "last_reserved_ip.1",
            "lock",
        ]
        .map(String::from)
        .into()
    );
    assert_eq!(read(&dir, "10.0.0.2"), "abc\r\neth0");
    assert_eq!(read(&dir, "2001:db8:1::2"), "v6\r\nnet1");
    assert_eq!(read(&dir, "last_reserved_ip.0"), "10.0.0.7");
    assert_eq!(read(&dir, "last_reserved_ip.1"), "2001:db8:0:1:1:1:1:1");
    assert_eq!(store.last_reserved_ip(0).unwrap(), Some(ip("10.0.0.7")));
    assert_eq!(store.last_reserved_ip(7).unwrap(), None);
}

#[test]
fn reads_what_the_reference_wrote() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("shared");
    fs::create_dir_all(dir.join("10.0.0.11")).unwrap();
    fs::write(dir.join("10.0.0.3"), "ref-id\r\neth1").unwrap();
    fs::write(dir.join("10.0.0.9"), "legacy-id").unwrap();
    fs::write(dir.join("10.0.0.10"), "legacy-two\n").unwrap();
    fs::write(dir.join("fd00::a"), "v6-id\r\neth0").unwrap();
    fs::write(dir.join("last_reserved_ip.0"), "10.0.0.3").unwrap();
    fs::write(dir.join("last_reserved_ip.1"), "garbage").unwrap();
    fs::write(dir.join("lock"), "").unwrap();
    fs::write(dir.join(".reserve.1.2.tmp"), "crashed\r\neth0").unwrap();

    let store = DiskStore::open(data.path(), "shared").unwrap();
    let reservation = |addr: &str, id: &str, ifname: Option<&str>| Reservation {
        ip: ip(addr),
        id: id.into(),
        ifname: ifname.map(String::from),
    };
    assert_eq!(
        sorted_list(&store),
        [
            reservation("10.0.0.3", "ref-id", Some("eth1")),
            reservation("10.0.0.9", "legacy-id", None),
            reservation("10.0.0.10", "legacy-two", None),
            reservation("fd00::a", "v6-id", Some("eth0")),
        ]
    );
    assert_eq!(store.last_reserved_ip(0).unwrap(), Some(ip("10.0.0.3")));
    assert_eq!(store.last_reserved_ip(1).unwrap(), None);
    assert_eq!(store.get_by_id("ref-id", "eth1").unwrap(), [ip("10.0.0.3")]);
    assert!(store.get_by_id("ref-id", "eth0").unwrap().is_empty());
    assert_eq!(
        store.get_by_id("legacy-id", "anything").unwrap(),
        [ip("10.0.0.9")]
    );

    // Allocation resumes after the reference's last reservation and skips
    // its reservations.
    let got = allocate(&store, &[subnets(&["10.0.0.0/24"])], &[], "new", "eth0").unwrap();
    assert_eq!(got[0].address.addr(), ip("10.0.0.4"));
    assert_eq!(
        release(&store, "legacy-two", "eth0").unwrap(),
        [ip("10.0.0.10")]
    );
    assert!(!dir.join("10.0.0.10").exists());
}

#[test]
fn leaves_no_temporary_files() {
    let data = tempfile::tempdir().unwrap();
    let store = DiskStore::open(data.path(), "net").unwrap();
    let set = subnets(&["10.0.0.0/30"]);
    allocate(&store, std::slice::from_ref(&set), &[], "a", "eth0").unwrap();
    allocate(&store, &[set], &[], "b", "eth0").unwrap_err();
    assert_eq!(
        names(store.dir()),
        ["10.0.0.2", "last_reserved_ip.0", "lock"]
            .map(String::from)
            .into()
    );
}

// The reference's gc_test.go, against the same directory layout.
#[test]
fn gc_like_the_reference() {
    let data = tempfile::tempdir().unwrap();
    let store = DiskStore::open(data.path(), "gcnet").unwrap();
    let dir = store.dir().to_owned();
    let reserve = |addr: &str, id: &str, ifname: &str| {
        assert!(store.reserve(id, ifname, ip(addr), 0).unwrap());
    };
    let exists = |name: &str| dir.join(name).exists();

    // releases reservations that are not in the valid set
    reserve("10.0.0.1", "keep-me", "eth0");
    reserve("10.0.0.2", "gone", "eth0");
    assert_eq!(
        gc(&store, &[("keep-me", "eth0")]).unwrap(),
        [ip("10.0.0.2")]
    );
    assert!(exists("10.0.0.1") && !exists("10.0.0.2"));

    // matches on the interface as well as the container
    reserve("10.0.0.3", "twoif", "eth0");
    reserve("10.0.0.4", "twoif", "eth1");
    gc(&store, &[("keep-me", "eth0"), ("twoif", "eth0")]).unwrap();
    assert!(exists("10.0.0.3") && !exists("10.0.0.4"));

    // releases everything when the valid set is empty, and leaves the lock
    // and last_reserved_ip bookkeeping files alone
    gc(&store, &[]).unwrap();
    assert_eq!(
        names(&dir),
        ["last_reserved_ip.0", "lock"].map(String::from).into()
    );

    // understands reservations written before ifname was recorded
    fs::write(dir.join("10.0.0.9"), "legacy-id").unwrap();
    gc(&store, &[("legacy-id", "eth0")]).unwrap();
    assert!(exists("10.0.0.9"));
    // still releases a legacy reservation that is genuinely stale
    gc(&store, &[("someone-else", "eth0")]).unwrap();
    assert!(!exists("10.0.0.9"));

    // frees the address for reuse
    reserve("10.0.0.1", "leaked", "eth0");
    gc(&store, &[]).unwrap();
    assert!(
        store
            .reserve("newcomer", "eth0", ip("10.0.0.1"), 0)
            .unwrap()
    );
}

#[test]
fn network_names_cannot_leave_the_data_dir() {
    let data = tempfile::tempdir().unwrap();
    for bad in ["", ".", "..", "a/b", "../escape"] {
        assert!(
            matches!(
                DiskStore::open(data.path(), bad),
                Err(StoreError::InvalidNetworkName(_))
            ),
            "{bad:?}"
        );
    }
    fs::write(data.path().join("file"), "").unwrap();
    let err = DiskStore::open(data.path().join("file"), "x").unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("failed to create {}", data.path().join("file/x").display())
    );
}

#[test]
fn lock_excludes_other_threads_of_the_process() {
    let data = tempfile::tempdir().unwrap();
    let store = DiskStore::open(data.path(), "locked").unwrap();
    let entered = AtomicBool::new(false);
    std::thread::scope(|s| {
        let held = store.lock().unwrap();
        let waiter = s.spawn(|| {
            let _lock = store.lock().unwrap();
            entered.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !entered.load(Ordering::SeqCst),
            "second lock taken while the first is held"
        );
        drop(held);
        waiter.join().unwrap();
    });
    assert!(entered.load(Ordering::SeqCst));
}

#[test]
fn fifty_threads_get_fifty_distinct_addresses() {
    let data = tempfile::tempdir().unwrap();
    let store = DiskStore::open(data.path(), "busy").unwrap();
    let sets = [subnets(&["10.0.0.0/24"]), subnets(&["fd00::/120"])];
    let got: Vec<Vec<IpAddr>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let (store, sets) = (&store, &sets);
                s.spawn(move || {
                    allocate(store, sets, &[], &format!("c{i}"), "eth0")
                        .unwrap()
                        .iter()
                        .map(|a| a.address.addr())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let distinct: BTreeSet<IpAddr> = got.iter().flatten().copied().collect();
    assert_eq!(distinct.len(), 100);
    let list = store.list().unwrap();
    assert_eq!(list.len(), 100);
    for (i, ips) in got.iter().enumerate() {
        let mut held = store.get_by_id(&format!("c{i}"), "eth0").unwrap();
        held.sort();
        assert_eq!(&held, ips);
    }
}

const CHILD_DIR: &str = "VAINA_IPAM_TEST_CHILD_DATA_DIR";
const CHILD_TAG: &str = "VAINA_IPAM_TEST_CHILD_TAG";

/// Run by `several_processes_get_distinct_addresses` in child processes;
/// does nothing in a normal test run.
#[test]
fn child_allocates() {
    let (Some(dir), Some(tag)) = (std::env::var_os(CHILD_DIR), std::env::var_os(CHILD_TAG)) else {
        return;
    };
    let tag = tag.into_string().unwrap();
    let store = DiskStore::open(dir, "multi").unwrap();
    let sets = [subnets(&["10.0.0.0/24"])];
    std::thread::scope(|s| {
        for i in 0..10 {
            let (store, sets, tag) = (&store, &sets, &tag);
            s.spawn(move || allocate(store, sets, &[], &format!("{tag}-{i}"), "eth0").unwrap());
        }
    });
}

#[test]
fn several_processes_get_distinct_addresses() {
    let data = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..5)
        .map(|p| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "disk::child_allocates",
                    "--test-threads=1",
                    "--quiet",
                ])
                .env(CHILD_DIR, data.path())
                .env(CHILD_TAG, format!("p{p}"))
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    let store = DiskStore::open(data.path(), "multi").unwrap();
    let list = store.list().unwrap();
    let distinct: BTreeSet<IpAddr> = list.iter().map(|r| r.ip).collect();
    let owners: BTreeSet<&str> = list.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(distinct.len(), 50);
    assert_eq!(owners.len(), 50);
}
