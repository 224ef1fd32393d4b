//! Criterion benchmark of `mxpolicy replay` on long scenarios: 10,000, 50,000 and 100,000
//! steps, so that the output shows whether replay is linear in the number of steps (the time
//! per step, and criterion's throughput in steps per second, stay flat as the scenario grows).
//!
//! Each scenario is generated into a temporary directory and replayed through the library
//! call the binary makes for each file (`mxpolicy::replay::run_file`), JSON lines included
//! (written to a sink, as `mxpolicy replay FILE > /dev/null` would): reading and parsing the
//! file, the simulated homeserver, the host's hook calls, and the report of every step.
//!
//! The scenarios load no plugin, so the figures are replay's own cost and need no plugin build;
//! a plugin adds its hook call to every send and membership step, a cost that does not depend
//! on the history (see the host's `hooks` benchmark).
//!
//! The shape, for `n` steps: 4 local users and 2 remote users, 3 rooms everyone joins; then,
//! round robin over the rooms, mostly sends (local sends go through on-send, remote ones
//! arrive over federation), every 10th step a clock advance, every 100th a `client_serve` and
//! every 100th a `federation_serve` of the room's last 3 events, every 1,000th a remote user
//! leaving and joining again.
//!
//! `cargo bench -p mxpolicy` (about 30 s on a 2-vCPU VM, replays included).

use std::{
    hint::black_box,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use mxpolicy::replay::{Output, run_file};
use serde_json::{Value, json};

/// The sizes benchmarked, in steps.
const SIZES: [usize; 3] = [10_000, 50_000, 100_000];

const GROUP: &str = "replay";

/// A scenario of exactly `n` steps (see the module documentation for its shape).
fn scenario(n: usize) -> Value {
    let local: Vec<String> = (0..4).map(|i| format!("@u{i}:hs.example")).collect();
    let remote: Vec<String> = (0..2).map(|i| format!("@r{i}:remote.example")).collect();
    let rooms: Vec<String> = (0..3).map(|i| format!("!room{i}:hs.example")).collect();
    let mut steps: Vec<Value> = Vec::with_capacity(n);
    for user in &local {
        steps.push(json!({"op": "register", "user": user}));
    }
    for room in &rooms {
        steps.push(json!({"op": "create_room", "room": room, "creator": local[0]}));
        for user in local[1..].iter().chain(&remote) {
            steps.push(json!({"op": "join", "room": room, "user": user}));
        }
    }
    let senders: Vec<&String> = local.iter().chain(&remote).collect();
    // The last events sent in each room, for the serve steps.
    let mut recent: Vec<Vec<String>> = vec![Vec::new(); rooms.len()];
    while steps.len() < n {
        let k = steps.len();
        let r = k % rooms.len();
        let room = &rooms[r];
        let last3: Vec<&String> = recent[r].iter().rev().take(3).collect();
        if k.is_multiple_of(1000) && steps.len() + 2 <= n {
            let user = &remote[(k / 1000) % remote.len()];
            steps.push(json!({"op": "leave", "room": room, "user": user}));
            steps.push(json!({"op": "join", "room": room, "user": user}));
        } else if k.is_multiple_of(100) && !last3.is_empty() {
            steps.push(json!({
                "op": "client_serve", "viewer": local[1], "event_ids": last3,
                "expect": {"verdicts": vec!["serve"; last3.len()]},
            }));
        } else if k % 100 == 50 && !last3.is_empty() {
            steps.push(json!({
                "op": "federation_serve", "server": "remote.example", "event_ids": last3,
            }));
        } else if k.is_multiple_of(10) {
            steps.push(json!({"op": "advance", "ms": 1000}));
        } else {
            let id = format!("$e{k}");
            steps.push(json!({
                "op": "send", "room": room, "sender": senders[k % senders.len()],
                "event_id": id, "content": {"msgtype": "m.text", "body": format!("message {k}")},
            }));
            recent[r].push(id);
            if recent[r].len() > 3 {
                recent[r].remove(0);
            }
        }
    }
    json!({
        "description": format!("benchmark: {n} steps, mostly sends"),
        "server_name": "hs.example",
        "steps": steps,
    })
}

/// Replay the file once, the JSON lines and the failures going to a sink; panics on bad input
/// or a failed expectation (the benchmark would measure the wrong thing).
fn replay(path: &Path) -> usize {
    let (mut lines, mut human) = (std::io::sink(), std::io::sink());
    let result = run_file(
        path,
        &mut Output {
            lines: Some(&mut lines),
            human: &mut human,
        },
    )
    .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    assert!(result.failed.is_empty(), "failed: {:?}", result.failed);
    result.steps
}

fn benches(c: &mut Criterion, dir: &Path) {
    let mut group = c.benchmark_group(GROUP);
    // A 100,000-step replay takes about a second: the fewest samples criterion allows, each
    // of one replay (or a few for the small sizes), and a short warm-up.
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(100));
    for n in SIZES {
        let path = dir.join(format!("scenario-{n}.json"));
        let text = serde_json::to_string(&scenario(n)).expect("scenario JSON");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // One replay to check the scenario, timed to give criterion the time 10 samples need
        // on this machine (at least 2 s).
        let started = Instant::now();
        assert_eq!(replay(&path), n, "the scenario has {n} steps");
        let once = started.elapsed();
        group
            .measurement_time((once * 12).max(Duration::from_secs(2)))
            .throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &path, |b, path| {
            b.iter(|| black_box(replay(path)))
        });
    }
    group.finish();
}

/// Median in nanoseconds from criterion's estimates of `replay/<n>`.
fn median_ns(n: usize) -> Option<f64> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target
        .join("criterion")
        .join(GROUP)
        .join(n.to_string())
        .join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v["median"]["point_estimate"].as_f64()
}

/// Time per step at each size, and each size's time relative to the smallest, next to the
/// ratio of the sizes: linear replay has a flat time per step and equal ratios.
fn summary() {
    println!("\nreplay medians (p50), this run:");
    let Some(base) = median_ns(SIZES[0]) else {
        println!("  (no estimates: run without a filter to see the summary)");
        return;
    };
    for n in SIZES {
        let Some(ns) = median_ns(n) else { continue };
        println!(
            "  {n:>7} steps: {:>8.1} ms, {:>5.2} us/step, time x{:.2} for steps x{:.1}",
            ns / 1e6,
            ns / 1e3 / n as f64,
            ns / base,
            n as f64 / SIZES[0] as f64
        );
    }
}

fn main() {
    let dir = std::env::temp_dir().join(format!("mxpolicy-replay-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut criterion = Criterion::default().configure_from_args();
    benches(&mut criterion, &dir);
    std::fs::remove_dir_all(&dir).ok();
    criterion.final_summary();
    // `cargo bench` passes `--bench`; without it (`cargo test --benches`) criterion runs each
    // case once as a test and writes no estimates.
    if std::env::args().any(|a| a == "--bench") {
        summary();
    }
}
