//! `mxpolicy check`: load a plugin without running it, and describe it: name, version, hooks,
//! imports, SHA-256, and whether a configuration validates.

use std::{io::Write, path::Path, sync::Arc};

use mxpolicy_host::{Host, MemoryHomeserver, MemoryStore, PluginSpec, ruma::owned_server_name};
use serde_json::{Value, json};

use crate::locate;

/// Largest configuration file `check --config` reads: 4 MiB. Policy configurations are a few
/// KiB; the cap only stops a path like `/dev/zero`, or a runaway file, from exhausting memory.
/// Anything but a regular file (a device, a FIFO, a socket, a directory) is refused too.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// What `check` was asked to validate.
pub struct ConfigArg {
    /// The configuration.
    pub value: Value,
    /// Where it came from (a file, `--config-json`), or `None` for the default `{}`.
    pub source: Option<String>,
}

impl ConfigArg {
    /// The configuration in a JSON file (`--config FILE`): a regular file of at most
    /// [`MAX_CONFIG_BYTES`]. Errors name the file and say what is wrong with it.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = mxpolicy_host::read_bounded_to_string(path, MAX_CONFIG_BYTES)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        Self::from_text(&text, path.display().to_string())
    }

    /// The configuration in JSON text, `source` naming where it came from (for errors and
    /// reports).
    pub fn from_text(text: &str, source: String) -> Result<Self, String> {
        match serde_json::from_str(text) {
            Ok(value) => Ok(Self {
                value,
                source: Some(source),
            }),
            Err(e) => Err(format!("{source}: malformed JSON: {e}")),
        }
    }

    /// No configuration given: `{}`, reported but not counted as a failure.
    pub fn default_empty() -> Self {
        Self {
            value: json!({}),
            source: None,
        }
    }
}

/// Exit status of `check`: 0 when every plugin loads (and, with an explicit configuration,
/// the configuration validates); 1 when an explicit configuration is refused; 2 when a plugin
/// cannot be found or loaded.
pub fn run(
    plugins: &[String],
    config: &ConfigArg,
    as_json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    // An inspection keeps nothing: in-memory state.
    let homeserver = Arc::new(MemoryHomeserver::new(owned_server_name!("hs.example")));
    let host = match Host::builder(homeserver, Arc::new(MemoryStore::new())).build() {
        Ok(h) => h,
        Err(e) => {
            let _ = writeln!(err, "error: cannot start the policy host: {e}");
            return 2;
        }
    };
    let mut status = 0;
    for (n, reference) in plugins.iter().enumerate() {
        let path = match locate::resolve(reference, Path::new("")) {
            Ok(p) => p,
            Err(e) => {
                let _ = writeln!(err, "error: {e}");
                status = 2;
                continue;
            }
        };
        let inspection = match host.inspect(PluginSpec::file(&path).config(config.value.clone())) {
            Ok(i) => i,
            Err(e) => {
                // The host's error names the file.
                let _ = writeln!(err, "error: {e}");
                status = 2;
                continue;
            }
        };
        let report = &inspection.report;
        let config_error = inspection.config.as_ref().err().map(|e| e.to_string());
        if config_error.is_some() && config.source.is_some() {
            status = status.max(1);
        }
        let checked = config.source.as_deref().unwrap_or("{} (the default)");
        if as_json {
            let line = json!({
                "file": path.display().to_string(),
                "name": report.info.name,
                "version": report.info.version,
                "hooks": report.info.hooks,
                "imports": report.imports,
                "sha256": report.sha256,
                "config": {
                    "checked": checked,
                    "valid": config_error.is_none(),
                    "error": config_error,
                },
            });
            let _ = writeln!(out, "{line}");
        } else {
            if n > 0 {
                let _ = writeln!(out);
            }
            let hooks: Vec<&str> = report.info.hooks.iter().map(|h| h.as_str()).collect();
            let _ = writeln!(out, "plugin   {} {}", report.info.name, report.info.version);
            let _ = writeln!(out, "file     {}", path.display());
            let _ = writeln!(out, "sha256   {}", report.sha256);
            let _ = writeln!(out, "hooks    {}", hooks.join(", "));
            let _ = writeln!(out, "imports  {}", report.imports.join(", "));
            match &config_error {
                None => {
                    let _ = writeln!(out, "config   valid: {checked}");
                }
                Some(e) => {
                    let _ = writeln!(out, "config   INVALID: {checked}: {e}");
                }
            }
        }
    }
    status
}
