//! Hot swap: how long applying a 3-plugin policy set takes, and what continuous swapping does
//! to the latency of the calls around it.
//!
//! - `swap/warm` (criterion): `Host::apply` of a set whose components this process already
//!   compiled (the swap an operator's config change causes): read, hash, describe, init, swap.
//! - `swap/disk-cache` (criterion): the first apply of a restarted host whose components are in
//!   the on-disk compile cache (MAC check and deserialize instead of compiling).
//! - `swap/cold` (criterion): the first apply with no cache at all (Cranelift compiles all three).
//! - then, outside criterion, on-send latency percentiles of one calling thread for a few
//!   seconds without swaps, and the same with a second thread applying the set continuously
//!   (alternating two configs and orders), with the ratio of the two p99s.
//!
//! The set: consent (the caller has consented, so the whole chain runs), erasure, and the
//! keyword filter. Needs the plugins built first: `cargo xtask build-plugins`, then
//! `cargo bench -p mxpolicy-host --bench swap`.

use std::{
    hint::black_box,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use criterion::{BatchSize, Criterion, criterion_group};
use mxpolicy_host::{
    Host, MemoryHomeserver, MemoryStore, PolicySet, SendEvent, UserKind,
    ruma::{RoomVersionId, owned_room_id, owned_server_name, owned_user_id},
};
use serde_json::json;

fn plugin(name: &str) -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = dir.join("plugins").join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} missing: run `cargo xtask build-plugins` first",
        path.display()
    );
    path
}

/// A directory with the three components and two sets, `a.toml` and `b.toml` (another
/// keyword list, erasure and the keyword filter in the other order).
fn sets(dir: &Path) -> (PolicySet, PolicySet) {
    std::fs::create_dir_all(dir).expect("dir");
    for name in ["consent", "erasure", "keyword-filter"] {
        std::fs::copy(plugin(name), dir.join(format!("{name}.wasm"))).expect("copy");
    }
    let consent = "[[plugin]]\ninstance = \"consent\"\npath = \"consent.wasm\"\n\
        config = { version = \"1.0\", public_baseurl = \"https://hs.example/\", \
        form_secret = \"bench-secret-bench-secret\", policy_text = \"Be kind.\" }\n";
    let erasure = "[[plugin]]\ninstance = \"erasure\"\npath = \"erasure.wasm\"\n";
    let filter = |word: &str| {
        format!(
            "[[plugin]]\ninstance = \"spam\"\npath = \"keyword-filter.wasm\"\n\
             config = {{ keywords = [\"{word}\"] }}\n"
        )
    };
    let head = "[engine]\ncache_dir = \"cache\"\n";
    std::fs::write(
        dir.join("a.toml"),
        format!("{head}{consent}{erasure}{}", filter("buy now")),
    )
    .expect("write");
    std::fs::write(
        dir.join("b.toml"),
        format!("{head}{consent}{}{erasure}", filter("free crypto")),
    )
    .expect("write");
    (
        PolicySet::from_file(dir.join("a.toml")).expect("a"),
        PolicySet::from_file(dir.join("b.toml")).expect("b"),
    )
}

fn host(cache: Option<&Path>) -> Host {
    let hs = Arc::new(MemoryHomeserver::new(owned_server_name!("hs.example")));
    let mut builder = Host::builder(hs, Arc::new(MemoryStore::new()));
    if let Some(dir) = cache {
        builder = builder.compile_cache(dir);
    }
    builder.build().expect("host")
}

fn send_event() -> SendEvent {
    SendEvent {
        sender: owned_user_id!("@alice:hs.example"),
        sender_kind: UserKind::Regular,
        room_id: owned_room_id!("!room:hs.example"),
        room_version: RoomVersionId::V11,
        event_type: "m.room.message".into(),
        state_key: None,
        content: json!({"msgtype": "m.text", "body": "hello"}),
        origin_server_ts: 1_700_000_000_000,
        is_server_notices_room: false,
    }
}

/// Let alice consent through the consent plugin's admin command, so on-send runs the chain.
fn consent(host: &Host) {
    let answer = host
        .admin(
            "consent",
            "record-consent",
            &json!({"user": "@alice:hs.example", "version": "1.0"}),
        )
        .expect("admin");
    black_box(answer);
    let d = host.on_send(&send_event());
    assert!(d.outcome.is_allow(), "{d:?}");
}

fn bench_dir() -> PathBuf {
    std::env::temp_dir().join(format!("mxpolicy-bench-swap-{}", std::process::id()))
}

fn swap(c: &mut Criterion) {
    let dir = bench_dir();
    let (a, b) = sets(&dir);
    let mut group = c.benchmark_group("swap");
    group.measurement_time(Duration::from_secs(5));
    let running = host(Some(&dir.join("cache")));
    running.apply(&a).expect("apply");
    let mut flip = false;
    group.bench_function("warm", |bench| {
        bench.iter(|| {
            flip = !flip;
            black_box(running.apply(if flip { &b } else { &a }).expect("apply"));
        })
    });
    group.sample_size(20);
    group.bench_function("disk-cache", |bench| {
        bench.iter_batched(
            || host(Some(&dir.join("cache"))),
            |h| {
                black_box(h.apply(&a).expect("apply"));
                h
            },
            BatchSize::PerIteration,
        )
    });
    group.sample_size(10);
    group.bench_function("cold", |bench| {
        bench.iter_batched(
            || host(None),
            |h| {
                black_box(h.apply(&a).expect("apply"));
                h
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// On-send latencies (ns) of one thread calling for `time`, sorted, and the calls that did
/// not allow (a plugin failure: with the default 10 ms deadline, a call descheduled long
/// enough times out).
fn latencies(host: &Host, time: Duration) -> (Vec<u64>, usize) {
    let event = send_event();
    let mut out = Vec::new();
    let mut failed = 0;
    let end = Instant::now() + time;
    while Instant::now() < end && out.len() < 2_000_000 {
        let start = Instant::now();
        let d = black_box(host.on_send(&event));
        out.push(u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX));
        if !d.outcome.is_allow() || !d.failures.is_empty() {
            failed += 1;
        }
    }
    out.sort_unstable();
    (out, failed)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(0) as f64 / 1000.0
}

fn during_swaps() {
    let dir = bench_dir();
    let (a, b) = sets(&dir);
    let host = Arc::new(host(None));
    host.apply(&a).expect("apply");
    consent(&host);
    let time = Duration::from_secs(4);
    let (quiet, quiet_failed) = latencies(&host, time);
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let swapper = {
        let (host, stop, swaps) = (host.clone(), stop.clone(), swaps.clone());
        std::thread::spawn(move || {
            let mut flip = false;
            while !stop.load(Ordering::Relaxed) {
                flip = !flip;
                host.apply(if flip { &b } else { &a }).expect("apply");
                swaps.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let (busy, busy_failed) = latencies(&host, time);
    stop.store(true, Ordering::Relaxed);
    swapper.join().expect("swapper");
    println!("\non-send through consent, erasure and keyword-filter, one calling thread:");
    println!(
        "  {:<16} {:>8} {:>7} {:>9} {:>9} {:>9} {:>9}",
        "", "calls", "failed", "p50 us", "p99 us", "p99.9 us", "max us"
    );
    for (name, l, failed) in [
        ("without swaps", &quiet, quiet_failed),
        ("during swaps", &busy, busy_failed),
    ] {
        println!(
            "  {name:<16} {:>8} {failed:>7} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            l.len(),
            percentile(l, 0.5),
            percentile(l, 0.99),
            percentile(l, 0.999),
            percentile(l, 1.0)
        );
    }
    println!(
        "  {} swaps in {time:?}; p99 during swaps / p99 without: {:.2}x",
        swaps.load(Ordering::Relaxed),
        percentile(&busy, 0.99) / percentile(&quiet, 0.99)
    );
}

criterion_group!(benches, swap);

fn main() {
    if std::env::var_os("MXPOLICY_BENCH_LATENCY_ONLY").is_some() {
        during_swaps();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
    during_swaps();
    let _ = std::fs::remove_dir_all(bench_dir());
}
