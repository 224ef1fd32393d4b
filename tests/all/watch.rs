//! The policy-set watcher: a component copied in slowly or a set renamed into place is
//! applied exactly once, complete; a broken file leaves the chain; explicit reloads and
//! SIGHUP apply the file; a rollback holds until the next change.

use std::{
    io::Write,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use mxpolicy_host::{
    Action, Host, MemoryHomeserver, MemoryStore, PolicySet, Reload, WatchStats, Watcher,
};

use crate::{
    end_to_end::message,
    stores::TempDir,
    support::{plugin_path, server_name},
};

const DEBOUNCE: Duration = Duration::from_millis(400);

/// One scripted plugin, instance `x`, whose every send returns a notice with `body`.
fn set_text(body: &str) -> String {
    format!(
        "[[plugin]]\ninstance = \"x\"\npath = \"x.wasm\"\ndeadline_ms = 2000\n\
         config = {{ actions = [{{ kind = \"send-server-notice\", user = \"@u:hs.example\", \
         body = \"{body}\" }}] }}\n"
    )
}

/// A host running the set in `dir` (instance `x` = scripted-a, notice `body`), watched.
fn setup(dir: &Path, body: &str) -> (Arc<Host>, Watcher) {
    std::fs::copy(plugin_path("scripted-a"), dir.join("x.wasm")).unwrap();
    std::fs::write(dir.join("set.toml"), set_text(body)).unwrap();
    let host = Arc::new(
        Host::builder(
            Arc::new(MemoryHomeserver::new(server_name())),
            Arc::new(MemoryStore::new()),
        )
        .build()
        .unwrap(),
    );
    host.apply(&PolicySet::from_file(dir.join("set.toml")).unwrap())
        .unwrap();
    let watcher = Watcher::start(host.clone(), dir.join("set.toml"), DEBOUNCE).unwrap();
    (host, watcher)
}

fn notice(host: &Host) -> String {
    let d = host.on_send(&message("@a:hs.example", "hi"));
    assert!(d.failures.is_empty(), "{:?}", d.failures);
    match d.actions.as_slice() {
        [Action::SendServerNotice { content, .. }] => content["body"].as_str().unwrap().into(),
        other => panic!("{other:?}"),
    }
}

/// Wait until the watcher's stats satisfy `done` (at most 20 s), then three debounce periods
/// more, so that a second, unwanted reload would have happened; the stats then.
fn settle(watcher: &Watcher, done: impl Fn(WatchStats) -> bool) -> WatchStats {
    let start = Instant::now();
    while !done(watcher.stats()) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no reload: {:?}",
            watcher.stats()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(DEBOUNCE * 3);
    watcher.stats()
}

fn sha256(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

#[test]
fn a_component_written_slowly_in_chunks_is_applied_once_and_complete() {
    let dir = TempDir::new("watch-slow");
    let (host, watcher) = setup(&dir.0, "one");
    let generation = host.generation();
    // The newer build, written in place in 16 chunks, 50 ms apart (well inside the debounce):
    // the way `cp` or a build tool overwrites a file.
    let new = std::fs::read(plugin_path("scripted-b")).unwrap();
    let mut file = std::fs::File::create(dir.0.join("x.wasm")).unwrap();
    for chunk in new.chunks(new.len().div_ceil(16)) {
        file.write_all(chunk).unwrap();
        file.flush().unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(file);
    let stats = settle(&watcher, |s| s.applied + s.refused > 0);
    assert_eq!(
        stats,
        WatchStats {
            applied: 1,
            refused: 0,
            unchanged: 0
        },
        "one reload, of the complete file"
    );
    assert_eq!(host.generation(), generation + 1);
    assert_eq!(
        host.plugins()[0].sha256,
        sha256(&plugin_path("scripted-b")),
        "the chain runs the complete new build"
    );
    assert_eq!(notice(&host), "one");
}

#[test]
fn a_set_renamed_into_place_is_applied_once_and_a_broken_one_is_refused() {
    let dir = TempDir::new("watch-rename");
    let (host, watcher) = setup(&dir.0, "one");
    assert_eq!(notice(&host), "one");
    let replace = |text: &str| {
        let tmp = dir.0.join(".set.toml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.0.join("set.toml")).unwrap();
    };
    replace(&set_text("two"));
    let stats = settle(&watcher, |s| s.applied > 0);
    assert_eq!(stats.applied, 1, "{stats:?}");
    assert_eq!(stats.refused, 0, "{stats:?}");
    assert_eq!(notice(&host), "two");

    // A set naming a component that is not there: refused, the chain stays.
    let generation = host.generation();
    replace(&set_text("three").replace("x.wasm", "missing.wasm"));
    let stats = settle(&watcher, |s| s.refused > 0);
    assert_eq!((stats.applied, stats.refused), (1, 1), "{stats:?}");
    assert_eq!(host.generation(), generation);
    assert_eq!(notice(&host), "two");
}

#[test]
fn explicit_reload_and_sighup_apply_the_file_and_a_rollback_holds_until_then() {
    let dir = TempDir::new("watch-reload");
    let (host, watcher) = setup(&dir.0, "one");
    // Change the file while watching is slow to notice: an explicit reload applies it now.
    std::fs::write(dir.0.join("set.toml"), set_text("two")).unwrap();
    match watcher.reload() {
        Reload::Applied(applied) => assert_eq!(
            applied.changes,
            [mxpolicy_host::Change::Reconfigured {
                instance: "x".into()
            }]
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(notice(&host), "two");
    // The file's own change notification then finds nothing new.
    let stats = settle(&watcher, |s| s.unchanged > 0);
    assert_eq!(stats.applied, 1, "{stats:?}");

    // A rollback does not rewrite the file, and nothing reapplies it until asked.
    host.rollback().unwrap();
    assert_eq!(notice(&host), "one");
    std::thread::sleep(DEBOUNCE * 3);
    assert_eq!(notice(&host), "one");

    // SIGHUP applies the file as it is.
    watcher.reload_on_sighup().unwrap();
    let applied = watcher.stats().applied;
    signal_hook::low_level::raise(signal_hook::consts::SIGHUP).unwrap();
    let stats = settle(&watcher, |s| s.applied > applied);
    assert_eq!(stats.applied, applied + 1, "{stats:?}");
    assert_eq!(notice(&host), "two");
}
