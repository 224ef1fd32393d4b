//! `mxpolicy state export`: records as JSON for auditors and data-portability requests,
//! through the built binary, from a real SQLite store (and PostgreSQL when available).

use std::process::Command;

use mxpolicy_host::{Changes, Quota, SqliteStore, StateStore, Transaction};
use serde_json::{Value, json};

use crate::{
    stores::{TempDir, postgres_schema},
    support::binary,
};

fn fill(store: &dyn StateStore) {
    let mut c = Changes::default();
    c.kv.insert(
        "history/@alice:hs.example".into(),
        Some(br#"[{"version":"1.0","at":1767225600000}]"#.to_vec()),
    );
    c.kv.insert(
        "history/@bob:hs.example".into(),
        Some(br#"[{"version":"1.0","at":1767225601000}]"#.to_vec()),
    );
    c.kv.insert("raw".into(), Some(vec![0xff, 0x00, 0x01]));
    store
        .commit("consent", &Transaction::writes(c), &Quota::UNLIMITED)
        .unwrap();
    let mut e = Changes::default();
    e.kv.insert(
        "erasure/@alice:hs.example".into(),
        Some(br#"{"status":"pending"}"#.to_vec()),
    );
    store
        .commit("erasure", &Transaction::writes(e), &Quota::UNLIMITED)
        .unwrap();
}

fn export(args: &[&str]) -> (i32, Value, String) {
    let out = Command::new(binary())
        .args(["state", "export"])
        .args(args)
        .output()
        .unwrap();
    let doc = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        doc,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn check(url: &str) {
    let (code, doc, err) = export(&["--store", url]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        doc["plugins"]["consent"]["history/@bob:hs.example"],
        json!([{"version": "1.0", "at": 1_767_225_601_000u64}])
    );
    assert_eq!(doc["plugins"]["consent"]["raw"], json!({"hex": "ff0001"}));
    assert_eq!(
        doc["plugins"]["erasure"]["erasure/@alice:hs.example"],
        json!({"status": "pending"})
    );

    // One user's records across every plugin: what a data-portability request needs.
    let (code, doc, err) = export(&["--store", url, "--user", "@alice:hs.example"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        doc["plugins"],
        json!({
            "consent": {"history/@alice:hs.example": [{"version": "1.0", "at": 1_767_225_600_000u64}]},
            "erasure": {"erasure/@alice:hs.example": {"status": "pending"}},
        })
    );
    let (code, doc, _) = export(&["--store", url, "--plugin", "erasure"]);
    assert_eq!(code, 0);
    assert_eq!(doc["plugins"].as_object().unwrap().len(), 1);
}

#[test]
fn export_prints_records_as_json_per_plugin_and_per_user_from_sqlite() {
    let dir = TempDir::new("export");
    let path = dir.0.join("state.db");
    fill(&SqliteStore::open(&path).unwrap());
    check(&format!("sqlite:{}", path.display()));
}

#[test]
fn export_reads_postgresql_too() {
    let Some(url) = postgres_schema("export") else {
        return;
    };
    fill(&mxpolicy_host::PostgresStore::connect(&url).unwrap());
    check(&url);
}

#[test]
fn export_of_an_unknown_store_exits_2_naming_it() {
    let (code, _, err) = export(&["--store", "redis://localhost"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown store \"redis://localhost\""), "{err}");
}
