//! `mxpolicy`: replay scenarios against real compiled policy plugins, and check plugins.
//!
//! - `mxpolicy replay FILE...` runs scenario files (see `cli/README.md`) through the real host
//!   with a simulated homeserver in front, prints the steps on stdout (a table on a terminal,
//!   one JSON line per step otherwise) and a readable diff of every failed expectation on
//!   stderr.
//!   `mxpolicy replay --list-ops` prints the ops a step can use.
//! - `mxpolicy check PLUGIN... [--config FILE]` loads plugins and describes them.
//! - `mxpolicy serve --config FILE` runs a policy set as an HTTP service (see `serve`).
//! - `mxpolicy init DIR` writes a sample policy set for it.
//! - `mxpolicy state export --store URL [--plugin P] [--user U]` prints plugin records as JSON.
//!
//! Exit status: 0 when everything holds, 1 when an expectation (or an explicit configuration)
//! fails, 2 for bad input or usage.

use std::{io::Write, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use mxpolicy::{check, export, replay, replay::term, scenario};

/// Replay policy scenarios against real plugins, and inspect plugins.
#[derive(Debug, Parser)]
#[command(name = "mxpolicy", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run scenario files through the real host and plugins with a simulated homeserver.
    ///
    /// Prints the steps on stdout (what the policies decided, which actions ran): a table when
    /// stdout is a terminal, one JSON line per step otherwise or with `--json`; and on stderr a
    /// diff for every expectation that does not hold. Exit status: 0 when every expectation
    /// holds, 1 when one fails, 2 for bad input.
    Replay {
        /// Scenario files (JSON; regular files of at most 64 MiB).
        #[arg(required_unless_present = "list_ops")]
        files: Vec<PathBuf>,
        /// Do not print the steps (JSON lines or table), only failures and the summary.
        #[arg(short, long)]
        quiet: bool,
        /// How the steps are printed: `table` (for people), `json` (one JSON line per step), or
        /// `auto`: a table when stdout is a terminal, JSON lines otherwise.
        #[arg(long, value_enum, default_value_t = replay::Format::Auto)]
        format: replay::Format,
        /// Print JSON lines even on a terminal (`--format json`).
        #[arg(long, conflicts_with = "format")]
        json: bool,
        /// Print the ops a scenario step can use, one per line, and exit.
        #[arg(long, exclusive = true)]
        list_ops: bool,
    },
    /// Load plugins and print their name, version, hooks, imports, SHA-256 and whether the
    /// configuration validates.
    ///
    /// A plugin is a path, or a bare name looked up in the built plugins directory
    /// (`target/plugins`, or $MXPOLICY_PLUGIN_DIR). Exit status: 0 when the plugins load (and
    /// an explicit configuration validates), 1 when an explicit configuration is refused, 2
    /// when a plugin cannot be found or loaded.
    Check {
        /// Plugin files (`.wasm` components) or names.
        #[arg(required = true)]
        plugins: Vec<String>,
        /// A JSON file with the configuration to validate (a regular file of at most 4 MiB;
        /// default: `{}`, reported but not counted as a failure).
        #[arg(long, value_name = "FILE", conflicts_with = "config_json")]
        config: Option<PathBuf>,
        /// The configuration to validate, as JSON text.
        #[arg(long, value_name = "JSON")]
        config_json: Option<String>,
        /// How the plugins are described: `table` (one row each), `long` (everything, a block
        /// each), `json` (one JSON object per line), or `auto`: a table when stdout is a
        /// terminal, the long form otherwise.
        #[arg(long, value_enum, default_value_t = check::Format::Auto)]
        format: check::Format,
        /// Print one JSON object per plugin (`--format json`).
        #[arg(long, conflicts_with = "format")]
        json: bool,
    },
    /// Run a policy set as an HTTP service: hook, web, admin, metrics and health endpoints,
    /// timers on a schedule, hot swap on file changes and SIGHUP, graceful stop on SIGTERM.
    ///
    /// The policy-set file's `[service]` section says where to listen and the API secret
    /// (`mxpolicy init` writes a sample). Exit status: 0 after a graceful stop, 2 when the set
    /// or its service settings are refused.
    Serve {
        /// The policy-set file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Write a sample policy set for `mxpolicy serve` into DIR (the three GDPR policies and
    /// the keyword filter, SQLite state, generated secrets). Existing files are kept.
    Init {
        /// Where to write it.
        dir: PathBuf,
        /// The built plugins (default: target/plugins, or $MXPOLICY_PLUGIN_DIR).
        #[arg(long, value_name = "DIR")]
        plugins: Option<PathBuf>,
        /// The port the service listens on, on 127.0.0.1.
        #[arg(long, default_value_t = 8480)]
        port: u16,
        /// The homeserver's server name.
        #[arg(long, default_value = "localhost")]
        server_name: String,
    },
    /// Read a policy store.
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
}

#[derive(Debug, Subcommand)]
enum StateCommand {
    /// Print plugin records as JSON: for auditors and for GDPR data-portability requests (a
    /// user's consent history, erasure status, media list). Exit status 0, or 2 when the store
    /// cannot be read.
    Export {
        /// The store: `sqlite:PATH` or `postgresql://USER@HOST/DB`.
        #[arg(long)]
        store: String,
        /// One plugin instance (default: every instance with state).
        #[arg(long)]
        plugin: Option<String>,
        /// Only the records whose key names this user id.
        #[arg(long)]
        user: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let code = match cli.command {
        Command::Serve { config } => {
            init_logging();
            match mxpolicy::serve::run(&config, &mut stdout.lock()) {
                Ok(()) => 0,
                Err(e) => {
                    let _ = writeln!(stderr.lock(), "error: {e}");
                    2
                }
            }
        }
        Command::Init {
            dir,
            plugins,
            port,
            server_name,
        } => {
            let args = mxpolicy::init::InitArgs {
                dir,
                plugins: plugins.unwrap_or_else(mxpolicy::locate::plugin_dir),
                port,
                server_name,
            };
            let mut err = stderr.lock();
            match mxpolicy::init::run(&args, &mut err) {
                Ok(file) => {
                    let _ = writeln!(
                        stdout.lock(),
                        "{}
run it with: mxpolicy serve --config {}",
                        file.display(),
                        file.display()
                    );
                    0
                }
                Err(e) => {
                    let _ = writeln!(err, "error: {e}");
                    2
                }
            }
        }
        Command::Replay { list_ops: true, .. } => {
            let mut out = stdout.lock();
            let listed = scenario::OPS
                .iter()
                .try_for_each(|op| writeln!(out, "{op}"));
            if listed.is_ok() { 0 } else { 2 }
        }
        Command::Replay {
            files,
            quiet,
            format,
            json,
            ..
        } => {
            let format = if json { replay::Format::Json } else { format };
            let term = term::Terminal::detect();
            let view = ReplayView {
                quiet,
                format: format.resolve(term.stdout),
                color: term.stdout_color,
                color_err: term.stderr_color,
            };
            // The progress line takes its own handle on stderr (the lock is reentrant).
            let mut progress = std::io::stderr();
            let progress = term.stderr.then_some(&mut progress as &mut dyn Write);
            let mut out = stdout.lock();
            let mut err = stderr.lock();
            replay_files(&files, view, progress, &mut out, &mut err)
        }
        Command::Check {
            plugins,
            config,
            config_json,
            format,
            json,
        } => {
            let format = if json { check::Format::Json } else { format };
            let term = term::Terminal::detect();
            let mut progress = std::io::stderr();
            let options = check::Options {
                format: format.resolve(term.stdout),
                color: term.stdout_color,
                progress: term.stderr.then_some(&mut progress as &mut dyn Write),
            };
            let mut err = stderr.lock();
            match config_arg(config, config_json) {
                Ok(config) => check::run(&plugins, &config, options, &mut stdout.lock(), &mut err),
                Err(e) => {
                    let _ = writeln!(err, "error: {e}");
                    2
                }
            }
        }
        Command::State {
            command:
                StateCommand::Export {
                    store,
                    plugin,
                    user,
                },
        } => export::run(
            &export::ExportArgs {
                store,
                plugin,
                user,
            },
            &mut stdout.lock(),
            &mut stderr.lock(),
        ),
    };
    ExitCode::from(code as u8)
}

/// Logs on stderr; `RUST_LOG` filters them (default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn config_arg(file: Option<PathBuf>, text: Option<String>) -> Result<check::ConfigArg, String> {
    match (file, text) {
        (Some(path), _) => check::ConfigArg::from_file(&path),
        (None, Some(text)) => check::ConfigArg::from_text(&text, "--config-json".into()),
        (None, None) => Ok(check::ConfigArg::default_empty()),
    }
}

/// How `replay` prints.
#[derive(Clone, Copy)]
struct ReplayView {
    /// No steps on stdout.
    quiet: bool,
    /// `Table` or `Json` (resolved).
    format: replay::Format,
    /// Colours in the table (stdout).
    color: bool,
    /// Colours in the `PASS`/`FAIL` summary (stderr).
    color_err: bool,
}

fn replay_files(
    files: &[PathBuf],
    view: ReplayView,
    mut progress: Option<&mut dyn Write>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    use term::{Tone, paint};
    let table = !view.quiet && view.format == replay::Format::Table;
    let mut status = 0;
    for (n, file) in files.iter().enumerate() {
        // With the table, the failure diffs wait until the table is printed: table, diffs,
        // then the summary line, in that order.
        let mut diffs = Vec::new();
        let mut rows = replay::table::FileTable::default();
        let mut output = replay::Output {
            lines: if view.quiet || table {
                None
            } else {
                Some(&mut *out)
            },
            human: if table {
                &mut diffs as &mut dyn Write
            } else {
                &mut *err
            },
        };
        let extra = replay::Interactive {
            table: table.then_some(&mut rows),
            progress: progress.as_mut().map(|p| &mut **p as &mut dyn Write),
        };
        let result = replay::run_file_with(file, &mut output, extra);
        if table && !rows.scenario.is_empty() {
            let sep = if n > 0 { "\n" } else { "" };
            let _ = write!(out, "{sep}{}", replay::table::render(&rows, view.color));
            let _ = out.flush();
        }
        let _ = err.write_all(&diffs);
        let mark = |word: &str, tone| paint(word, tone, view.color_err);
        match result {
            Ok(result) if result.failed.is_empty() => {
                let _ = writeln!(
                    err,
                    "{} {} ({} steps)",
                    mark("PASS", Tone::Good),
                    file.display(),
                    result.steps
                );
            }
            Ok(result) => {
                let _ = writeln!(
                    err,
                    "{} {}: {} of {} steps failed: {}",
                    mark("FAIL", Tone::Bad),
                    file.display(),
                    result.failed.len(),
                    result.steps,
                    result.failed.join("; ")
                );
                status = status.max(1);
            }
            Err(e) => {
                let _ = writeln!(err, "error: {e:#}");
                status = 2;
            }
        }
    }
    status
}
