//! The on-disk compile cache: a restarted host compiles nothing again, and a cache file that
//! is tampered with, truncated or written by another host is refused and recompiled.

use std::{path::Path, sync::Arc};

use mxpolicy_host::{CompileStats, Host, MemoryHomeserver, MemoryStore, PolicySet};

use crate::{
    end_to_end::message,
    stores::TempDir,
    support::{plugin_path, server_name},
};

const COMPONENTS: [&str; 6] = [
    "consent",
    "erasure",
    "media-ownership",
    "keyword-filter",
    "scripted-a",
    "scripted-b",
];

/// Ten entries over the six components (some loaded twice under other names).
fn ten_entries(dir: &Path) -> PolicySet {
    for name in COMPONENTS {
        std::fs::copy(plugin_path(name), dir.join(format!("{name}.wasm"))).unwrap();
    }
    let mut text = String::from("[engine]\ncache_dir = \"cache\"\n");
    let consent = "{ version = \"1.0\", public_baseurl = \"https://hs.example/\", \
                   form_secret = \"s3cret-s3cret-s3cret\", policy_text = \"Be kind.\" }";
    let entries = [
        ("consent", "consent", consent.to_owned()),
        ("erasure", "erasure", "{}".into()),
        ("media", "media-ownership", "{}".into()),
        ("spam", "keyword-filter", "{ keywords = [\"spam\"] }".into()),
        ("scam", "keyword-filter", "{ keywords = [\"scam\"] }".into()),
        ("bets", "keyword-filter", "{ keywords = [\"bets\"] }".into()),
        ("a1", "scripted-a", "{}".into()),
        ("a2", "scripted-a", "{}".into()),
        ("b1", "scripted-b", "{}".into()),
        ("b2", "scripted-b", "{}".into()),
    ];
    for (instance, component, config) in entries {
        text.push_str(&format!(
            "\n[[plugin]]\ninstance = \"{instance}\"\npath = \"{component}.wasm\"\n\
             deadline_ms = 2000\nmax_concurrency = 4\nconfig = {config}\n"
        ));
    }
    let path = dir.join("set.toml");
    std::fs::write(&path, text).unwrap();
    PolicySet::from_file(&path).unwrap()
}

/// A new host (as after a restart) with the set's cache, the set applied.
fn start(set: &PolicySet) -> Host {
    let host = Host::builder(
        Arc::new(MemoryHomeserver::new(server_name())),
        Arc::new(MemoryStore::new()),
    )
    .compile_cache(set.file.parent().unwrap().join("cache"))
    .build()
    .unwrap();
    let applied = host.apply(set).unwrap();
    assert_eq!(applied.plugins.len(), 10);
    // The chain works whatever the cache did.
    let d = host.on_send(&message("@a:hs.example", "cheap spam"));
    assert_eq!(d.decided_by.as_deref(), Some("consent"), "{d:?}");
    host
}

fn entries(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    files.sort();
    files
}

#[test]
fn a_restarted_host_with_ten_plugins_compiles_none_of_them() {
    let dir = TempDir::new("cache-restart");
    let set = ten_entries(&dir.0);
    let first = start(&set);
    assert_eq!(
        first.compile_stats(),
        CompileStats {
            compiled: 6,
            memory_hits: 4,
            disk_hits: 0,
            disk_rejected: 0
        }
    );
    drop(first);
    assert_eq!(entries(&dir.0).len(), 6);
    let restarted = start(&set);
    assert_eq!(
        restarted.compile_stats(),
        CompileStats {
            compiled: 0,
            memory_hits: 4,
            disk_hits: 6,
            disk_rejected: 0
        }
    );
    let key = dir.0.join("cache/key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(key).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn a_tampered_truncated_or_foreign_cache_file_is_recompiled_never_loaded() {
    let dir = TempDir::new("cache-tamper");
    let set = ten_entries(&dir.0);
    drop(start(&set));
    let files = entries(&dir.0);
    // Tampered: one bit of the compiled code flipped.
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&files[0], &bytes).unwrap();
    // Truncated: a crash or a full disk (the host itself renames complete files into place).
    let bytes = std::fs::read(&files[1]).unwrap();
    std::fs::write(&files[1], &bytes[..bytes.len() / 3]).unwrap();
    // Foreign: a valid entry of another host's cache (another key), under the same name.
    let other = TempDir::new("cache-other");
    let other_set = ten_entries(&other.0);
    drop(start(&other_set));
    let name = files[2].file_name().unwrap();
    std::fs::copy(other.0.join("cache").join(name), &files[2]).unwrap();
    // Garbage: not a cache file at all.
    std::fs::write(&files[3], b"\0asm garbage").unwrap();

    let host = start(&set);
    assert_eq!(
        host.compile_stats(),
        CompileStats {
            compiled: 4,
            memory_hits: 4,
            disk_hits: 2,
            disk_rejected: 4
        }
    );
    drop(host);
    // The refused files were replaced by good ones.
    let again = start(&set);
    assert_eq!(again.compile_stats().disk_hits, 6);
    assert_eq!(again.compile_stats().disk_rejected, 0);
}

#[test]
fn a_cache_key_others_can_read_stops_the_host_from_starting() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("cache-key");
    let set = ten_entries(&dir.0);
    drop(start(&set));
    let key = dir.0.join("cache/key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Host::builder(
        Arc::new(MemoryHomeserver::new(server_name())),
        Arc::new(MemoryStore::new()),
    )
    .compile_cache(dir.0.join("cache"))
    .build()
    .err()
    .expect("refused");
    assert!(err.to_string().contains("must be 0600"), "{err}");
}
