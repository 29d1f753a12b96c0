//! Content fingerprints of input files and directories, memoised on (size, mtime, inode).
//!
//! A `load` node is keyed by what it reads, never by the path string: the fingerprint of a file
//! is the blake3 of its bytes; of a directory, the hash of its sorted (relative path, file
//! fingerprint) list. Hashing a multi-GB checkpoint once is fine, on every run it is not, so each
//! file's hash is remembered in `fingerprints.json` next to the store and reused while its stat
//! tuple is unchanged (git-annex's inode cache idea).

use super::key::{Key, KeyBuilder};
use crate::diag::OpError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Entry {
    size: u64,
    mtime_ns: i128,
    inode: u64,
    hash: String,
}

/// File-hash memo table, persisted as JSON.
#[derive(Debug, Default)]
pub struct Fingerprinter {
    memo: BTreeMap<PathBuf, Entry>,
    file: Option<PathBuf>,
    dirty: bool,
    /// Bytes actually hashed (not served from the memo) — for tests and `smelt plan`.
    pub bytes_hashed: u64,
}

impl Fingerprinter {
    /// A memo that lives only in memory.
    pub fn in_memory() -> Fingerprinter {
        Fingerprinter::default()
    }

    /// Load the memo from `file` (missing or unreadable → empty; it is only a cache).
    pub fn open(file: &Path) -> Fingerprinter {
        let memo = std::fs::read(file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Fingerprinter {
            memo,
            file: Some(file.to_path_buf()),
            dirty: false,
            bytes_hashed: 0,
        }
    }

    /// Persist the memo atomically (temp file + rename).
    pub fn save(&mut self) -> Result<(), OpError> {
        let (Some(file), true) = (&self.file, self.dirty) else {
            return Ok(());
        };
        let bytes = serde_json::to_vec(&self.memo).map_err(|e| OpError::msg(e.to_string()))?;
        super::atomic_write(file, &bytes)?;
        self.dirty = false;
        Ok(())
    }

    /// Fingerprint of a file or directory.
    pub fn path(&mut self, path: &Path) -> Result<Key, OpError> {
        let meta = std::fs::metadata(path).map_err(|e| missing(path, e))?;
        if meta.is_dir() {
            let mut files = Vec::new();
            collect_files(path, path, &mut files)?;
            files.sort();
            let mut kb = KeyBuilder::new();
            kb.str("dir");
            for rel in files {
                let k = self.file(&path.join(&rel))?;
                kb.str(&rel.to_string_lossy());
                kb.key(&k);
            }
            Ok(kb.finish())
        } else {
            self.file(path)
        }
    }

    fn file(&mut self, path: &Path) -> Result<Key, OpError> {
        let abs = std::fs::canonicalize(path).map_err(|e| missing(path, e))?;
        let meta = std::fs::metadata(&abs).map_err(|e| missing(path, e))?;
        let stat = (
            meta.len(),
            meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            meta.ino(),
        );
        if let Some(e) = self.memo.get(&abs) {
            if (e.size, e.mtime_ns, e.inode) == stat {
                if let Some(k) = Key::from_hex(&e.hash) {
                    return Ok(k);
                }
            }
        }
        let mut f = std::fs::File::open(&abs).map_err(|e| missing(path, e))?;
        let mut h = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            self.bytes_hashed += n as u64;
        }
        let k = Key(*h.finalize().as_bytes());
        self.memo.insert(
            abs,
            Entry {
                size: stat.0,
                mtime_ns: stat.1,
                inode: stat.2,
                hash: k.hex(),
            },
        );
        self.dirty = true;
        Ok(k)
    }
}

fn missing(path: &Path, e: std::io::Error) -> OpError {
    OpError::new(
        "smelt::io::missing_file",
        format!("cannot read `{}`: {e}", path.display()),
    )
    .with_help("check the path (relative paths are resolved from the directory you run smelt in)")
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), OpError> {
    let entries = std::fs::read_dir(dir).map_err(|e| missing(dir, e))?;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let p = entry.path();
        if entry.file_type()?.is_dir() {
            collect_files(root, &p, out)?;
        } else {
            out.push(p.strip_prefix(root).unwrap_or(&p).to_path_buf());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memo_skips_rehash_and_detects_change() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.bin");
        std::fs::write(&f, b"hello").unwrap();
        let mut fp = Fingerprinter::open(&dir.path().join("fp.json"));
        let k1 = fp.path(&f).unwrap();
        assert_eq!(fp.bytes_hashed, 5);
        let k2 = fp.path(&f).unwrap();
        assert_eq!(k1, k2);
        assert_eq!(fp.bytes_hashed, 5, "second call served from the memo");
        fp.save().unwrap();
        let mut fp2 = Fingerprinter::open(&dir.path().join("fp.json"));
        assert_eq!(fp2.path(&f).unwrap(), k1);
        assert_eq!(fp2.bytes_hashed, 0, "memo persisted");
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(&f, b"hellO").unwrap();
        assert_ne!(fp2.path(&f).unwrap(), k1);
    }

    #[test]
    fn directory_fingerprint_covers_names_and_contents() {
        let d1 = tempfile::tempdir().unwrap();
        let d2 = tempfile::tempdir().unwrap();
        std::fs::write(d1.path().join("x"), b"1").unwrap();
        std::fs::write(d2.path().join("y"), b"1").unwrap();
        let mut fp = Fingerprinter::in_memory();
        assert_ne!(fp.path(d1.path()).unwrap(), fp.path(d2.path()).unwrap());
        let err = fp.path(&d1.path().join("nope")).unwrap_err();
        assert_eq!(err.code, "smelt::io::missing_file");
    }
}
