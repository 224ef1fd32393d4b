//! `mxpolicy check`: load a plugin without running it, and describe it: name, version, hooks,
//! imports, SHA-256, and whether a configuration validates.

use std::{io::Write, path::Path, sync::Arc};

use mxpolicy_host::{Host, MemoryHomeserver, MemoryStore, PluginSpec, ruma::owned_server_name};
use serde_json::{Value, json};

use crate::{
    locate,
    replay::term::{self, Align, Cell, Progress, Table, Tone, paint},
};

/// Characters of the SHA-256 the table shows (the long and JSON forms show all 64).
const SHORT_SHA256: usize = 12;

/// The format of `check`'s report on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// A table when stdout is a terminal, the long form otherwise.
    #[default]
    Auto,
    /// One row per plugin: name, version, short SHA-256, configuration, hooks.
    Table,
    /// Everything, one block of `key value` lines per plugin.
    Long,
    /// One JSON object per line and plugin.
    Json,
}

impl Format {
    /// What `Auto` means given whether stdout is a terminal: `Table` or `Long`.
    pub fn resolve(self, stdout_is_terminal: bool) -> Format {
        match self {
            Format::Auto if stdout_is_terminal => Format::Table,
            Format::Auto => Format::Long,
            other => other,
        }
    }
}

/// How `check` reports.
#[derive(Default)]
pub struct Options<'a> {
    /// The format (`Auto` is taken as `Long`: resolve it first).
    pub format: Format,
    /// Colours in the table (see `term::color_enabled`).
    pub color: bool,
    /// Where the transient "compiling NAME (N/TOTAL)..." line goes (stderr on a terminal).
    pub progress: Option<&'a mut dyn Write>,
}

/// One plugin in the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The name it reports.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Its hooks.
    pub hooks: Vec<String>,
    /// The SHA-256 of its file, hex.
    pub sha256: String,
    /// Why the configuration was refused, or `None` when it validates.
    pub config_error: Option<String>,
}

/// The table of checked plugins: the configuration checked, one row per plugin, then why each
/// refused configuration was refused. An explicit configuration refused is a failure (red); the
/// default `{}` refused is only reported (yellow). Colours only when `color`.
pub fn render_table(rows: &[Row], checked: &str, explicit: bool, color: bool) -> String {
    let mut table = Table::new(&[
        ("PLUGIN", Align::Left),
        ("VERSION", Align::Left),
        ("SHA256", Align::Left),
        ("CONFIG", Align::Left),
        ("HOOKS", Align::Left),
    ]);
    let refused_tone = if explicit { Tone::Bad } else { Tone::Warn };
    for r in rows {
        let config = match r.config_error {
            None => Cell::new("valid", Tone::Good, 8),
            Some(_) => Cell::new("refused", refused_tone, 8),
        };
        table.row(vec![
            Cell::plain(&r.name, 48),
            Cell::plain(&r.version, 24),
            Cell::plain(
                &r.sha256.chars().take(SHORT_SHA256).collect::<String>(),
                SHORT_SHA256,
            ),
            config,
            Cell::plain(&r.hooks.join(", "), 400),
        ]);
    }
    let note = if explicit {
        String::new()
    } else {
        " (a refusal is reported, not a failure)".into()
    };
    let mut out = format!("config: {}{note}\n\n", term::sanitize(checked));
    out.push_str(&table.render(color));
    let refusals: Vec<&Row> = rows.iter().filter(|r| r.config_error.is_some()).collect();
    if !refusals.is_empty() {
        out.push('\n');
    }
    for r in refusals {
        let error = term::sanitize(r.config_error.as_deref().unwrap_or_default());
        out.push_str(&paint(&term::sanitize(&r.name), Tone::Bold, color));
        out.push_str(": ");
        out.push_str(&paint(&error, refused_tone, color));
        out.push('\n');
    }
    out
}

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

/// Describe `plugins` on `out` in `options.format`: the table once every plugin is checked,
/// the long and JSON forms as each one is; errors go to `err`.
///
/// Exit status of `check`: 0 when every plugin loads (and, with an explicit configuration,
/// the configuration validates); 1 when an explicit configuration is refused; 2 when a plugin
/// cannot be found or loaded.
pub fn run(
    plugins: &[String],
    config: &ConfigArg,
    options: Options<'_>,
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
    let mut progress = Progress::new(options.progress);
    let mut rows = Vec::new();
    for (n, reference) in plugins.iter().enumerate() {
        let path = match locate::resolve(reference, Path::new("")) {
            Ok(p) => p,
            Err(e) => {
                let _ = writeln!(err, "error: {e}");
                status = 2;
                continue;
            }
        };
        progress.show(&term::compiling(&path, n + 1, plugins.len()));
        let inspected = host.inspect(PluginSpec::file(&path).config(config.value.clone()));
        progress.clear();
        let inspection = match inspected {
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
        if options.format == Format::Table {
            rows.push(Row {
                name: report.info.name.clone(),
                version: report.info.version.clone(),
                hooks: report
                    .info
                    .hooks
                    .iter()
                    .map(|h| h.as_str().into())
                    .collect(),
                sha256: report.sha256.clone(),
                config_error,
            });
        } else if options.format == Format::Json {
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
    if options.format == Format::Table && !rows.is_empty() {
        let checked = config.source.as_deref().unwrap_or("{} (the default)");
        let _ = write!(
            out,
            "{}",
            render_table(&rows, checked, config.source.is_some(), options.color)
        );
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<Row> {
        vec![
            Row {
                name: "consent".into(),
                version: "0.1.0".into(),
                hooks: vec!["on-send".into(), "on-http".into()],
                sha256: "e42fa746bb7a62c12bbbf0be0dffca654c0bd269d3921df4abf8f5ac16269871".into(),
                config_error: Some("invalid config at `version`: missing field `version`".into()),
            },
            Row {
                name: "keyword-filter".into(),
                version: "0.1.0".into(),
                hooks: vec!["on-send".into()],
                sha256: "ddd6d5".into(),
                config_error: None,
            },
        ]
    }

    #[test]
    fn the_table_names_each_plugin_and_why_a_config_is_refused() {
        let text = render_table(&rows(), "{} (the default)", false, false);
        assert!(!text.contains('\x1b'), "{text}");
        assert_eq!(
            text,
            "\
config: {} (the default) (a refusal is reported, not a failure)

PLUGIN          VERSION  SHA256        CONFIG   HOOKS
consent         0.1.0    e42fa746bb7a  refused  on-send, on-http
keyword-filter  0.1.0    ddd6d5        valid    on-send

consent: invalid config at `version`: missing field `version`
"
        );
    }

    #[test]
    fn an_explicit_refusal_is_red_and_a_default_one_yellow() {
        let explicit = render_table(&rows(), "consent.json", true, true);
        assert!(
            explicit.starts_with("config: consent.json\n\n"),
            "{explicit:?}"
        );
        assert!(explicit.contains("\x1b[1m\x1b[31mrefused"), "{explicit:?}");
        assert!(explicit.contains("\x1b[32mvalid"), "{explicit:?}");
        let default = render_table(&rows(), "{}", false, true);
        assert!(default.contains("\x1b[33mrefused"), "{default:?}");
    }

    #[test]
    fn auto_is_a_table_on_a_terminal_only() {
        assert_eq!(Format::Auto.resolve(true), Format::Table);
        assert_eq!(Format::Auto.resolve(false), Format::Long);
        assert_eq!(Format::Json.resolve(true), Format::Json);
        assert_eq!(Format::Table.resolve(false), Format::Table);
    }
}
