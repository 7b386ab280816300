//! Records on disk: one JSON file per object, replaced atomically (temp file, fsync,
//! rename), so a crash leaves either the old or the new record, never half of one.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn open(dir: impl Into<PathBuf>) -> Result<Store> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::failed(format!("create state dir {}", dir.display()), e))?;
        Ok(Store { dir })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    pub fn save<T: Serialize>(&self, id: &str, value: &T) -> Result<()> {
        let path = self.path(id);
        write_atomic(
            &path,
            &serde_json::to_vec_pretty(value).expect("records serialize"),
        )
    }

    pub fn remove(&self, id: &str) -> Result<()> {
        match std::fs::remove_file(self.path(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::failed(format!("remove record {id}"), e)),
        }
    }

    /// Every record; an unreadable one is reported and skipped so one bad file cannot
    /// keep the daemon from starting.
    pub fn load_all<T: DeserializeOwned>(&self) -> Result<Vec<T>> {
        let rd = std::fs::read_dir(&self.dir)
            .map_err(|e| Error::failed(format!("read {}", self.dir.display()), e))?;
        let mut out = Vec::new();
        for entry in rd.flatten() {
            let p = entry.path();
            if p.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match std::fs::read(&p).map(|b| serde_json::from_slice::<T>(&b)) {
                Ok(Ok(v)) => out.push(v),
                Ok(Err(e)) => {
                    tracing::warn!(path = %p.display(), error = %e, "skipping unreadable record")
                }
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "skipping unreadable record")
                }
            }
        }
        Ok(out)
    }
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        // Atomic by rename, without fsync: records must survive a crash of vainad (the page
        // cache does), not a power loss, after which no pod survives either and recovery
        // plus CNI GC clean up. An fsync costs ~2.4 ms here, RunPodSandbox writes 5 records.
        f.write_all(bytes)?;
        std::fs::rename(&tmp, path)
    })();
    res.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::failed(format!("write {}", path.display()), e)
    })
}
