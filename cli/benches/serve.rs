//! `mxpolicy serve` latency: on-send over HTTP on loopback with keep-alive, against the same
//! decision made in process, at concurrency 1 and 32 (issue 13).
//!
//! - The set is `mxpolicy init`'s sample (consent, erasure, media ownership and the keyword
//!   filter, SQLite state, a compile cache), written to a temporary directory; the service
//!   runs it in a background thread through [`mxpolicy::serve::run_until`] on a free loopback
//!   port, and is stopped through its stop future at the end.
//! - The sample user consents first (the consent plugin's `record-consent` admin command), so
//!   every on-send runs the whole chain and is allowed; a call that is not (a plugin failure,
//!   for instance a call descheduled past the 10 ms hook deadline) is counted as failed.
//! - HTTP: each of 1 or 32 client threads owns a `ureq` agent, so each keeps its own
//!   connection, and sends `POST /_mxpolicy/v1/hooks/on-send` back to back (closed loop) for
//!   3 s or until 200,000 calls in all, after a short warm-up. A call is timed from before
//!   the client builds the request to after it has read the response's last byte.
//! - In process: a host built from the same set with its own SQLite file (the same plugins,
//!   config, outbox setting and homeserver facts as the service's), the same user consented,
//!   `Host::on_send` from 1 or 32 threads sharing the host.
//! - Open loop: 32 connections (HTTP) or 32 threads (in process), each on a fixed schedule,
//!   500, 1,000 and 2,000 calls per second all together: the latency at a given load rather
//!   than at saturation (a closed loop of 32 saturates two cores, and its latency is then
//!   32 / throughput, whatever the service does).
//! - Floors of the HTTP path, same client and server: the 404 of an unknown path (answered by
//!   the router) and `GET /health` (through the blocking pool, one store read, no plugin).
//!
//! It prints calls, throughput, p50, p99 and p99.9 for each, and the HTTP / in-process ratios.
//! Needs the plugins built first: `cargo xtask build-plugins`, then
//! `cargo bench -p mxpolicy --bench serve` (about 45 s once built).

use std::{
    hint::black_box,
    io::{self, Write},
    net::TcpListener,
    path::Path,
    sync::{
        Barrier,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

mod common;

use common::{agent, plugins_dir};
use mxpolicy::{init::InitArgs, serve::facts::Facts};
use mxpolicy_host::{Host, PolicySet, SendEvent};
use serde_json::{Value, json};

/// The sample set's homeserver and user.
const SERVER_NAME: &str = "localhost";
const USER: &str = "@alice:localhost";
/// How long each run measures, and the most calls it makes (all threads together).
const TIME: Duration = Duration::from_secs(3);
const MAX_CALLS: usize = 200_000;
/// Calls each thread makes before the measurement (connections open, instances warm).
const WARMUP_CALLS: usize = 50;
const CONCURRENCY: [usize; 2] = [1, 32];
/// The open-loop runs: this many connections, each on a schedule, these many calls per
/// second all together.
const PACED_CONNECTIONS: usize = 32;
const RATES: [f64; 3] = [500.0, 1000.0, 2000.0];
/// The target of issue 13: p99 over HTTP at concurrency 32.
const TARGET_P99_US: f64 = 1000.0;

/// A free loopback port: bind port 0 and let it go (another process could take it in
/// between; the service then fails to bind and says so).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// The service's `ready` writer: every write goes to the bench's thread.
struct ChannelWriter(mpsc::Sender<Vec<u8>>);

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // The bench may have stopped listening; the service must not fail for it.
        let _ = self.0.send(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The running service: its base URL, stop trigger and thread.
struct Service {
    base: String,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: thread::JoinHandle<Result<(), String>>,
}

impl Service {
    fn start(file: &Path) -> Self {
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let file = file.to_owned();
        let thread = thread::Builder::new()
            .name("bench-serve".into())
            .spawn(move || {
                let mut ready = ChannelWriter(tx);
                mxpolicy::serve::run_until(&file, &mut ready, async move {
                    let _ = stop_rx.await;
                })
            })
            .expect("spawn the service thread");
        // The first line: "mxpolicy serve: listening on http://ADDR (generation ...)". A cold
        // start compiles the four plugins first.
        let mut text = Vec::new();
        while !text.contains(&b'\n') {
            match rx.recv_timeout(Duration::from_secs(300)) {
                Ok(bytes) => text.extend_from_slice(&bytes),
                Err(_) => {
                    let result = thread.join().expect("the service thread panicked");
                    panic!("the service did not start: {result:?}");
                }
            }
        }
        let text = String::from_utf8_lossy(&text);
        let line = text.lines().next().unwrap_or_default().to_owned();
        println!("{line}");
        let base = line
            .split_once("listening on ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in the service's first line: {line:?}"))
            .to_owned();
        // The rest of the welcome text is not needed; keep draining it so writes never block.
        thread::spawn(move || while rx.recv().is_ok() {});
        Self { base, stop, thread }
    }

    fn stop(self) {
        let _ = self.stop.send(());
        self.thread
            .join()
            .expect("the service thread panicked")
            .expect("the service stopped with an error");
    }
}

fn wait_healthy(agent: &ureq::Agent, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = agent.get(format!("{base}/health")).call()
            && r.status() == 200
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "GET {base}/health never answered 200"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// POST `body` to `url`; the status and the answer as JSON.
fn post_json(agent: &ureq::Agent, url: &str, auth: &str, body: &Value) -> (u16, Value) {
    let mut r = agent
        .post(url)
        .header("Authorization", auth)
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let text = r.body_mut().read_to_string().expect("read the answer");
    let answer = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (r.status().as_u16(), answer)
}

/// The on-send request, the same as the service's sample `curl`.
fn on_send_request() -> Value {
    json!({
        "context": {
            "sender": USER,
            "room_id": format!("!bench:{SERVER_NAME}"),
            "room_version": "11",
            "event_type": "m.room.message",
            "content": {"msgtype": "m.text", "body": "hello"},
            "origin_server_ts": 1_700_000_000_000u64,
        }
    })
}

/// One measured run: sorted latencies (ns), failed calls and the first failure, wall time.
struct Run {
    latencies: Vec<u64>,
    failed: usize,
    first_failure: Option<String>,
    elapsed: Duration,
}

impl Run {
    fn percentile_us(&self, p: f64) -> f64 {
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies.get(i).copied().unwrap_or(0) as f64 / 1000.0
    }

    fn per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// `threads` threads, each calling its own `make(i)()` (`Ok`: the call was allowed, without
/// failures; `Err`: what went wrong) after `WARMUP_CALLS` unmeasured calls, for `TIME` or
/// until `MAX_CALLS` calls in all: back to back (closed loop) without a `rate`, else each
/// thread on a fixed schedule making `rate` calls per second all together (open loop). On a
/// schedule, a call that starts late because the one before it ran past its slot is timed
/// from its slot, so the wait counts (no coordinated omission); one started on time is timed
/// from its start (not from the slot, which would add the sleep's wake-up slack).
fn measure<F, M>(threads: usize, rate: Option<f64>, make: M) -> Run
where
    M: Fn(usize) -> F + Sync,
    F: FnMut() -> Result<(), String>,
{
    let barrier = Barrier::new(threads);
    let taken = AtomicUsize::new(0);
    type Worker = (Vec<u64>, usize, Option<String>, Instant, Instant);
    let results: Vec<Worker> = thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|i| {
                let (barrier, taken, make) = (&barrier, &taken, &make);
                s.spawn(move || {
                    let mut call = make(i);
                    for _ in 0..WARMUP_CALLS {
                        let _ = black_box(call());
                    }
                    barrier.wait();
                    let started = Instant::now();
                    let end = started + TIME;
                    let mut latencies = Vec::with_capacity(MAX_CALLS / threads + 1);
                    let (mut failed, mut first_failure) = (0, None);
                    let every = rate.map(|r| Duration::from_secs_f64(threads as f64 / r));
                    let mut slot =
                        started + every.map_or(Duration::ZERO, |e| e * i as u32 / threads as u32);
                    while slot < end
                        && Instant::now() < end
                        && taken.fetch_add(1, Ordering::Relaxed) < MAX_CALLS
                    {
                        let now = Instant::now();
                        let start = match every {
                            Some(every) if now < slot => {
                                thread::sleep(slot - now);
                                slot += every;
                                Instant::now()
                            }
                            Some(every) => {
                                let late = slot;
                                slot += every;
                                late
                            }
                            None => now,
                        };
                        let result = black_box(call());
                        latencies
                            .push(u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX));
                        if let Err(e) = result {
                            failed += 1;
                            first_failure.get_or_insert(e);
                        }
                    }
                    (latencies, failed, first_failure, started, Instant::now())
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a worker panicked"))
            .collect()
    });
    let started = results
        .iter()
        .map(|r| r.3)
        .min()
        .expect("one thread at least");
    let finished = results
        .iter()
        .map(|r| r.4)
        .max()
        .expect("one thread at least");
    let mut latencies: Vec<u64> = results.iter().flat_map(|r| r.0.iter().copied()).collect();
    latencies.sort_unstable();
    Run {
        latencies,
        failed: results.iter().map(|r| r.1).sum(),
        first_failure: results.iter().find_map(|r| r.2.clone()),
        elapsed: finished - started,
    }
}

/// Whether a 200 answer's body is an allow without failures (serde_json's compact output).
fn allowed(body: &[u8]) -> bool {
    let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    has(br#""verdict":"allow""#) && has(br#""failures":[]"#)
}

/// What one HTTP call returned: `Ok` for a 200 whose body `accept`s.
fn answered(
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    status: u16,
    accept: fn(&[u8]) -> bool,
) -> Result<(), String> {
    let mut r = result.map_err(|e| e.to_string())?;
    // Read to the end, so the connection goes back to the agent's pool.
    let answer = r.body_mut().read_to_vec().map_err(|e| e.to_string())?;
    if r.status() == status && accept(&answer) {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            r.status(),
            String::from_utf8_lossy(&answer)
        ))
    }
}

/// On-send over HTTP from `threads` connections, closed loop or at `rate` calls per second.
fn http_on_send(base: &str, auth: &str, threads: usize, rate: Option<f64>) -> Run {
    let url = format!("{base}/_mxpolicy/v1/hooks/on-send");
    let body = on_send_request().to_string();
    measure(threads, rate, |_| {
        let agent = agent();
        let (url, auth, body) = (url.as_str(), auth, body.as_bytes());
        move || {
            let sent = agent
                .post(url)
                .header("Authorization", auth)
                .header("Content-Type", "application/json")
                .send(body);
            answered(sent, 200, allowed)
        }
    })
}

/// `GET base+path` answering `status`, at each concurrency: the floors of the HTTP path on
/// this machine, same client, same server. The 404 of an unknown path is answered by the
/// router itself (no body, no blocking pool, no plugin); `/health` goes through the blocking
/// pool, as a hook call does, and reads the store once (no plugin).
fn get_runs(base: &str, path: &str, status: u16) -> Vec<Run> {
    let url = format!("{base}{path}");
    CONCURRENCY
        .iter()
        .map(|&threads| {
            measure(threads, None, |_| {
                let agent = agent();
                let url = url.as_str();
                move || answered(agent.get(url).call(), status, |_| true)
            })
        })
        .collect()
}

/// The host the service builds, from the same set, with its own SQLite file.
fn in_process_host(set: &PolicySet, dir: &Path) -> Host {
    common::service_host(set, SERVER_NAME, dir, &dir.join("cache"), USER)
}

/// On-send in process from `threads` threads sharing `host`, closed loop or at `rate` calls
/// per second: what the service runs for a request without facts.
fn in_process_on_send(host: &Host, threads: usize, rate: Option<f64>) -> Run {
    let context = on_send_request()["context"].clone();
    let event: SendEvent = serde_json::from_value(context).expect("a SendEvent");
    let first = host.on_send(&event);
    assert!(
        first.outcome.is_allow() && first.failures.is_empty(),
        "in process: {first:?}"
    );
    measure(threads, rate, |_| {
        let event = &event;
        move || {
            let (d, _) = mxpolicy::serve::facts::with(Facts::default(), || host.on_send(event));
            if d.outcome.is_allow() && d.failures.is_empty() {
                Ok(())
            } else {
                Err(format!("{:?}; {:?}", d.outcome, d.failures))
            }
        }
    })
}

fn main() {
    let dir = std::env::temp_dir().join(format!("mxpolicy-bench-serve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = free_port();
    let file = mxpolicy::init::run(
        &InitArgs {
            dir: dir.clone(),
            plugins: plugins_dir(),
            port,
            server_name: SERVER_NAME.into(),
        },
        &mut io::sink(),
    )
    .expect("mxpolicy init");
    let secret = std::fs::read_to_string(dir.join("api-secret")).expect("read the api secret");
    let auth = format!("Bearer {}", secret.trim());

    let service = Service::start(&file);
    let base = service.base.clone();
    let (http, paced, floor, health) = {
        let agent = agent();
        wait_healthy(&agent, &base);
        let (status, answer) = post_json(
            &agent,
            &format!("{base}/_mxpolicy/v1/admin/plugins/consent/commands/record-consent"),
            &auth,
            &json!({"user": USER, "version": "1.0"}),
        );
        assert_eq!(status, 200, "record-consent: {answer}");
        let (status, answer) = post_json(
            &agent,
            &format!("{base}/_mxpolicy/v1/hooks/on-send"),
            &auth,
            &on_send_request(),
        );
        assert_eq!(status, 200, "on-send: {answer}");
        assert_eq!(answer["outcome"]["verdict"], "allow", "on-send: {answer}");
        assert!(
            allowed(answer.to_string().as_bytes()),
            "on-send answer not recognised as an allow: {answer}"
        );
        let closed: Vec<Run> = CONCURRENCY
            .iter()
            .map(|&threads| http_on_send(&base, &auth, threads, None))
            .collect();
        let paced: Vec<Run> = RATES
            .iter()
            .map(|&rate| http_on_send(&base, &auth, PACED_CONNECTIONS, Some(rate)))
            .collect();
        let floor = get_runs(&base, "/no-such-endpoint", 404);
        let health = get_runs(&base, "/health", 200);
        (closed, paced, floor, health)
    };

    let set = PolicySet::from_file(&file).expect("read the policy set");
    let host = in_process_host(&set, &dir);
    let local: Vec<Run> = CONCURRENCY
        .iter()
        .map(|&threads| in_process_on_send(&host, threads, None))
        .collect();
    let local_paced: Vec<Run> = RATES
        .iter()
        .map(|&rate| in_process_on_send(&host, PACED_CONNECTIONS, Some(rate)))
        .collect();
    drop(host);

    service.stop();
    let _ = std::fs::remove_dir_all(&dir);

    report(&http, &local, &floor, &health);
    report_paced(&paced, &local_paced);
}

fn report(http: &[Run], local: &[Run], floor: &[Run], health: &[Run]) {
    println!(
        "\non-send through consent, erasure, media and spam (a fresh instance per plugin call, \
         SQLite state), {TIME:?} per run, closed loop:"
    );
    println!(
        "  {:<16} {:>5} {:>8} {:>7} {:>9} {:>8} {:>8} {:>9} {:>9}",
        "", "conc", "calls", "failed", "calls/s", "p50 us", "p99 us", "p99.9 us", "max us"
    );
    let rows = [
        ("HTTP on-send", http),
        ("in process", local),
        ("HTTP 404 (floor)", floor),
        ("HTTP /health", health),
    ];
    for (name, runs) in rows {
        for (threads, run) in CONCURRENCY.iter().zip(runs) {
            println!(
                "  {name:<16} {threads:>5} {:>8} {:>7} {:>9.0} {:>8.1} {:>8.1} {:>9.1} {:>9.1}",
                run.latencies.len(),
                run.failed,
                run.per_second(),
                run.percentile_us(0.5),
                run.percentile_us(0.99),
                run.percentile_us(0.999),
                run.percentile_us(1.0)
            );
        }
    }
    for (name, runs) in rows {
        for (threads, run) in CONCURRENCY.iter().zip(runs) {
            if let Some(failure) = &run.first_failure {
                let failure: String = failure.chars().take(300).collect();
                println!("  first failure, {name} at concurrency {threads}: {failure}");
            }
        }
    }
    for (i, threads) in CONCURRENCY.iter().enumerate() {
        println!(
            "  HTTP / in process at concurrency {threads}: p50 {:.2}x, p99 {:.2}x",
            http[i].percentile_us(0.5) / local[i].percentile_us(0.5),
            http[i].percentile_us(0.99) / local[i].percentile_us(0.99)
        );
    }
    let last = CONCURRENCY.len() - 1;
    let p99 = http[last].percentile_us(0.99);
    println!(
        "  target: HTTP p99 < {TARGET_P99_US:.0} us at concurrency {}: {} ({p99:.1} us)",
        CONCURRENCY[last],
        if p99 < TARGET_P99_US { "met" } else { "missed" }
    );
}

fn report_paced(http: &[Run], local: &[Run]) {
    println!(
        "\non-send from {PACED_CONNECTIONS} connections (HTTP) or threads (in process), open \
         loop (each on a fixed schedule), {TIME:?} per run:"
    );
    println!(
        "  {:<11} {:>9} {:>8} {:>7} {:>9} {:>8} {:>8} {:>9} {:>9}",
        "", "offered/s", "calls", "failed", "calls/s", "p50 us", "p99 us", "p99.9 us", "max us"
    );
    for (name, runs) in [("HTTP", http), ("in process", local)] {
        for (rate, run) in RATES.iter().zip(runs) {
            println!(
                "  {name:<11} {rate:>9.0} {:>8} {:>7} {:>9.0} {:>8.1} {:>8.1} {:>9.1} {:>9.1}",
                run.latencies.len(),
                run.failed,
                run.per_second(),
                run.percentile_us(0.5),
                run.percentile_us(0.99),
                run.percentile_us(0.999),
                run.percentile_us(1.0)
            );
            if let Some(failure) = &run.first_failure {
                let failure: String = failure.chars().take(300).collect();
                println!("    first failure: {failure}");
            }
        }
    }
    for ((rate, http), local) in RATES.iter().zip(http).zip(local) {
        println!(
            "  HTTP / in process at {rate:.0}/s: p50 {:.2}x, p99 {:.2}x",
            http.percentile_us(0.5) / local.percentile_us(0.5),
            http.percentile_us(0.99) / local.percentile_us(0.99)
        );
    }
}
