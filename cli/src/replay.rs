//! `mxpolicy replay`: run a scenario's steps through the real host and the real compiled
//! plugins, with the simulated homeserver in front; print one JSON line per step; compare each
//! step's `expect`.
//!
//! Every plugin gets a generous deadline (1 s unless the scenario says otherwise: replay is
//! about decisions, not latency) and the host's default instance mode (a fresh instance per
//! call). State lives in an in-memory store for the length of one scenario file.

mod accounts;
mod media;
mod output;
mod plugins;
mod rooms;
mod runner;
mod serve;
mod step;
pub mod table;
pub mod term;

use std::{collections::BTreeMap, io::Write, path::Path, sync::Arc, time::Duration};

use anyhow::Context as _;
use mxpolicy_host::{Host, ManualClock, MemoryStore};
use serde_json::json;

use self::{
    output::{Line, describe, judge, print_failure, truncate_body},
    runner::Runner,
};
use crate::{scenario, sim::World};

/// Deadline of a hook call in replay, unless the scenario sets `deadline_ms`.
pub const REPLAY_DEADLINE: Duration = Duration::from_secs(1);

/// The clock's start when a scenario does not set it: 2026-01-01T00:00:00Z.
pub const DEFAULT_START_MS: u64 = 1_767_225_600_000;

/// How one scenario file went (bad input is an `Err` of [`run_file`] instead).
#[derive(Debug)]
pub struct FileResult {
    /// Steps run.
    pub steps: usize,
    /// Labels of the steps whose expectations failed.
    pub failed: Vec<String>,
}

/// Where reports go.
pub struct Output<'a> {
    /// JSON lines (stdout), or `None` for `--quiet`.
    pub lines: Option<&'a mut dyn Write>,
    /// Human-readable failures (stderr).
    pub human: &'a mut dyn Write,
}

/// What a run for people at a terminal adds to [`Output`]; the default adds nothing.
#[derive(Default)]
pub struct Interactive<'a> {
    /// Receives the header and one row per step, for the readable table (`--format table`).
    pub table: Option<&'a mut table::FileTable>,
    /// Where the transient "compiling NAME (N/TOTAL)..." line goes while the plugins compile
    /// (stderr, when it is a terminal).
    pub progress: Option<&'a mut dyn Write>,
}

/// The format of `replay`'s steps on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// A table when stdout is a terminal, JSON lines otherwise.
    #[default]
    Auto,
    /// The readable table.
    Table,
    /// One JSON line per step, with a header and a summary line per file.
    Json,
}

impl Format {
    /// What `Auto` means given whether stdout is a terminal: `Table` or `Json`.
    pub fn resolve(self, stdout_is_terminal: bool) -> Format {
        match self {
            Format::Auto if stdout_is_terminal => Format::Table,
            Format::Auto => Format::Json,
            other => other,
        }
    }
}

/// Run one scenario file. `Err` is bad input (exit 2): unreadable or malformed file, unknown
/// user, room or event, a plugin that cannot be found or loaded.
pub fn run_file(path: &Path, out: &mut Output<'_>) -> anyhow::Result<FileResult> {
    run_file_with(path, out, Interactive::default())
}

/// [`run_file`], also filling a table and showing the plugins' compilation as `extra` asks.
pub fn run_file_with(
    path: &Path,
    out: &mut Output<'_>,
    mut extra: Interactive<'_>,
) -> anyhow::Result<FileResult> {
    let scenario = scenario::load(path)?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let world = Arc::new(World::new(scenario.server_name.clone()));
    let clock = Arc::new(ManualClock::new(DEFAULT_START_MS));
    let host = Host::builder(world.clone(), Arc::new(MemoryStore::new()))
        .clock(clock.clone())
        .build()
        .context("cannot start the policy host")?;
    let mut runner = Runner {
        world,
        host,
        clock,
        dir,
        loaded: BTreeMap::new(),
    };
    let mut plugins = Vec::new();
    let mut progress = term::Progress::new(extra.progress.take());
    let total = scenario.plugins.len();
    for (i, entry) in scenario.plugins.iter().enumerate() {
        let report = runner
            .load(entry, &mut |file| {
                progress.show(&term::compiling(file, i + 1, total));
            })
            .map_err(|e| anyhow::anyhow!("{}: plugins[{i}]: {e}", path.display()))?;
        plugins.push(report);
    }
    progress.clear();
    if let Some(t) = extra.table.as_deref_mut() {
        let field = |p: &serde_json::Value, k: &str| {
            p.get(k)
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        *t = table::FileTable {
            scenario: path.display().to_string(),
            description: scenario.description.clone(),
            server_name: scenario.server_name.to_string(),
            plugins: plugins
                .iter()
                .map(|p| (field(p, "name"), field(p, "version")))
                .collect(),
            rows: Vec::new(),
        };
    }
    if let Some(lines) = out.lines.as_deref_mut() {
        let mut header = json!({
            "scenario": path.display().to_string(),
            "server_name": scenario.server_name.as_str(),
            "plugins": plugins,
        });
        if let (Some(d), Some(h)) = (&scenario.description, header.as_object_mut()) {
            h.insert("description".into(), d.as_str().into());
        }
        let _ = writeln!(lines, "{header}");
    }

    let mut result = FileResult {
        steps: 0,
        failed: Vec::new(),
    };
    for (i, step) in scenario.steps.iter().enumerate() {
        let label = format!("step {i} ({})", describe(&step.op));
        let mut report = runner.step(i, step).map_err(|e| {
            let (line, column) = scenario.position(i);
            anyhow::anyhow!(
                "{}:{line}:{column}: step {i} ({}): {e}",
                path.display(),
                step.op.name()
            )
        })?;
        result.steps += 1;
        let mismatches = judge(step, &mut report);
        if !mismatches.is_empty() {
            print_failure(out.human, path, &label, step.note.as_deref(), &mismatches);
            result.failed.push(label);
        }
        truncate_body(&mut report);
        if let Some(t) = extra.table.as_deref_mut() {
            t.rows.push(table::StepRow::new(i, step, &report));
        }
        if let Some(lines) = out.lines.as_deref_mut() {
            let line = Line {
                step: i,
                op: step.op.name(),
                rest: &report,
            };
            if let Ok(text) = serde_json::to_string(&line) {
                let _ = writeln!(lines, "{text}");
            }
        }
    }
    if let Some(lines) = out.lines.as_deref_mut() {
        let summary = json!({
            "scenario": path.display().to_string(),
            "passed": result.failed.is_empty(),
            "steps": result.steps,
            "failed": result.failed,
        });
        let _ = writeln!(lines, "{summary}");
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    /// Replay `scenario` (no plugins: the simulation's own behaviour) and return the JSON
    /// lines, the human output and the result.
    fn replay(scenario: &str) -> (Vec<Value>, String, anyhow::Result<FileResult>) {
        let dir = std::env::temp_dir().join(format!(
            "mxpolicy-replay-unit-{}-{}",
            std::process::id(),
            scenario.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.json");
        std::fs::write(&path, scenario).unwrap();
        let (mut lines, mut human) = (Vec::new(), Vec::new());
        let result = run_file(
            &path,
            &mut Output {
                lines: Some(&mut lines),
                human: &mut human,
            },
        );
        std::fs::remove_dir_all(&dir).ok();
        let lines = String::from_utf8(lines)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (lines, String::from_utf8(human).unwrap(), result)
    }

    #[test]
    fn auto_is_a_table_on_a_terminal_only() {
        assert_eq!(Format::Auto.resolve(true), Format::Table);
        assert_eq!(Format::Auto.resolve(false), Format::Json);
        assert_eq!(Format::Json.resolve(true), Format::Json);
        assert_eq!(Format::Table.resolve(false), Format::Table);
    }

    #[test]
    fn the_table_gets_the_same_steps_as_the_json_lines() {
        let dir =
            std::env::temp_dir().join(format!("mxpolicy-replay-table-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.json");
        std::fs::write(
            &path,
            r#"{"description": "two steps", "steps": [
              {"op": "register", "user": "@a:hs.example"},
              {"op": "create_room", "room": "!r:hs.example", "creator": "@a:hs.example"},
              {"op": "send", "room": "!r:hs.example", "sender": "@a:hs.example",
               "note": "wrong", "expect": {"verdict": "deny"}}
            ]}"#,
        )
        .unwrap();
        let mut human = Vec::new();
        let mut rows = table::FileTable::default();
        let result = run_file_with(
            &path,
            &mut Output {
                lines: None,
                human: &mut human,
            },
            Interactive {
                table: Some(&mut rows),
                progress: None,
            },
        )
        .unwrap();
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(result.steps, 3);
        assert_eq!(rows.description.as_deref(), Some("two steps"));
        assert_eq!(rows.server_name, "hs.example");
        assert_eq!(rows.rows.len(), 3);
        let send = &rows.rows[2];
        assert_eq!(
            (send.op, send.subject.as_str(), send.outcome.as_str()),
            ("send", "@a:hs.example in !r:hs.example", "allow")
        );
        assert_eq!(
            (send.actions, send.checked, send.ok),
            (Some(0), true, false)
        );
        assert_eq!(send.note.as_deref(), Some("wrong"));
        let text = table::render(&rows, false);
        assert!(text.contains("  FAIL   wrong\n"), "{text}");
        assert!(!text.contains('\x1b'), "{text}");
    }

    #[test]
    fn the_homeserver_refuses_what_it_must_without_plugins() {
        let (lines, human, result) = replay(
            r#"{"steps": [
              {"op": "register", "user": "@a:hs.example"},
              {"op": "register", "user": "@b:hs.example"},
              {"op": "create_room", "room": "!r:hs.example", "creator": "@a:hs.example"},
              {"op": "send", "room": "!r:hs.example", "sender": "@b:hs.example",
               "expect": {"verdict": "deny", "errcode": "M_FORBIDDEN", "decided_by": "homeserver"}},
              {"op": "send", "room": "!r:hs.example", "sender": "@c:remote.example",
               "expect": {"verdict": "deny", "errcode": "M_FORBIDDEN"}},
              {"op": "join", "room": "!r:hs.example", "user": "@c:remote.example"},
              {"op": "send", "room": "!r:hs.example", "sender": "@c:remote.example",
               "event_id": "$remote", "expect": {"verdict": "allow"}},
              {"op": "deactivate", "user": "@b:hs.example", "expect": {"verdict": "allow"}},
              {"op": "join", "room": "!r:hs.example", "user": "@b:hs.example",
               "expect": {"verdict": "deny", "errcode": "M_USER_DEACTIVATED"}},
              {"op": "client_serve", "viewer": "@a:hs.example", "event_ids": ["$remote", "$send-3"],
               "expect": {"verdicts": ["serve", "not_found"]}},
              {"op": "inspect", "room": "!r:hs.example",
               "expect": {"facts": {"members": ["@a:hs.example", "@c:remote.example"]}}}
            ]}"#,
        );
        let result = result.unwrap();
        assert!(result.failed.is_empty(), "{human}");
        assert_eq!(result.steps, 11);
        assert_eq!(lines.len(), 13);
        assert_eq!(lines[7]["federated"], true);
        assert_eq!(lines[7]["decided_by"], Value::Null);
    }

    #[test]
    fn a_failed_expectation_names_the_step_and_the_run_goes_on() {
        let (lines, human, result) = replay(
            r#"{"steps": [
              {"op": "register", "user": "@a:hs.example"},
              {"op": "inspect", "user": "@a:hs.example", "expect": {"facts": {"kind": "bot"}}},
              {"op": "admin", "plugin": "nobody", "command": "x"}
            ]}"#,
        );
        let err = result.unwrap_err().to_string();
        assert!(
            err.contains("step 2 (admin): no plugin named `nobody`"),
            "{err}"
        );
        assert!(
            human.contains(
                ": step 1 (inspect)\n    facts.kind: expected \"bot\", got \"regular\"\n"
            ),
            "{human}"
        );
        assert_eq!(lines[2]["ok"], false);
    }
}
