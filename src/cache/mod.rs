//! The content-addressed store (`.smelt/` by default).
//!
//! Layout: `objects/<k[0..2]>/<key>/{value.json, meta.json, …files}` and `tmp/` for objects
//! being built. An operator writes its files into a fresh temp directory; `commit` writes the
//! value and metadata there and renames the directory into place, so an object either exists
//! completely or not at all — a run killed half way loses only the node it was computing.
//! An object whose `value.json` does not parse is treated as absent and recomputed.

pub mod fingerprint;
pub mod key;
mod serial;

pub use fingerprint::Fingerprinter;
pub use key::{Key, KeyBuilder};
pub use serial::{value_from_json, value_to_json};

use crate::diag::OpError;
use crate::value::Value;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Provenance of one stored object (`meta.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    pub key: String,
    pub op: String,
    pub op_version: u32,
    /// Canonical parameter rendering, for humans (`smelt cache why`).
    pub params: String,
    pub inputs: Vec<String>,
    pub seed: Option<u64>,
    pub seconds: f64,
    pub created_unix: u64,
    pub smelt_version: String,
}

pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Open (creating if needed) a store rooted at `root`.
    pub fn open(root: &Path) -> Result<Store, OpError> {
        for sub in ["objects", "tmp"] {
            std::fs::create_dir_all(root.join(sub)).map_err(|e| {
                OpError::new(
                    "smelt::cache::open",
                    format!("cannot create store at `{}`: {e}", root.display()),
                )
                .with_help("pass a writable directory with --store or set SMELT_STORE")
            })?;
        }
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn fingerprint_file(&self) -> PathBuf {
        self.root.join("fingerprints.json")
    }

    pub fn object_dir(&self, key: &Key) -> PathBuf {
        let hex = key.hex();
        self.root.join("objects").join(&hex[..2]).join(hex)
    }

    /// The stored value of `key`, if a complete object exists.
    pub fn lookup(&self, key: &Key) -> Option<Value> {
        let dir = self.object_dir(key);
        let bytes = std::fs::read(dir.join("value.json")).ok()?;
        let json: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        value_from_json(&json, &dir).ok()
    }

    pub fn contains(&self, key: &Key) -> bool {
        self.lookup(key).is_some()
    }

    /// A fresh scratch directory for computing `key`.
    pub fn begin(&self, key: &Key) -> Result<PathBuf, OpError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir =
            self.root
                .join("tmp")
                .join(format!("{}-{}-{nanos}", key.short(), std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Finish an object: write `value.json` + `meta.json` into `tmp` and move it into place.
    /// Returns the value as read back from its final location.
    pub fn commit(
        &self,
        key: &Key,
        tmp: &Path,
        value: &Value,
        meta: &Meta,
    ) -> Result<Value, OpError> {
        let json = value_to_json(value, tmp)?;
        let write = |name: &str, v: &serde_json::Value| -> Result<(), OpError> {
            let bytes = serde_json::to_vec_pretty(v).map_err(|e| OpError::msg(e.to_string()))?;
            atomic_write(&tmp.join(name), &bytes)
        };
        write(
            "meta.json",
            &serde_json::to_value(meta).map_err(|e| OpError::msg(e.to_string()))?,
        )?;
        // value.json last: its presence marks the object complete.
        write("value.json", &json)?;
        sync_dir(tmp);
        let dest = self.object_dir(key);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if dest.exists() {
            if self.lookup(key).is_some() {
                // Another process finished the same object first; its content is equivalent.
                let _ = std::fs::remove_dir_all(tmp);
            } else {
                // A damaged object: replace it.
                std::fs::remove_dir_all(&dest)?;
                std::fs::rename(tmp, &dest)?;
            }
        } else if let Err(e) = std::fs::rename(tmp, &dest) {
            if self.lookup(key).is_none() {
                return Err(e.into());
            }
            let _ = std::fs::remove_dir_all(tmp);
        }
        if let Some(parent) = dest.parent() {
            sync_dir(parent);
        }
        self.lookup(key).ok_or_else(|| {
            OpError::new(
                "smelt::cache::commit",
                format!("object {} vanished after commit", key.short()),
            )
        })
    }

    /// Drop a scratch directory (after a failed operator).
    pub fn abort(&self, tmp: &Path) {
        let _ = std::fs::remove_dir_all(tmp);
    }

    pub fn meta(&self, key: &Key) -> Option<Meta> {
        let bytes = std::fs::read(self.object_dir(key).join("meta.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// All complete objects' metadata, sorted by creation time.
    pub fn list(&self) -> Vec<Meta> {
        let mut out = Vec::new();
        let Ok(prefixes) = std::fs::read_dir(self.root.join("objects")) else {
            return out;
        };
        for p in prefixes.flatten() {
            let Ok(objs) = std::fs::read_dir(p.path()) else {
                continue;
            };
            for o in objs.flatten() {
                if let Some(k) = Key::from_hex(&o.file_name().to_string_lossy()) {
                    if let (Some(m), true) = (self.meta(&k), o.path().join("value.json").exists()) {
                        out.push(m);
                    }
                }
            }
        }
        out.sort_by(|a, b| (a.created_unix, &a.key).cmp(&(b.created_unix, &b.key)));
        out
    }

    /// Remove every object not in `keep` and all leftover scratch directories.
    /// Returns (objects removed, bytes freed).
    pub fn gc(&self, keep: &std::collections::HashSet<String>) -> Result<(usize, u64), OpError> {
        let mut removed = 0;
        let mut freed = 0;
        for m in self.list() {
            if !keep.contains(&m.key) {
                if let Some(k) = Key::from_hex(&m.key) {
                    let dir = self.object_dir(&k);
                    freed += dir_size(&dir);
                    std::fs::remove_dir_all(&dir)?;
                    removed += 1;
                }
            }
        }
        if let Ok(tmps) = std::fs::read_dir(self.root.join("tmp")) {
            for t in tmps.flatten() {
                freed += dir_size(&t.path());
                let _ = std::fs::remove_dir_all(t.path());
            }
        }
        Ok((removed, freed))
    }
}

/// Write a file atomically: temp file in the same directory, fsync, rename.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), OpError> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default(),
        std::process::id()
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

pub fn dir_size(p: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if meta.is_dir() {
        std::fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| dir_size(&e.path())).sum())
            .unwrap_or(0)
    } else {
        meta.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(key: &Key) -> Meta {
        Meta {
            key: key.hex(),
            op: "test.op".into(),
            op_version: 1,
            params: String::new(),
            inputs: vec![],
            seed: None,
            seconds: 0.0,
            created_unix: 0,
            smelt_version: "test".into(),
        }
    }

    #[test]
    fn commit_then_lookup_and_gc() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = Key::of_bytes(b"x");
        assert!(store.lookup(&key).is_none());
        let tmp = store.begin(&key).unwrap();
        let v = store
            .commit(&key, &tmp, &Value::Float(0.25), &meta(&key))
            .unwrap();
        assert_eq!(v, Value::Float(0.25));
        assert_eq!(store.lookup(&key), Some(Value::Float(0.25)));
        assert_eq!(store.list().len(), 1);
        let (n, _) = store.gc(&Default::default()).unwrap();
        assert_eq!(n, 1);
        assert!(store.lookup(&key).is_none());
    }

    #[test]
    fn corrupt_value_is_treated_as_missing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = Key::of_bytes(b"y");
        let tmp = store.begin(&key).unwrap();
        store
            .commit(&key, &tmp, &Value::Int(3), &meta(&key))
            .unwrap();
        std::fs::write(store.object_dir(&key).join("value.json"), b"{trunc").unwrap();
        assert!(store.lookup(&key).is_none());
        // Recomputing replaces the damaged object.
        let tmp = store.begin(&key).unwrap();
        store
            .commit(&key, &tmp, &Value::Int(3), &meta(&key))
            .unwrap();
        assert_eq!(store.lookup(&key), Some(Value::Int(3)));
    }
}
