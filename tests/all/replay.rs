//! The `mxpolicy` command, run as a subprocess the way an admin runs it: every scenario under
//! `tests/scenarios/` (and the walkthrough under `examples/`) replays with exit status 0; a
//! wrong expectation exits 1 with a diff naming the step; bad input exits 2 with a clear
//! message; `mxpolicy check` describes every built plugin and refuses broken files.
//!
//! The binary is built by `cargo build -p mxpolicy` (the README's test command does it before
//! the tests); a missing or stale binary fails here with that instruction.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::support::{binary, repo, target_dir};

fn mxpolicy(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .current_dir(repo())
        .env("MXPOLICY_PLUGIN_DIR", target_dir().join("plugins"))
        .output()
        .expect("run mxpolicy")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn scenario_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

/// The JSON lines of a replay: header, one per step, summary.
fn lines(out: &Output) -> Vec<Value> {
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn assert_replays(file: &Path) {
    let scenario: Value = std::fs::read_to_string(file)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| panic!("{} is not readable JSON", file.display()));
    let steps = scenario["steps"].as_array().map_or(0, Vec::len);
    let out = mxpolicy(&["replay", &file.display().to_string()]);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{} failed:\n{stderr}",
        file.display()
    );
    assert!(stderr.contains("PASS"), "{stderr}");
    let lines = lines(&out);
    // Header, one line per step in order, summary.
    assert_eq!(lines.len(), steps + 2, "{}", text(&out.stdout));
    assert!(lines[0]["plugins"].is_array());
    for (i, line) in lines[1..=steps].iter().enumerate() {
        assert_eq!(line["step"], i, "{line}");
        assert!(line["op"].is_string(), "{line}");
        assert_eq!(line["ok"], true, "{line}");
    }
    assert_eq!(lines[steps + 1]["passed"], true);
}

#[test]
fn every_scenario_replays_and_passes() {
    let files = scenario_files(&repo().join("tests/scenarios"));
    assert!(files.len() >= 4, "scenarios missing: {files:?}");
    for file in files {
        assert_replays(&file);
    }
}

#[test]
fn the_walkthrough_replays_and_passes() {
    let files = scenario_files(&repo().join("examples"));
    assert!(!files.is_empty(), "examples/gdpr-walkthrough.json missing");
    for file in files {
        assert_replays(&file);
    }
}

#[test]
fn every_op_is_covered_by_a_scenario() {
    let ops = mxpolicy_ops();
    let mut seen = BTreeSet::new();
    for file in scenario_files(&repo().join("tests/scenarios")) {
        let s: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        for step in s["steps"].as_array().unwrap() {
            let op = step["op"].as_str().unwrap().to_owned();
            assert!(
                ops.contains(&op),
                "{}: op `{op}` is not listed",
                file.display()
            );
            seen.insert(op);
        }
    }
    let missing: Vec<&String> = ops.iter().filter(|op| !seen.contains(*op)).collect();
    assert!(missing.is_empty(), "no scenario uses the ops {missing:?}");
}

/// The valid ops, as the binary lists them (`mxpolicy replay --list-ops`: `scenario::OPS`,
/// derived from the op enum, so no op can be left out of the list). The error for an unknown
/// op lists the same.
fn mxpolicy_ops() -> BTreeSet<String> {
    let out = mxpolicy(&["replay", "--list-ops"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let ops: Vec<String> = stdout.lines().map(str::to_owned).collect();
    // The twenty ops of cli/README.md, at the least; a line per op, each a snake_case word.
    assert!(ops.len() >= 20, "{stdout}");
    for op in &ops {
        assert!(
            !op.is_empty() && op.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{op:?} in {stdout}"
        );
    }
    for op in ["clock", "send", "client_serve", "run_timers", "inspect"] {
        assert!(ops.iter().any(|o| o == op), "{op} not in {stdout}");
    }
    let unknown = mxpolicy(&["replay", "tests/scenarios/bad/unknown-op.json"]);
    assert!(
        text(&unknown.stderr).contains(&format!("(valid ops: {})", ops.join(", "))),
        "{}",
        text(&unknown.stderr)
    );
    let set: BTreeSet<String> = ops.iter().cloned().collect();
    assert_eq!(set.len(), ops.len(), "duplicates in {stdout}");
    set
}

#[test]
fn a_wrong_expectation_fails_with_a_readable_diff() {
    let out = mxpolicy(&["replay", "tests/scenarios/failing/wrong-expectations.json"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "FAIL tests/scenarios/failing/wrong-expectations.json: step 2 (send $spam from \
             @alice:hs.example in !r:hs.example) - wrong on purpose"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("    verdict: expected \"allow\", got \"deny\"\n"),
        "{stderr}"
    );
    assert!(
        stderr.contains("step 4 (client_serve to @alice:hs.example)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("events: expected (-) vs actual (+):"),
        "{stderr}"
    );
    assert!(stderr.contains("-       \"body\": \"FINE\","), "{stderr}");
    assert!(stderr.contains("+       \"body\": \"fine\","), "{stderr}");
    assert!(stderr.contains("2 of 5 steps failed"), "{stderr}");
    // The JSON lines say the same; the passing steps are still ok.
    let lines = lines(&out);
    let oks: Vec<&Value> = lines[1..6].iter().map(|l| &l["ok"]).collect();
    assert_eq!(oks, [true, true, false, true, false]);
    assert_eq!(
        lines[3]["mismatches"][0],
        "verdict: expected \"allow\", got \"deny\""
    );
    assert_eq!(lines[3]["verdict"], "deny");
    assert_eq!(lines[3]["decided_by"], "keyword-filter");
}

#[test]
fn bad_input_exits_2_with_a_clear_message() {
    let cases = [
        (
            "malformed.json",
            "malformed.json:5:5: malformed JSON: expected `,` or `]` (line 5, column 5)",
        ),
        (
            "unknown-op.json",
            "unknown-op.json:5:5: step 1: unknown op `sned` (valid ops: clock, advance,",
        ),
        (
            "unknown-user.json",
            "unknown-user.json:6:5: step 2 (join): unknown user @mallory:hs.example (register \
             it first)",
        ),
        (
            "unknown-room.json",
            "step 1 (send): unknown room !nowhere:hs.example",
        ),
        (
            "unknown-field.json",
            "step 0 (register): expect.verdict: op `register` takes no expectations",
        ),
        (
            "missing-plugin.json",
            "plugins[0]: plugin file `no-such-plugin.wasm` not found (looked at: ",
        ),
        (
            "not-a-component.json",
            "cannot load: this is a core WebAssembly module, not a component",
        ),
        (
            "no-consent-plugin.json",
            "step 1 (consent): no plugin named `consent` with an on-admin hook is loaded",
        ),
    ];
    let dir = repo().join("tests/scenarios/bad");
    assert_eq!(
        scenario_files(&dir).len(),
        cases.len(),
        "a bad scenario without a case here"
    );
    for (file, message) in cases {
        let path = format!("tests/scenarios/bad/{file}");
        let out = mxpolicy(&["replay", &path]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{file}: {stderr}");
        assert!(
            stderr.starts_with(&format!("error: {path}")),
            "{file}: {stderr}"
        );
        assert!(stderr.contains(message), "{file}: {stderr}");
        assert!(!stderr.contains("panicked"), "{file}: {stderr}");
    }
}

#[test]
fn several_files_report_the_worst_status() {
    let out = mxpolicy(&[
        "replay",
        "--quiet",
        "tests/scenarios/keyword-filter.json",
        "tests/scenarios/failing/wrong-expectations.json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "--quiet prints no JSON lines");
    let out = mxpolicy(&[
        "replay",
        "tests/scenarios/bad/unknown-op.json",
        "tests/scenarios/keyword-filter.json",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    // The good file still runs after the bad one.
    assert!(
        stderr.contains("PASS tests/scenarios/keyword-filter.json"),
        "{stderr}"
    );
    let usage = mxpolicy(&["replay"]);
    assert_eq!(usage.status.code(), Some(2), "no files is a usage error");
}

#[test]
fn check_describes_every_built_plugin() {
    let dir = target_dir().join("plugins");
    let plugins: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("target/plugins: run `cargo xtask build-plugins`")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
        .collect();
    assert!(plugins.len() >= 3, "{plugins:?}");
    for plugin in plugins {
        let file = plugin.to_str().unwrap();
        let sha_of_file = || hex::encode(Sha256::digest(std::fs::read(&plugin).unwrap()));
        // Other builds may replace the file while the suite runs: retry if it changed under us
        // (a file caught half-written fails to load, so the status is checked only once the
        // file is known not to have changed).
        let (report, sha) = (0..3)
            .find_map(|_| {
                let before = sha_of_file();
                let out = mxpolicy(&["check", "--json", file]);
                if before != sha_of_file() {
                    return None;
                }
                assert_eq!(out.status.code(), Some(0), "{file}: {}", text(&out.stderr));
                let report: Value = serde_json::from_slice(&out.stdout).unwrap();
                Some((report, before))
            })
            .expect("the plugin file keeps changing");
        let stem = plugin.file_stem().unwrap().to_str().unwrap();
        assert_eq!(report["name"], stem, "{report}");
        assert!(!report["version"].as_str().unwrap().is_empty());
        assert_eq!(report["sha256"], sha.as_str());
        assert!(!report["hooks"].as_array().unwrap().is_empty());
        for import in report["imports"].as_array().unwrap() {
            assert!(
                import.as_str().unwrap().starts_with("mxpolicy:policy/"),
                "{import}"
            );
        }
        assert!(report["config"]["valid"].is_boolean());

        let human = text(&mxpolicy(&["check", file]).stdout);
        assert!(human.starts_with(&format!("plugin   {stem} ")), "{human}");
        assert!(human.contains(&format!("sha256   {sha}\n")), "{human}");
        assert!(human.contains("\nhooks    "), "{human}");
        assert!(human.contains("\nimports  mxpolicy:policy/"), "{human}");
        assert!(human.contains("\nconfig   "), "{human}");
    }
}

#[test]
fn check_validates_an_explicit_config() {
    let dir = std::env::temp_dir().join(format!("mxpolicy-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"keywords": ["ok", ""]}"#).unwrap();
    let good = dir.join("good.json");
    std::fs::write(&good, r#"{"keywords": ["spam"]}"#).unwrap();

    let out = mxpolicy(&["check", "keyword-filter", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "config   INVALID: {}: plugin `keyword-filter`: invalid config at `keywords.1`: \
             keywords must not be empty",
            bad.display()
        )),
        "{stdout}"
    );
    let out = mxpolicy(&[
        "check",
        "keyword-filter",
        "--config",
        good.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("config   valid: "));
    let out = mxpolicy(&["check", "keyword-filter", "--config-json", "{not json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--config-json: malformed JSON"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn check_fails_clearly_on_a_broken_file() {
    let out = mxpolicy(&["check", "tests/scenarios/bad/not-a-component.wasm"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "cannot load: this is a core WebAssembly module, not a component; build plugins \
             with `cargo xtask build-plugins`"
        ),
        "{stderr}"
    );

    let dir = std::env::temp_dir().join(format!("mxpolicy-broken-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let garbage = dir.join("garbage.wasm");
    std::fs::write(&garbage, b"this is not WebAssembly at all").unwrap();
    let out = mxpolicy(&["check", garbage.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("not a valid WebAssembly component"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();

    let out = mxpolicy(&["check", "no-such-plugin"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("plugin file `no-such-plugin` not found"));
}
