//! The `mxpolicy` command reads only regular files, and only up to a cap (issue 9, item 15):
//! `replay /dev/zero` and `check --config /dev/zero` used to read until memory ran out, and a
//! FIFO hung them until a writer came. Each case here runs the built binary as a subprocess,
//! under a timeout so that a regression fails instead of hanging the suite, and must exit 2
//! promptly with one `error:` line naming the file and the reason.
//!
//! The caps mirror `mxpolicy::scenario::MAX_SCENARIO_BYTES` (64 MiB) and
//! `mxpolicy::check::MAX_CONFIG_BYTES` (4 MiB), documented in `cli/README.md`.
//!
//! The binary is built by `cargo build -p mxpolicy` (the README's test command does it before
//! the tests).

use std::{
    fs::File,
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::support::{binary, repo, target_dir};

/// `mxpolicy::scenario::MAX_SCENARIO_BYTES`.
const MAX_SCENARIO_BYTES: u64 = 64 << 20;
/// `mxpolicy::check::MAX_CONFIG_BYTES`.
const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// How long a refusal may take before the child is killed and the test fails. A refusal takes
/// milliseconds; the margin is for a loaded CI machine.
const TIMEOUT: Duration = Duration::from_secs(30);

const NOT_REGULAR: &str =
    "not a regular file (devices, FIFOs, sockets and directories are refused)";

/// A fresh scratch directory for one test.
fn scratch(test: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("mxpolicy-cli-limits-{}-{test}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Exit status and stderr of `mxpolicy args...`; kills the child and fails the test when it
/// has not exited within [`TIMEOUT`].
fn run(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(binary())
        .args(args)
        .current_dir(repo())
        .env("MXPOLICY_PLUGIN_DIR", target_dir().join("plugins"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mxpolicy");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for mxpolicy") {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            child.kill().ok();
            child.wait().ok();
            panic!(
                "`mxpolicy {}` still running after {TIMEOUT:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr).expect("read stderr");
    }
    (status.code(), stderr)
}

/// The command exits 2 with one error line that names `file` and contains `reason`.
fn assert_refused(args: &[&str], file: &Path, reason: &str) {
    let (code, stderr) = run(args);
    let command = format!("mxpolicy {}", args.join(" "));
    assert_eq!(code, Some(2), "{command}: {stderr}");
    assert!(
        stderr.starts_with(&format!("error: {}: cannot read: ", file.display())),
        "{command}: {stderr}"
    );
    assert!(stderr.contains(reason), "{command}: {stderr}");
    assert!(!stderr.contains("panicked"), "{command}: {stderr}");
}

/// A FIFO made with `mkfifo`. Nothing ever opens its other end, so reading it the plain way
/// blocks for ever.
#[cfg(unix)]
fn fifo(dir: &Path) -> PathBuf {
    let path = dir.join("fifo.json");
    let status = Command::new("mkfifo")
        .arg(&path)
        .status()
        .expect("run mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
    path
}

/// A sparse file of `len` bytes (zeros, taking no disk space).
fn sparse(dir: &Path, name: &str, len: u64) -> PathBuf {
    let path = dir.join(name);
    File::create(&path).unwrap().set_len(len).unwrap();
    path
}

#[cfg(unix)]
#[test]
fn replay_of_dev_zero_exits_2_naming_the_file() {
    let zero = Path::new("/dev/zero");
    assert_refused(&["replay", "/dev/zero"], zero, NOT_REGULAR);
}

#[cfg(unix)]
#[test]
fn check_config_of_dev_zero_exits_2_naming_the_file() {
    let zero = Path::new("/dev/zero");
    assert_refused(
        &["check", "keyword-filter", "--config", "/dev/zero"],
        zero,
        NOT_REGULAR,
    );
}

#[cfg(unix)]
#[test]
fn replay_of_a_fifo_exits_2_without_hanging() {
    let dir = scratch("replay-fifo");
    let fifo = fifo(&dir);
    assert_refused(&["replay", fifo.to_str().unwrap()], &fifo, NOT_REGULAR);
    std::fs::remove_dir_all(&dir).ok();
}

#[cfg(unix)]
#[test]
fn check_config_of_a_fifo_exits_2_without_hanging() {
    let dir = scratch("check-fifo");
    let fifo = fifo(&dir);
    assert_refused(
        &[
            "check",
            "keyword-filter",
            "--config",
            fifo.to_str().unwrap(),
        ],
        &fifo,
        NOT_REGULAR,
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[cfg(unix)]
#[test]
fn a_plugin_that_is_a_device_or_a_fifo_is_refused() {
    let dir = scratch("plugin-fifo");
    let fifo = fifo(&dir);
    for plugin in ["/dev/zero", fifo.to_str().unwrap()] {
        let (code, stderr) = run(&["check", plugin]);
        assert_eq!(code, Some(2), "{plugin}: {stderr}");
        assert!(
            stderr.starts_with(&format!(
                "error: plugin `{plugin}`: {plugin} is not a regular file"
            )),
            "{plugin}: {stderr}"
        );
    }
    // The same through a scenario's plugin entry.
    let scenario = dir.join("s.json");
    std::fs::write(
        &scenario,
        r#"{"plugins": [{"path": "fifo.json"}], "steps": []}"#,
    )
    .unwrap();
    let (code, stderr) = run(&["replay", scenario.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "plugins[0]: plugin `fifo.json`: {} is not a regular file",
            fifo.display()
        )),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn replay_of_an_oversize_scenario_exits_2_naming_the_file() {
    let dir = scratch("replay-oversize");
    let big = sparse(&dir, "big.json", MAX_SCENARIO_BYTES + 1);
    assert_refused(
        &["replay", big.to_str().unwrap()],
        &big,
        &format!(
            "file of {} bytes exceeds the limit of {MAX_SCENARIO_BYTES} bytes",
            MAX_SCENARIO_BYTES + 1
        ),
    );
    // At the cap, the file is read: the error is then about its content.
    let at_cap = sparse(&dir, "at-cap.json", MAX_SCENARIO_BYTES);
    let (code, stderr) = run(&["replay", at_cap.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.starts_with(&format!("error: {}:1:1: malformed JSON", at_cap.display())),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn check_config_oversize_exits_2_naming_the_file() {
    let dir = scratch("check-oversize");
    let big = sparse(&dir, "big.json", MAX_CONFIG_BYTES + 1);
    assert_refused(
        &["check", "keyword-filter", "--config", big.to_str().unwrap()],
        &big,
        &format!(
            "file of {} bytes exceeds the limit of {MAX_CONFIG_BYTES} bytes",
            MAX_CONFIG_BYTES + 1
        ),
    );
    let at_cap = sparse(&dir, "at-cap.json", MAX_CONFIG_BYTES);
    let (code, stderr) = run(&[
        "check",
        "keyword-filter",
        "--config",
        at_cap.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.starts_with(&format!("error: {}: malformed JSON", at_cap.display())),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_directory_is_refused_as_a_scenario_and_as_a_config() {
    let dir = scratch("directory");
    let path = dir.to_str().unwrap();
    assert_refused(&["replay", path], &dir, NOT_REGULAR);
    assert_refused(
        &["check", "keyword-filter", "--config", path],
        &dir,
        NOT_REGULAR,
    );
    std::fs::remove_dir_all(&dir).ok();
}
