//! The on-disk compile cache: compiled components kept between runs, so a homeserver that
//! restarts with ten plugins compiles none of them again.
//!
//! wasmtime's `Component::deserialize` runs whatever machine code it is given, so it must only
//! ever see bytes this host wrote. Each file carries an HMAC-SHA256 of its name and contents,
//! under a 32-byte key kept beside the cache (`key`, mode 0600, created on first use from the
//! OS's random source). A file whose MAC does not verify (tampered, truncated, written by
//! another host, or a leftover of another engine) is reported, removed and recompiled; it is
//! never deserialized. Anyone who can read the key can forge entries, which is why the key
//! file must not be readable by group or others: the cache refuses to open otherwise.
//!
//! Files are named `<sha256 of the component>-<engine compatibility hash>.cwasm`, so a
//! wasmtime upgrade or another engine configuration misses the cache instead of loading code
//! compiled for something else. They are written to a temporary file and renamed into place,
//! so a crash never leaves a half-written entry under a real name.

use std::{
    fs,
    hash::{Hash, Hasher},
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use wasmtime::{Engine, component::Component};

use crate::error::{Error, Result};

type HmacSha256 = Hmac<Sha256>;

/// First bytes of every cache file (format version 1).
const MAGIC: &[u8; 8] = b"MXPCWC1\n";
const MAC_LEN: usize = 32;
const KEY_LEN: usize = 32;
/// Largest cache file read back; compiled components are a few MiB.
const MAX_ENTRY_BYTES: u64 = 512 << 20;

/// How components were obtained, counted since the host started
/// ([`Host::compile_stats`](crate::Host::compile_stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompileStats {
    /// Components compiled by Cranelift.
    pub compiled: u64,
    /// Components found compiled in this process's memory.
    pub memory_hits: u64,
    /// Components loaded from the on-disk cache after their MAC verified.
    pub disk_hits: u64,
    /// Cache files refused (bad MAC, truncated, foreign, unreadable) and recompiled.
    pub disk_rejected: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    compiled: AtomicU64,
    memory_hits: AtomicU64,
    disk_hits: AtomicU64,
    disk_rejected: AtomicU64,
}

/// Which of the counters an event goes to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Obtained {
    Compiled,
    Memory,
    Disk,
    Rejected,
}

impl Counters {
    pub(crate) fn count(&self, how: Obtained) {
        let counter = match how {
            Obtained::Compiled => &self.compiled,
            Obtained::Memory => &self.memory_hits,
            Obtained::Disk => &self.disk_hits,
            Obtained::Rejected => &self.disk_rejected,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> CompileStats {
        CompileStats {
            compiled: self.compiled.load(Ordering::Relaxed),
            memory_hits: self.memory_hits.load(Ordering::Relaxed),
            disk_hits: self.disk_hits.load(Ordering::Relaxed),
            disk_rejected: self.disk_rejected.load(Ordering::Relaxed),
        }
    }
}

/// A directory of MAC-verified compiled components.
pub(crate) struct DiskCache {
    dir: PathBuf,
    key: [u8; KEY_LEN],
    /// The engine's compatibility hash, as hex: part of every file name.
    engine_tag: String,
}

impl DiskCache {
    /// Open (or create) the cache in `dir` for `engine`: the directory is created with mode
    /// 0700 and the key with mode 0600 if missing. A key file that group or others may read,
    /// or of the wrong length, is an error: entries signed with it cannot be trusted.
    pub(crate) fn open(dir: &Path, engine: &Engine) -> Result<Self> {
        let fail = |message: String| Error::CompileCache {
            dir: dir.display().to_string(),
            message,
        };
        fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create the directory: {e}")))?;
        let key_path = dir.join("key");
        let key = match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_path)
        {
            Ok(mut file) => {
                let mut key = [0u8; KEY_LEN];
                getrandom::fill(&mut key)
                    .map_err(|e| fail(format!("no random source for the key: {e}")))?;
                file.write_all(&key)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| fail(format!("cannot write {}: {e}", key_path.display())))?;
                key
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let meta = fs::symlink_metadata(&key_path)
                    .map_err(|e| fail(format!("cannot read {}: {e}", key_path.display())))?;
                if !meta.file_type().is_file() {
                    return Err(fail(format!(
                        "{} is not a regular file",
                        key_path.display()
                    )));
                }
                if meta.permissions().mode() & 0o077 != 0 {
                    return Err(fail(format!(
                        "{} may be read by group or others (mode {:o}); it must be 0600",
                        key_path.display(),
                        meta.permissions().mode() & 0o777
                    )));
                }
                let bytes = crate::file::read_bounded(&key_path, KEY_LEN as u64 + 1)
                    .map_err(|e| fail(format!("cannot read {}: {e}", key_path.display())))?;
                bytes.try_into().map_err(|b: Vec<u8>| {
                    fail(format!(
                        "{} holds {} bytes, not a {KEY_LEN}-byte key",
                        key_path.display(),
                        b.len()
                    ))
                })?
            }
            Err(e) => return Err(fail(format!("cannot create {}: {e}", key_path.display()))),
        };
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Self {
            dir: dir.to_owned(),
            key,
            engine_tag: format!("{:016x}", hasher.finish()),
        })
    }

    fn name(&self, sha256: &str) -> String {
        format!("{sha256}-{}.cwasm", self.engine_tag)
    }

    fn mac(&self, name: &str, payload: &[u8]) -> HmacSha256 {
        // A key of any length is valid for HMAC.
        let mut mac = match HmacSha256::new_from_slice(&self.key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        };
        mac.update(MAGIC);
        mac.update(name.as_bytes());
        mac.update(payload);
        mac
    }

    /// The component compiled from bytes with this SHA-256, if the cache holds a verified
    /// entry. `Err` carries why an existing entry was refused (it has been removed).
    pub(crate) fn get(
        &self,
        sha256: &str,
        engine: &Engine,
    ) -> std::result::Result<Option<Component>, String> {
        let name = self.name(sha256);
        let path = self.dir.join(&name);
        let bytes = match crate::file::read_bounded(&path, MAX_ENTRY_BYTES) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.discard(&path, format!("unreadable: {e}"))),
        };
        let Some(rest) = bytes.strip_prefix(MAGIC.as_slice()) else {
            return Err(self.discard(&path, "not a cache file of this format".into()));
        };
        if rest.len() < MAC_LEN {
            return Err(self.discard(&path, "truncated".into()));
        }
        let (tag, payload) = rest.split_at(MAC_LEN);
        if self.mac(&name, payload).verify_slice(tag).is_err() {
            return Err(self.discard(
                &path,
                "its MAC does not verify (tampered, truncated or written by another host)".into(),
            ));
        }
        // SAFETY: the bytes carry a valid MAC under this cache's private key over this exact
        // name and payload, so this host wrote them with `Component::serialize` for an engine
        // with the same compatibility hash; wasmtime's own header check runs as well.
        match unsafe { Component::deserialize(engine, payload) } {
            Ok(component) => Ok(Some(component)),
            Err(e) => Err(self.discard(&path, format!("wasmtime refused it: {e:#}"))),
        }
    }

    fn discard(&self, path: &Path, why: String) -> String {
        let _ = fs::remove_file(path);
        format!("compile cache entry {} refused: {why}", path.display())
    }

    /// Store `component` (compiled from bytes with this SHA-256). Failures are returned for
    /// the caller to log: the cache is an optimisation, a full disk must not stop a load.
    pub(crate) fn put(
        &self,
        sha256: &str,
        component: &Component,
    ) -> std::result::Result<(), String> {
        let name = self.name(sha256);
        let payload = component
            .serialize()
            .map_err(|e| format!("cannot serialize: {e:#}"))?;
        let tag = self.mac(&name, &payload).finalize().into_bytes();
        let mut suffix = [0u8; 8];
        getrandom::fill(&mut suffix).map_err(|e| format!("no random source: {e}"))?;
        let tmp = self
            .dir
            .join(format!(".{name}.{}.tmp", hex::encode(suffix)));
        let write = || -> std::io::Result<()> {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(MAGIC)?;
            file.write_all(&tag)?;
            file.write_all(&payload)?;
            file.sync_all()?;
            fs::rename(&tmp, self.dir.join(&name))
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            format!("cannot write {}: {e}", self.dir.join(&name).display())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> Engine {
        let mut cfg = wasmtime::Config::new();
        cfg.wasm_component_model(true);
        Engine::new(&cfg).expect("engine")
    }

    fn component(engine: &Engine) -> Component {
        Component::new(engine, wat::parse_str("(component)").expect("wat"))
            .expect("empty component")
    }

    #[test]
    fn a_key_others_may_read_is_refused() {
        let dir = std::env::temp_dir().join(format!("mxpolicy-cache-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let engine = engine();
        DiskCache::open(&dir, &engine).expect("fresh cache");
        let key = dir.join("key");
        assert_eq!(
            fs::metadata(&key).expect("key").permissions().mode() & 0o777,
            0o600
        );
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = DiskCache::open(&dir, &engine).err().expect("refused");
        assert!(err.to_string().contains("0600"), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn entries_round_trip_and_a_flipped_byte_is_refused() {
        let dir = std::env::temp_dir().join(format!("mxpolicy-cache-rt-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let engine = engine();
        let cache = DiskCache::open(&dir, &engine).expect("cache");
        let sha = "ab".repeat(32);
        assert!(cache.get(&sha, &engine).expect("no entry").is_none());
        cache.put(&sha, &component(&engine)).expect("put");
        assert!(cache.get(&sha, &engine).expect("entry").is_some());
        let path = dir.join(cache.name(&sha));
        let mut bytes = fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).expect("write");
        let Err(err) = cache.get(&sha, &engine) else {
            panic!("a tampered entry was accepted");
        };
        assert!(err.contains("MAC"), "{err}");
        assert!(!path.exists(), "a refused entry is removed");
        let _ = fs::remove_dir_all(&dir);
    }
}
