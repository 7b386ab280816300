//! Where reservations live: [`DiskStore`], in the reference host-local
//! plugin's on-disk format, and [`MemoryStore`] for tests.
//!
//! The on-disk layout, shared with the reference plugin so both can use one
//! data dir:
//!
//! ```text
//! <dataDir>/<network>/lock                 flock(LOCK_EX) while allocating
//! <dataDir>/<network>/10.1.2.3             "<container id>\r\n<ifname>"
//! <dataDir>/<network>/2001:db8::5          (IPv6 named in RFC 5952 form, as Go prints it)
//! <dataDir>/<network>/last_reserved_ip.0   "10.1.2.3", per range set index
//! ```
//!
//! Older reference versions wrote only the container id; such reservations
//! are read with `ifname: None` and match any interface of that container.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::config::canonical_ip;

const LOCK_FILE: &str = "lock";
const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";
const LINE_BREAK: &str = "\r\n";

/// One reserved address and who holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub ip: IpAddr,
    pub id: String,
    /// `None` for the legacy format that recorded only the container id.
    pub ifname: Option<String>,
}

impl Reservation {
    /// Whether this is held by the attachment `(id, ifname)`; a legacy
    /// reservation is held by every interface of its container.
    pub fn held_by(&self, id: &str, ifname: &str) -> bool {
        self.id == id.trim() && self.ifname.as_deref().is_none_or(|i| i == ifname)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("failed to {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("network name {0:?} cannot be used as a directory name")]
    InvalidNetworkName(String),
}

/// What the allocator needs from a reservation store.
///
/// Every method other than [`Store::lock`] expects the caller to hold the
/// lock: the allocator's functions take it once around a whole operation.
pub trait Store {
    /// Held for exclusive access; dropping it unlocks.
    type Lock<'a>
    where
        Self: 'a;

    /// Blocks until this caller, among every thread and process using the
    /// same store, has exclusive access.
    fn lock(&self) -> Result<Self::Lock<'_>, StoreError>;

    /// Records `ip` for `(id, ifname)` and remembers it as the last address
    /// reserved in range set `range_id`. `false` if `ip` is already taken.
    fn reserve(
        &self,
        id: &str,
        ifname: &str,
        ip: IpAddr,
        range_id: usize,
    ) -> Result<bool, StoreError>;

    /// Where round-robin allocation in range set `range_id` resumes from.
    fn last_reserved_ip(&self, range_id: usize) -> Result<Option<IpAddr>, StoreError>;

    /// Every reservation, in no particular order.
    fn list(&self) -> Result<Vec<Reservation>, StoreError>;

    /// Frees `ip`; `false` if it was not reserved.
    fn release(&self, ip: IpAddr) -> Result<bool, StoreError>;

    /// Addresses held by `(id, ifname)`, legacy reservations of `id` included.
    fn get_by_id(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>, StoreError> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|r| r.held_by(id, ifname))
            .map(|r| r.ip)
            .collect())
    }

    /// Frees what `(id, ifname)` holds and returns it. Like the reference,
    /// legacy reservations of `id` are freed only when no reservation names
    /// `ifname`. Keeps going past a failure and reports the first one.
    fn release_by_id(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>, StoreError> {
        let held: Vec<Reservation> = self
            .list()?
            .into_iter()
            .filter(|r| r.held_by(id, ifname))
            .collect();
        let exact = held.iter().any(|r| r.ifname.is_some());
        let mut released = Vec::new();
        let mut first_error = None;
        for r in held.iter().filter(|r| r.ifname.is_some() == exact) {
            match self.release(r.ip) {
                Ok(true) => released.push(r.ip),
                Ok(false) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(released),
        }
    }
}

/// The reference plugin's on-disk store in `<data_dir>/<network>`.
///
/// Each [`Store::lock`] opens the lock file anew: flock locks belong to an
/// open file description, so one shared descriptor would not exclude the
/// threads of this process from each other.
#[derive(Debug)]
pub struct DiskStore {
    dir: PathBuf,
}

/// The exclusive flock on a [`DiskStore`]'s lock file; closing unlocks.
#[derive(Debug)]
pub struct DiskLock {
    _file: Flock<File>,
}

impl DiskStore {
    /// Creates `<data_dir>/<network>` if needed.
    pub fn open(data_dir: impl AsRef<Path>, network: &str) -> Result<DiskStore, StoreError> {
        if network.is_empty() || network == "." || network == ".." || network.contains('/') {
            return Err(StoreError::InvalidNetworkName(network.to_owned()));
        }
        let dir = data_dir.as_ref().join(network);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(io_error("create", &dir))?;
        Ok(DiskStore { dir })
    }

    /// `<data_dir>/<network>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn ip_path(&self, ip: IpAddr) -> PathBuf {
        // Display of Ipv6Addr follows RFC 5952, as Go's net.IP.String does.
        self.dir.join(ip.to_string())
    }

    fn last_reserved_path(&self, range_id: usize) -> PathBuf {
        self.dir.join(format!("{LAST_RESERVED_PREFIX}{range_id}"))
    }

    /// A name no other writer uses and that no reader takes for a
    /// reservation (it does not parse as an IP, here or in Go).
    fn temp_path(&self, purpose: &str) -> PathBuf {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join(format!(".{purpose}.{}.{seq}.tmp", std::process::id()))
    }

    /// Writes `contents` to `path` via a temporary file and a rename.
    fn replace_file(&self, path: &Path, contents: &str) -> Result<(), StoreError> {
        let temp = self.temp_path("last");
        fs::write(&temp, contents).map_err(io_error("write", &temp))?;
        fs::rename(&temp, path).map_err(|e| {
            let _ = fs::remove_file(&temp);
            io_error("rename into place", path)(e)
        })
    }
}

impl Store for DiskStore {
    type Lock<'a> = DiskLock;

    fn lock(&self) -> Result<DiskLock, StoreError> {
        let path = self.dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .map_err(io_error("open lock file", &path))?;
        loop {
            match Flock::lock(file, FlockArg::LockExclusive) {
                Ok(locked) => return Ok(DiskLock { _file: locked }),
                Err((returned, Errno::EINTR)) => file = returned,
                Err((_, errno)) => return Err(io_error("lock", &path)(errno.into())),
            }
        }
    }

    /// The reservation is written to a temporary file, then hard-linked to
    /// its final name: link(2) fails with EEXIST if the address is taken,
    /// and a crash of the plugin leaves at worst a stray temporary file,
    /// never a reservation with partial contents (the reference creates the
    /// final name with O_EXCL and then writes into it). Nothing is synced,
    /// as in the reference: after a power loss, no pod survives and CNI GC
    /// releases reservations no attachment holds.
    fn reserve(
        &self,
        id: &str,
        ifname: &str,
        ip: IpAddr,
        range_id: usize,
    ) -> Result<bool, StoreError> {
        let ip = canonical_ip(ip);
        let path = self.ip_path(ip);
        let temp = self.temp_path("reserve");
        let contents = format!("{}{LINE_BREAK}{ifname}", id.trim());
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&temp)
            .and_then(|mut f| f.write_all(contents.as_bytes()));
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            return Err(io_error("write", &temp)(e));
        }
        let linked = fs::hard_link(&temp, &path);
        let unlinked = fs::remove_file(&temp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(io_error("create", &path)(e)),
        }
        // Undo the reservation rather than return an error that leaves it held.
        let undo = |e: StoreError| {
            let _ = fs::remove_file(&path);
            Err(e)
        };
        if let Err(e) = unlinked {
            return undo(io_error("remove", &temp)(e));
        }
        if let Err(e) = self.replace_file(&self.last_reserved_path(range_id), &ip.to_string()) {
            return undo(e);
        }
        Ok(true)
    }

    /// A missing or unparsable file means no last address, as in the reference.
    fn last_reserved_ip(&self, range_id: usize) -> Result<Option<IpAddr>, StoreError> {
        let path = self.last_reserved_path(range_id);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(text.trim().parse().ok().map(canonical_ip)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("read", &path)(e)),
        }
    }

    /// Files whose name is not an IP address (lock, last_reserved_ip.N,
    /// temporary files) are not reservations.
    fn list(&self) -> Result<Vec<Reservation>, StoreError> {
        let entries = fs::read_dir(&self.dir).map_err(io_error("list", &self.dir))?;
        let mut reservations = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_error("list", &self.dir))?;
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<IpAddr>().ok())
            else {
                continue;
            };
            let path = entry.path();
            let bytes = match fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                // A directory named like an address is not a reservation.
                Err(e) if e.kind() == io::ErrorKind::IsADirectory => continue,
                Err(e) => return Err(io_error("read", &path)(e)),
            };
            let text = String::from_utf8_lossy(&bytes);
            // The reference compares the whole trimmed content with
            // "id\r\nifname", or with "id" for the legacy format.
            let (id, ifname) = match text.trim().split_once(LINE_BREAK) {
                Some((id, ifname)) => (id.to_owned(), Some(ifname.to_owned())),
                None => (text.trim().to_owned(), None),
            };
            reservations.push(Reservation {
                ip: canonical_ip(ip),
                id,
                ifname,
            });
        }
        Ok(reservations)
    }

    fn release(&self, ip: IpAddr) -> Result<bool, StoreError> {
        let path = self.ip_path(canonical_ip(ip));
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_error("remove", &path)(e)),
        }
    }
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// An in-process store for tests. Its lock excludes threads only.
#[derive(Debug, Default)]
pub struct MemoryStore {
    lock: Mutex<()>,
    state: Mutex<MemoryState>,
}

#[derive(Debug, Default)]
struct MemoryState {
    reservations: BTreeMap<IpAddr, (String, Option<String>)>,
    last_reserved: HashMap<usize, IpAddr>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Adds a reservation in the legacy id-only form, as an old reference
    /// plugin would have left it.
    pub fn insert_legacy(&self, ip: IpAddr, id: &str) {
        self.state()
            .reservations
            .insert(canonical_ip(ip), (id.trim().to_owned(), None));
    }

    fn state(&self) -> MutexGuard<'_, MemoryState> {
        // Every method leaves the maps consistent before it can panic, so a
        // poisoned mutex still guards valid state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Store for MemoryStore {
    type Lock<'a> = MutexGuard<'a, ()>;

    fn lock(&self) -> Result<MutexGuard<'_, ()>, StoreError> {
        Ok(self.lock.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn reserve(
        &self,
        id: &str,
        ifname: &str,
        ip: IpAddr,
        range_id: usize,
    ) -> Result<bool, StoreError> {
        let ip = canonical_ip(ip);
        let mut state = self.state();
        if state.reservations.contains_key(&ip) {
            return Ok(false);
        }
        state
            .reservations
            .insert(ip, (id.trim().to_owned(), Some(ifname.to_owned())));
        state.last_reserved.insert(range_id, ip);
        Ok(true)
    }

    fn last_reserved_ip(&self, range_id: usize) -> Result<Option<IpAddr>, StoreError> {
        Ok(self.state().last_reserved.get(&range_id).copied())
    }

    fn list(&self) -> Result<Vec<Reservation>, StoreError> {
        Ok(self
            .state()
            .reservations
            .iter()
            .map(|(ip, (id, ifname))| Reservation {
                ip: *ip,
                id: id.clone(),
                ifname: ifname.clone(),
            })
            .collect())
    }

    fn release(&self, ip: IpAddr) -> Result<bool, StoreError> {
        Ok(self
            .state()
            .reservations
            .remove(&canonical_ip(ip))
            .is_some())
    }
}
