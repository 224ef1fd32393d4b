//! Crash safety with real processes: a child process (this test binary, re-run in child mode)
//! makes hook calls that each write two related keys and return one action (recorded in the
//! outbox), printing each call it got a decision for; the parent SIGKILLs it at random
//! moments, 20 times, restarting it on the same database. Then every acknowledged call's
//! writes must all be there, no call's writes may be half there, and every call whose writes
//! are there must have its action in the outbox. Run for SQLite and PostgreSQL.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use mxpolicy_host::{Action, Host, MemoryHomeserver, PostgresStore, SqliteStore, StateStore};
use serde_json::json;

use crate::{
    end_to_end::message,
    stores::{TempDir, postgres_schema},
    support::{server_name, spec},
};

/// The environment variable that puts this binary in child mode: `sqlite:<path>` or
/// `postgres:<url>`, plus the child's generation after a `#`.
const CHILD: &str = "MXPOLICY_CRASH_CHILD";
const KILLS: usize = 20;

fn open(target: &str) -> Arc<dyn StateStore> {
    match target.split_once(':') {
        Some(("sqlite", path)) => Arc::new(SqliteStore::open(path).unwrap()),
        Some(("postgres", url)) => Arc::new(PostgresStore::connect(url).unwrap()),
        _ => panic!("bad target {target}"),
    }
}

/// Child mode: call on-send until killed, printing `ack <id>` after each decision. Runs only
/// when the parent set [`CHILD`]; as an ordinary test it returns at once.
#[test]
fn child() {
    let Ok(spec_var) = std::env::var(CHILD) else {
        return;
    };
    let (target, generation) = spec_var.rsplit_once('#').unwrap();
    let host = Host::builder(Arc::new(MemoryHomeserver::new(server_name())), open(target))
        .outbox(true)
        .build()
        .unwrap();
    host.load(spec("scripted-a").config(json!({"pair": true})))
        .unwrap();
    println!("ready");
    for i in 0.. {
        let id = format!("{generation}-{i}");
        let d = host.on_send(&message("@a:hs.example", &id));
        assert!(d.failures.is_empty(), "{:?}", d.failures);
        println!("ack {id}");
    }
}

/// A small xorshift generator: kill times that differ run to run without a `rand` dependency.
struct Jitter(u64);

impl Jitter {
    fn next_ms(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// Run the child `KILLS` times, killing each at a random moment after it is ready; return the
/// ids it acknowledged.
fn kill_repeatedly(target: &str) -> Vec<String> {
    let exe = std::env::current_exe().unwrap();
    let seed = Instant::now().elapsed().as_nanos() as u64 ^ u64::from(std::process::id());
    let mut jitter = Jitter(seed | 1);
    let mut acked = Vec::new();
    for generation in 0..KILLS {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash::child", "--nocapture", "--test-threads=1"])
            .env(CHILD, format!("{target}#{generation}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait until it is ready (bounded), then let it work for 5-150 ms.
        let started = Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                // libtest prints `test crash::child ... ` before the test's own output.
                Ok(line) if line.ends_with("ready") => break,
                Ok(_) => {}
                Err(e) => panic!("child {generation} never got ready: {e}"),
            }
            assert!(started.elapsed() < Duration::from_secs(60));
        }
        std::thread::sleep(Duration::from_millis(5 + jitter.next_ms(145)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        acked.extend(
            rx.try_iter()
                .filter_map(|l| l.strip_prefix("ack ").map(str::to_owned)),
        );
    }
    acked
}

fn check(target: &str) {
    let acked = kill_repeatedly(target);
    assert!(
        acked.len() > KILLS,
        "the children made too few calls: {acked:?}"
    );
    let store = open(target);
    let a: Vec<String> = store
        .list("scripted-a", "pair/a/", None, usize::MAX)
        .unwrap();
    let b: Vec<String> = store
        .list("scripted-a", "pair/b/", None, usize::MAX)
        .unwrap();
    let ids = |keys: &[String], prefix: &str| -> Vec<String> {
        let mut v: Vec<String> = keys
            .iter()
            .map(|k| k.trim_start_matches(prefix).to_owned())
            .collect();
        v.sort();
        v
    };
    let (a, b) = (ids(&a, "pair/a/"), ids(&b, "pair/b/"));
    assert_eq!(a, b, "a call's writes are half there");
    for id in &acked {
        assert!(
            a.binary_search(id).is_ok(),
            "acknowledged call {id} was lost"
        );
    }
    // Every committed call's action is in the outbox (the children never acknowledged).
    let mut actions: Vec<String> = store
        .claim_actions(u64::MAX / 2, usize::MAX / 2, u64::MAX / 2)
        .unwrap()
        .into_iter()
        .map(
            |e| match serde_json::from_str::<Action>(&e.action).unwrap() {
                Action::SendServerNotice { content, .. } => {
                    content["body"].as_str().unwrap().to_owned()
                }
                other => panic!("unexpected action {other:?}"),
            },
        )
        .collect();
    actions.sort();
    assert_eq!(
        actions, a,
        "an action was lost or recorded without its writes"
    );
    eprintln!(
        "crash test on {}: {KILLS} kills, {} acknowledged calls, {} committed",
        target.split(':').next().unwrap_or_default(),
        acked.len(),
        a.len()
    );
}

#[test]
fn sqlite_loses_nothing_acknowledged_and_keeps_no_half_call_across_sigkills() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let dir = TempDir::new("crash");
    check(&format!("sqlite:{}", dir.0.join("state.db").display()));
}

#[test]
fn postgres_loses_nothing_acknowledged_and_keeps_no_half_call_across_sigkills() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let Some(url) = postgres_schema("crash") else {
        return;
    };
    check(&format!("postgres:{url}"));
}
