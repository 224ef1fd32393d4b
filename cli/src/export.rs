//! `mxpolicy state export`: a plugin's records as JSON, for auditors and for the data
//! portability requests of the GDPR plan (a user's consent history, erasure status, media).
//!
//! Records are written as they are stored: a value that is JSON (what the SDK writes) is
//! embedded as JSON, anything else as `{"hex": "..."}`, so nothing is hidden or reinterpreted.
//! `--user` keeps the records whose key names the user (the GDPR policies key per-user records
//! by user id); records that mention a user only inside their value are not selected.

use std::io::Write;

use mxpolicy_host::{StateStore, open_store};
use serde_json::{Map, Value, json};

/// What to export.
#[derive(Debug, Clone, Default)]
pub struct ExportArgs {
    /// The store: `sqlite:PATH` or a `postgresql://` URL.
    pub store: String,
    /// One plugin instance (default: every instance with state).
    pub plugin: Option<String>,
    /// Only the records whose key names this user.
    pub user: Option<String>,
}

fn value_json(bytes: &[u8]) -> Value {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v) => v,
        Err(_) => json!({"hex": hex(bytes)}),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The export document: `{"store": ..., "plugins": {"<instance>": {"<key>": <value>}}}`.
pub fn export(store: &dyn StateStore, args: &ExportArgs) -> anyhow::Result<Value> {
    let plugins = match &args.plugin {
        Some(p) => vec![p.clone()],
        None => store.plugins()?,
    };
    let mut out = Map::new();
    for plugin in plugins {
        let mut records = Map::new();
        for key in store.list(&plugin, "", None, usize::MAX)? {
            if args
                .user
                .as_ref()
                .is_some_and(|u| !key.contains(u.as_str()))
            {
                continue;
            }
            if let Some(entry) = store.get(&plugin, &key)? {
                records.insert(key, value_json(&entry.value));
            }
        }
        out.insert(plugin, Value::Object(records));
    }
    Ok(json!({"store": args.store, "plugins": out}))
}

/// Run the command: exit 0 with the JSON document on `out`, 2 when the store cannot be read.
pub fn run(args: &ExportArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let result = open_store(&args.store)
        .map_err(anyhow::Error::from)
        .and_then(|store| export(&*store, args));
    match result {
        Ok(doc) => match serde_json::to_writer_pretty(&mut *out, &doc)
            .map_err(anyhow::Error::from)
            .and_then(|()| writeln!(out).map_err(anyhow::Error::from))
        {
            Ok(()) => 0,
            Err(e) => {
                let _ = writeln!(err, "error: cannot write the export: {e}");
                2
            }
        },
        Err(e) => {
            let _ = writeln!(err, "error: {}: {e}", args.store);
            2
        }
    }
}
