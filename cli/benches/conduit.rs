//! Conduit with and without the policies: the latency of a message send and of `/messages`,
//! p50 and p99 on loopback, the same Conduit binary in the same run (issue 14; target: the
//! policies add under 5% to the send p50).
//!
//! - Two Conduit processes from the binary `MXPOLICY_CONDUIT_BIN` (the patched Conduit of
//!   `integrations/conduit/`), each with its own temporary directory, SQLite database and
//!   config (server name `localhost`, loopback, registration open, no federation): "policies"
//!   on port 6301 with `mxpolicy_policy_set` set to `mxpolicy init`'s sample set (consent,
//!   erasure, media ownership, keyword filter; SQLite state, a compile cache; `consent_uri`s on
//!   that Conduit's port; plugins from `target/plugins`), "plain" on port 6302 without it.
//!   `MXPOLICY_CONDUIT_BENCH_PORTS=A,B` overrides the ports, `MXPOLICY_CONDUIT_BENCH_SET` the
//!   set (a subset of the sample's plugins, say, to see what each costs), and
//!   `MXPOLICY_CONDUIT_BENCH_INSTANCE_MODE=reuse` gives every plugin of the sample warm,
//!   reused instances instead of a fresh one per call. Both are killed at
//!   the end, and on a panic (a guard's `Drop`); the tail of a Conduit's log is printed when
//!   it does not start or register.
//! - On each: one user registers (`m.login.dummy`); on "policies" the user first accepts the
//!   consent policy (createRoom is refused with `M_CONSENT_NOT_GIVEN` and a `consent_uri`,
//!   whose query is posted as the consent page's form), then creates a room. 50 sends and 10
//!   `/messages` warm each server up, so the room has history and the connections are open.
//! - Measured: `PUT /_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}` (a fresh
//!   transaction id, a short text body) and `GET .../messages?dir=b&limit=20`, closed loop,
//!   one call at a time, one `ureq` agent per server keeping its connection alive. A call is
//!   timed from before the client builds the request to after it has read the answer's last
//!   byte; a call that does not answer 200 is counted as failed (and still timed).
//! - Interleaved, so that the machine's noise (another build, a vCPU stolen) hits both alike:
//!   50 rounds; in each, a block of 50 sends on one server, then on the other, then 25
//!   `/messages` on each, the first server alternating from round to round. At most 120 s of
//!   measurement: rounds stop early past it (both servers always finish the round).
//! - Then, both Conduits stopped, the on-send decision alone: the same set in process (a host
//!   built as `mxpolicy serve` builds it, its own SQLite file, the sender consented), 1,000
//!   calls back to back, then 1,000 calls one every 2 ms (the thread sleeping in between, as
//!   a Conduit's does between sends): what the policies cost without Conduit around them.
//!
//! It prints calls, failures, p50, p99 and max for both operations on both servers, the
//! ratios policies / plain (p50, p99) with the spread of the per-round p50 ratio, the
//! in-process decision, and the send-p50 target. The Conduit binary's path is printed, with
//! its build profile as guessed from the path (`target/release/...`) or as given in
//! `MXPOLICY_CONDUIT_PROFILE`. Needs the plugins built first (`cargo xtask build-plugins`),
//! then `MXPOLICY_CONDUIT_BIN=/path/to/conduit cargo bench -p mxpolicy --bench conduit`
//! (about 15 s with a release Conduit once built, 1-2 min with a debug one).

use std::{
    fs, io,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

mod common;

use common::{agent, plugins_dir};
use mxpolicy::{init::InitArgs, serve::facts::Facts};
use mxpolicy_host::{PolicySet, SendEvent};
use serde_json::{Value, json};

const SERVER_NAME: &str = "localhost";
/// The ports of the Conduit with the policies and of the one without.
const PORTS: (u16, u16) = (6301, 6302);
/// How long a Conduit may take to answer `/_matrix/client/versions`: the first start with
/// the policies compiles the four plugins (the set's compile cache makes later starts fast).
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Unmeasured calls per server before the measurement.
const WARMUP_SENDS: usize = 50;
const WARMUP_MESSAGES: usize = 10;
/// The measurement: this many rounds of this many sends and `/messages` per server.
const ROUNDS: usize = 50;
const SENDS_PER_ROUND: usize = 50;
const MESSAGES_PER_ROUND: usize = 25;
/// No round starts after this much measuring.
const TIME: Duration = Duration::from_secs(120);
/// The decision alone, in process: warm-up and measured calls.
const IN_PROCESS_WARMUP: usize = 50;
const IN_PROCESS_CALLS: usize = 1000;
/// The paced in-process run: one call started every this often (about as often as a send
/// reaches one of the two Conduits when they alternate).
const IN_PROCESS_EVERY: Duration = Duration::from_millis(2);
/// Issue 14's target: the policies add under this much to the send p50.
const TARGET_SEND_P50_OVERHEAD: f64 = 0.05;

fn ports() -> (u16, u16) {
    let Ok(text) = std::env::var("MXPOLICY_CONDUIT_BENCH_PORTS") else {
        return PORTS;
    };
    let parse = |s: &str| {
        s.trim()
            .parse::<u16>()
            .unwrap_or_else(|e| panic!("MXPOLICY_CONDUIT_BENCH_PORTS={text:?}: {e}"))
    };
    match text.split_once(',') {
        Some((a, b)) => (parse(a), parse(b)),
        None => panic!("MXPOLICY_CONDUIT_BENCH_PORTS={text:?}: expected two ports, A,B"),
    }
}

/// The build profile of the Conduit binary: as given, else guessed from its path.
fn profile(bin: &Path) -> String {
    if let Ok(profile) = std::env::var("MXPOLICY_CONDUIT_PROFILE") {
        return profile;
    }
    let names: Vec<_> = bin.components().map(|c| c.as_os_str().to_owned()).collect();
    if names.iter().any(|n| n == "release") {
        "release (from its path)".into()
    } else if names.iter().any(|n| n == "debug") {
        "debug (from its path)".into()
    } else {
        "unknown (set MXPOLICY_CONDUIT_PROFILE)".into()
    }
}

/// A running Conduit, killed when dropped (also when the bench panics).
struct Conduit {
    name: &'static str,
    base: String,
    log: PathBuf,
    child: Child,
}

impl Conduit {
    /// Start `bin` in `dir` (config, database and log there) on `port`, with the policy set
    /// `set` if any, and wait until it answers.
    fn start(name: &'static str, bin: &Path, dir: &Path, port: u16, set: Option<&Path>) -> Self {
        let db = dir.join("db");
        fs::create_dir_all(&db).unwrap_or_else(|e| panic!("create {}: {e}", db.display()));
        let mut config = format!(
            "[global]\nserver_name = \"{SERVER_NAME}\"\nlog = \"warn\"\n\
             database_backend = \"sqlite\"\ndatabase_path = {db}\n\
             address = \"127.0.0.1\"\nport = {port}\nallow_registration = true\n\
             allow_federation = false\nallow_check_for_updates = false\ntrusted_servers = []\n",
            db = toml_string(&db)
        );
        if let Some(set) = set {
            config.push_str(&format!("mxpolicy_policy_set = {}\n", toml_string(set)));
        }
        let config_file = dir.join("conduit.toml");
        fs::write(&config_file, config).expect("write conduit.toml");
        let log = dir.join("conduit.log");
        let out = fs::File::create(&log).expect("create conduit.log");
        let err = out.try_clone().expect("clone the log's handle");
        let child = Command::new(bin)
            .env("CONDUIT_CONFIG", &config_file)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let mut conduit = Self {
            name,
            base: format!("http://127.0.0.1:{port}"),
            log,
            child,
        };
        conduit.wait_ready();
        conduit
    }

    fn wait_ready(&mut self) {
        let agent = agent();
        let url = format!("{}/_matrix/client/versions", self.base);
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for Conduit") {
                panic!(
                    "Conduit ({}) exited before answering: {status}\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if let Ok(mut r) = agent.get(&url).call()
                && r.status() == 200
            {
                let _ = r.body_mut().read_to_vec();
                println!(
                    "Conduit ({}) answers on {} after {:.1} s",
                    self.name,
                    self.base,
                    started.elapsed().as_secs_f64()
                );
                return;
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "Conduit ({}) did not answer {url} within {START_TIMEOUT:?}\n{}",
                self.name,
                self.log_tail()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!("last lines of {}:\n{tail}", self.log.display())
    }
}

impl Drop for Conduit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TOML basic string holding `path`.
fn toml_string(path: impl AsRef<Path>) -> String {
    Value::String(path.as_ref().display().to_string()).to_string()
}

/// The status and the answer as JSON (or as a string if it is not JSON).
fn answer(
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    what: &str,
) -> (u16, Value) {
    let mut r = result.unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = r
        .body_mut()
        .read_to_string()
        .unwrap_or_else(|e| panic!("{what}: read the answer: {e}"));
    let answer = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (r.status().as_u16(), answer)
}

/// A room id in a URL path.
fn path_segment(s: &str) -> String {
    s.replace('!', "%21").replace(':', "%3A")
}

/// One server as the bench's client sees it: its agent, the user's token, the room.
struct Client<'a> {
    conduit: &'a Conduit,
    agent: ureq::Agent,
    auth: String,
    send_url: String,
    messages_url: String,
    txn: usize,
}

impl<'a> Client<'a> {
    /// Register a user, accept the consent policy if asked to, create a room.
    fn set_up(conduit: &'a Conduit) -> Self {
        let agent = agent();
        let base = &conduit.base;
        let what = format!("register on {}", conduit.name);
        let (status, body) = answer(
            agent
                .post(format!("{base}/_matrix/client/v3/register"))
                .header("Content-Type", "application/json")
                .send(
                    json!({
                        "username": "bench",
                        "password": "bench password",
                        "auth": {"type": "m.login.dummy"},
                    })
                    .to_string(),
                ),
            &what,
        );
        assert_eq!(status, 200, "{what}: {body}\n{}", conduit.log_tail());
        let token = body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no access_token in {body}"));
        let auth = format!("Bearer {token}");
        let create_room = || {
            answer(
                agent
                    .post(format!("{base}/_matrix/client/v3/createRoom"))
                    .header("Authorization", &auth)
                    .header("Content-Type", "application/json")
                    .send(json!({"name": "bench"}).to_string()),
                &format!("createRoom on {}", conduit.name),
            )
        };
        let (mut status, mut body) = create_room();
        if status == 403 && body["errcode"] == "M_CONSENT_NOT_GIVEN" {
            let uri = body["consent_uri"]
                .as_str()
                .unwrap_or_else(|| panic!("no consent_uri in {body}"));
            let (_, query) = uri
                .split_once('?')
                .unwrap_or_else(|| panic!("no query in the consent_uri {uri}"));
            let what = format!("accept the consent policy on {}", conduit.name);
            let (accepted, page) = answer(
                agent
                    .post(format!("{base}/_mxpolicy/consent/"))
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .send(query),
                &what,
            );
            assert_eq!(accepted, 200, "{what}: {page}");
            println!(
                "Conduit ({}): createRoom refused for consent; accepted",
                conduit.name
            );
            (status, body) = create_room();
        }
        assert_eq!(status, 200, "createRoom on {}: {body}", conduit.name);
        let room = body["room_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no room_id in {body}"));
        let room_url = format!("{base}/_matrix/client/v3/rooms/{}", path_segment(room));
        Self {
            conduit,
            agent,
            auth,
            send_url: format!("{room_url}/send/m.room.message"),
            messages_url: format!("{room_url}/messages?dir=b&limit=20"),
            txn: 0,
        }
    }

    /// One timed send; `Err` if it did not answer 200.
    fn send(&mut self) -> (Duration, Result<(), String>) {
        self.txn += 1;
        let url = format!("{}/bench-{}", self.send_url, self.txn);
        let body = format!(r#"{{"msgtype":"m.text","body":"message {}"}}"#, self.txn);
        let start = Instant::now();
        let result = self
            .agent
            .put(&url)
            .header("Authorization", &self.auth)
            .header("Content-Type", "application/json")
            .send(body.as_bytes());
        let result = read(result);
        (start.elapsed(), result)
    }

    /// One timed `/messages`; `Err` if it did not answer 200.
    fn messages(&mut self) -> (Duration, Result<(), String>) {
        let start = Instant::now();
        let result = self
            .agent
            .get(&self.messages_url)
            .header("Authorization", &self.auth)
            .call();
        let result = read(result);
        (start.elapsed(), result)
    }
}

/// Read the answer to its end (so the connection goes back to the agent's pool); `Ok` for a
/// 200.
fn read(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<(), String> {
    let mut r = result.map_err(|e| e.to_string())?;
    let answer = r.body_mut().read_to_vec().map_err(|e| e.to_string())?;
    if r.status() == 200 {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            r.status(),
            String::from_utf8_lossy(&answer)
        ))
    }
}

/// The latencies of one operation on one server.
#[derive(Default)]
struct Run {
    latencies: Vec<Duration>,
    failed: usize,
    first_failure: Option<String>,
}

impl Run {
    fn record(&mut self, (latency, result): (Duration, Result<(), String>)) {
        self.latencies.push(latency);
        if let Err(e) = result {
            self.failed += 1;
            self.first_failure.get_or_insert(e);
        }
    }

    fn percentile_us(&self, p: f64) -> f64 {
        percentile_us(&self.latencies, p)
    }
}

/// The `p` percentile of `latencies`, in microseconds (0 if there are none).
fn percentile_us(latencies: &[Duration], p: f64) -> f64 {
    let mut sorted = latencies.to_vec();
    sorted.sort_unstable();
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

/// The p50 ratio with / without of each round's block of `block` calls: their median,
/// smallest and largest (how much the ratio moves with the machine's noise).
fn round_ratios(with: &Run, without: &Run, block: usize) -> (f64, f64, f64) {
    let mut ratios: Vec<f64> = with
        .latencies
        .chunks(block)
        .zip(without.latencies.chunks(block))
        .map(|(a, b)| percentile_us(a, 0.5) / percentile_us(b, 0.5))
        .collect();
    ratios.sort_by(f64::total_cmp);
    let median = ratios.get(ratios.len() / 2).copied().unwrap_or(f64::NAN);
    let first = ratios.first().copied().unwrap_or(f64::NAN);
    let last = ratios.last().copied().unwrap_or(f64::NAN);
    (median, first, last)
}

/// Send and `/messages` on one server.
#[derive(Default)]
struct Runs {
    send: Run,
    messages: Run,
}

/// One operation's runs, by name.
/// An operation: its name, its runs, the calls per server in a round.
type Op = (&'static str, fn(&Runs) -> &Run, usize);
const OPS: [Op; 2] = [
    ("send", |r| &r.send, SENDS_PER_ROUND),
    ("/messages", |r| &r.messages, MESSAGES_PER_ROUND),
];

/// The on-send decision of the same set in process, one thread, back to back: a host built
/// as `mxpolicy serve` builds it, with its own SQLite file, the sender consented; what the
/// policies cost without Conduit around them.
fn in_process_on_send(set_file: &Path, dir: &Path) -> [Run; 2] {
    let set = PolicySet::from_file(set_file).expect("read the policy set");
    let user = format!("@bench:{SERVER_NAME}");
    // The set's own compile cache, filled by the Conduit that ran it.
    let host = common::service_host(
        &set,
        SERVER_NAME,
        dir,
        &set_file.with_file_name("cache"),
        &user,
    );
    let event: SendEvent = serde_json::from_value(json!({
        "sender": user,
        "room_id": format!("!bench:{SERVER_NAME}"),
        "room_version": "11",
        "event_type": "m.room.message",
        "content": {"msgtype": "m.text", "body": "message"},
        "origin_server_ts": 1_700_000_000_000u64,
    }))
    .expect("a SendEvent");
    let call = || {
        let start = Instant::now();
        let (d, _) = mxpolicy::serve::facts::with(Facts::default(), || host.on_send(&event));
        let result = if d.outcome.is_allow() && d.failures.is_empty() {
            Ok(())
        } else {
            Err(format!("{:?}; {:?}", d.outcome, d.failures))
        };
        (start.elapsed(), result)
    };
    for _ in 0..IN_PROCESS_WARMUP {
        let _ = call();
    }
    let mut back_to_back = Run::default();
    for _ in 0..IN_PROCESS_CALLS {
        back_to_back.record(call());
    }
    // The same calls spaced out: the thread sleeps between them, as a Conduit's does between
    // sends (the caches and the vCPU go cold in between).
    let mut paced = Run::default();
    let mut next = Instant::now();
    for _ in 0..IN_PROCESS_CALLS {
        next += IN_PROCESS_EVERY;
        paced.record(call());
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    [back_to_back, paced]
}

fn main() {
    let bin = PathBuf::from(std::env::var_os("MXPOLICY_CONDUIT_BIN").expect(
        "set MXPOLICY_CONDUIT_BIN to a patched Conduit binary (integrations/conduit/README.md)",
    ));
    let bin = std::path::absolute(&bin).expect("the Conduit binary's path");
    assert!(bin.is_file(), "{} is not a file", bin.display());
    let (policy_port, plain_port) = ports();
    println!("Conduit binary: {}", bin.display());
    println!("build profile: {}", profile(&bin));

    let dir = std::env::temp_dir().join(format!("conduit-bench-run-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let set = mxpolicy::init::run(
        &InitArgs {
            dir: dir.join("policies/set"),
            plugins: plugins_dir(),
            port: policy_port,
            server_name: SERVER_NAME.into(),
        },
        &mut io::sink(),
    )
    .expect("mxpolicy init");
    // `MXPOLICY_CONDUIT_BENCH_INSTANCE_MODE=reuse`: every entry of the sample keeps warm
    // instances (`instance_mode = "reuse"`) instead of a fresh instance per call.
    if let Some(mode) = std::env::var_os("MXPOLICY_CONDUIT_BENCH_INSTANCE_MODE") {
        let mode = mode.to_string_lossy().into_owned();
        let text = fs::read_to_string(&set).expect("read the sample set");
        let text = text.replace(
            "[[plugin]]\n",
            &format!("[[plugin]]\ninstance_mode = \"{mode}\"\n"),
        );
        fs::write(&set, text).expect("write the sample set");
        println!("instance mode of every plugin: {mode}");
    }
    // Another set instead of the sample (a subset of its plugins, say, to see what each costs).
    let set = match std::env::var_os("MXPOLICY_CONDUIT_BENCH_SET") {
        Some(other) => std::path::absolute(PathBuf::from(other)).expect("the set's path"),
        None => set,
    };
    println!("policy set: {}", set.display());

    let policies = Conduit::start(
        "policies",
        &bin,
        &dir.join("policies"),
        policy_port,
        Some(&set),
    );
    let plain = Conduit::start("plain", &bin, &dir.join("plain"), plain_port, None);
    let mut clients = [Client::set_up(&policies), Client::set_up(&plain)];

    for client in &mut clients {
        for _ in 0..WARMUP_SENDS {
            let (_, result) = client.send();
            if let Err(e) = result {
                panic!("warm-up send on {}: {e}", client.conduit.name);
            }
        }
        for _ in 0..WARMUP_MESSAGES {
            let (_, result) = client.messages();
            if let Err(e) = result {
                panic!("warm-up /messages on {}: {e}", client.conduit.name);
            }
        }
    }

    let mut runs: [Runs; 2] = Default::default();
    let started = Instant::now();
    let mut rounds = 0;
    while rounds < ROUNDS && started.elapsed() < TIME {
        let order = if rounds % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            for _ in 0..SENDS_PER_ROUND {
                runs[i].send.record(clients[i].send());
            }
        }
        for i in order {
            for _ in 0..MESSAGES_PER_ROUND {
                runs[i].messages.record(clients[i].messages());
            }
        }
        rounds += 1;
    }
    let elapsed = started.elapsed();

    drop(clients);
    drop(policies);
    drop(plain);
    let local = in_process_on_send(&set, &dir.join("in-process"));
    let _ = fs::remove_dir_all(&dir);

    report(&runs, rounds, elapsed, &local);
}

fn report(runs: &[Runs; 2], rounds: usize, elapsed: Duration, local: &[Run; 2]) {
    println!(
        "\n{rounds} rounds in {:.1} s, each: {SENDS_PER_ROUND} sends then {MESSAGES_PER_ROUND} \
         /messages (dir=b, limit=20) per server, servers alternating; one call at a time:",
        elapsed.as_secs_f64()
    );
    println!(
        "  {:<10} {:<10} {:>6} {:>7} {:>9} {:>9} {:>9}",
        "", "server", "calls", "failed", "p50 us", "p99 us", "max us"
    );
    for (op, get, _) in OPS {
        for (server, r) in ["policies", "plain"].iter().zip(runs) {
            let run = get(r);
            println!(
                "  {op:<10} {server:<10} {:>6} {:>7} {:>9.1} {:>9.1} {:>9.1}",
                run.latencies.len(),
                run.failed,
                run.percentile_us(0.5),
                run.percentile_us(0.99),
                run.percentile_us(1.0)
            );
            if let Some(failure) = &run.first_failure {
                let failure: String = failure.chars().take(300).collect();
                println!("    first failure: {failure}");
            }
        }
    }
    for (op, get, block) in OPS {
        let (with, without) = (get(&runs[0]), get(&runs[1]));
        let p50 = with.percentile_us(0.5) / without.percentile_us(0.5);
        let p99 = with.percentile_us(0.99) / without.percentile_us(0.99);
        println!(
            "  {op}, policies / plain: p50 {p50:.3}x ({:+.1} us), p99 {p99:.3}x ({:+.1} us)",
            with.percentile_us(0.5) - without.percentile_us(0.5),
            with.percentile_us(0.99) - without.percentile_us(0.99)
        );
        let (median, low, high) = round_ratios(with, without, block);
        println!(
            "    p50 ratio of each round's {block} calls: median {median:.3}x, from {low:.3}x \
             to {high:.3}x"
        );
    }
    println!("  the on-send decision alone, in process (same set, after the Conduits stopped):");
    let every = IN_PROCESS_EVERY.as_secs_f64() * 1e3;
    let names = ["back to back".to_owned(), format!("one per {every:.0} ms")];
    for (name, run) in names.iter().zip(local) {
        println!(
            "    {name:<13} {} calls, {} failed, p50 {:.1} us, p99 {:.1} us",
            run.latencies.len(),
            run.failed,
            run.percentile_us(0.5),
            run.percentile_us(0.99)
        );
        if let Some(failure) = &run.first_failure {
            let failure: String = failure.chars().take(300).collect();
            println!("      first failure: {failure}");
        }
    }
    let overhead = runs[0].send.percentile_us(0.5) / runs[1].send.percentile_us(0.5) - 1.0;
    println!(
        "  target: the policies add < {:.0}% to the send p50: {} ({:+.1}%)",
        TARGET_SEND_P50_OVERHEAD * 100.0,
        if overhead < TARGET_SEND_P50_OVERHEAD {
            "met"
        } else {
            "missed"
        },
        overhead * 100.0
    );
}
