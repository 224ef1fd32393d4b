//! Containment against a determined attacker (issue 9): each test names the hole it closes
//! and drives the attack through the real host with a real compiled plugin (the scripted
//! fixture told to misbehave, or a raw component built from WAT where the SDK cannot express
//! the attack).

use std::{
    collections::BTreeMap,
    sync::{Arc, Barrier, Mutex},
    time::Duration,
};

use mxpolicy_host::{
    Error, FailureCause, Host, HttpRequest, MAX_TIMER_ATTEMPTS, MemoryHomeserver, MemoryStore,
    PluginSpec, Quota, ServeVerdict, Verdict, Viewer,
};
use serde_json::{Value, json};

use crate::{
    composition::serve_events,
    end_to_end::message,
    raw,
    support::{T0, TEST_DEADLINE, server_name, spec, test_host},
};

fn misbehaving(plugin: &str, hook: &str, how: &str) -> PluginSpec {
    spec(plugin).config(json!({"misbehave": {"hook": hook, "how": how}, "label": "bad"}))
}

fn get_root() -> HttpRequest {
    HttpRequest {
        method: "GET".into(),
        path: "/".into(),
        query: String::new(),
        headers: vec![],
        body: vec![],
    }
}

/// `levels` nested arrays around a string: `nested(2)` is `[["leaf"]]`.
fn nested(levels: usize) -> Value {
    let mut v = json!("leaf");
    for _ in 0..levels {
        v = Value::Array(vec![v]);
    }
    v
}

/// Drop a value of any depth without recursion (serde_json's own drop recurses per level).
fn drop_deep(value: Value) {
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => stack.extend(map.into_iter().map(|(_, v)| v)),
            _ => {}
        }
    }
}

/// Message content `depth` levels deep in total (the content object is level 1), with the
/// spam in `body` at the top.
fn deep_content(depth: usize) -> Value {
    // Not `json!` with the nested value inside: the macro serializes its arguments, which
    // recurses per level.
    let mut content = json!({"msgtype": "m.text", "body": "buy now"});
    content["x"] = nested(depth - 1);
    content
}

// 1. Policy bypass through deep nesting.
#[test]
fn deep_content_is_never_read_as_empty_content() {
    let t = test_host();
    t.host
        .load(spec("keyword-filter").config(json!({"keywords": ["buy now"]})))
        .unwrap();
    let send = |depth: usize| {
        let mut event = message("@a:hs.example", "unused");
        event.content = deep_content(depth);
        let d = t.host.on_send(&event);
        drop_deep(std::mem::take(&mut event.content));
        d
    };
    // 126 and 127 levels: the SDK parses the content and the keyword filter reads the body.
    for depth in [126, 127] {
        let d = send(depth);
        let Verdict::Deny(e) = &d.outcome else {
            panic!("depth {depth}: {d:?}")
        };
        assert_eq!(e.errcode, "M_FORBIDDEN", "depth {depth}");
        assert_eq!(d.decided_by.as_deref(), Some("keyword-filter"));
    }
    // 128 levels: the host accepts it, serde_json in the plugin refuses it; the SDK hands the
    // policy an explicit error, and the default answer fails closed.
    let d = send(128);
    let Verdict::Deny(e) = &d.outcome else {
        panic!("depth 128 passed: {d:?}")
    };
    assert_eq!(e.errcode, "M_BAD_JSON");
    assert!(e.message.contains("keyword-filter"), "{}", e.message);
    assert_eq!(d.decided_by.as_deref(), Some("keyword-filter"));
    // Deeper than the host accepts: refused before any plugin runs.
    for depth in [129, 10_000] {
        let d = send(depth);
        let Verdict::Deny(e) = &d.outcome else {
            panic!("depth {depth} passed: {d:?}")
        };
        assert_eq!(e.errcode, "M_BAD_JSON", "depth {depth}");
        assert!(e.message.contains("deeper than 128"), "{}", e.message);
        assert_eq!(d.decided_by, None);
    }
}

#[test]
fn media_in_deep_content_is_not_missed_by_media_ownership() {
    let t = test_host();
    t.host
        .load(spec("media-ownership").config(json!({})))
        .unwrap();
    let mut event = message("@a:hs.example", "unused");
    event.content = json!({"msgtype": "m.image", "body": "x", "url": "mxc://hs.example/abc"});
    event.content["x"] = nested(127);
    let d = t.host.on_send(&event);
    drop_deep(std::mem::take(&mut event.content));
    let Verdict::Deny(e) = &d.outcome else {
        panic!("unreadable content with media passed: {d:?}")
    };
    assert_eq!(e.errcode, "M_BAD_JSON");
}

// 2. A process abort from event content.
#[test]
fn redacting_ten_thousand_levels_on_a_2_mib_thread_withholds_instead_of_aborting() {
    let t = Arc::new(test_host());
    t.host
        .load(spec("scripted-a").config(json!({"serve": {"@a:hs.example": "redact"}})))
        .unwrap();
    let worker = t.clone();
    // The size of tokio's blocking threads, from which the docs say to call the host.
    let served = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            let mut events = serve_events(&["@a:hs.example", "@b:hs.example"]);
            events[0].event["content"] = nested(10_000);
            let d = worker
                .host
                .on_client_serve(&Viewer::Anonymous, events)
                .unwrap();
            let verdicts: Vec<_> = d.outcome.iter().map(|e| e.verdict).collect();
            let first_is_gone = d.outcome[0].event.is_none();
            (verdicts, first_is_gone)
        })
        .unwrap()
        .join()
        .expect("the serving thread must not crash");
    assert_eq!(
        served,
        (vec![ServeVerdict::Withhold, ServeVerdict::Serve], true)
    );
}

// 3. HTTP response injection through on-http.
#[test]
fn http_header_injection_and_header_floods_are_plugin_failures() {
    let t = test_host();
    let request = get_root();
    t.host
        .load(misbehaving("scripted-a", "on-http", "header-inject"))
        .unwrap();
    let d = t.host.on_http("scripted-a", &request).unwrap();
    assert_eq!(d.outcome.status, 500);
    assert!(
        d.outcome
            .headers
            .iter()
            .all(|(k, v)| !k.contains('\n') && !v.contains('\n') && !v.contains('\r'))
    );
    let FailureCause::InvalidOutput(msg) = &d.failures[0].cause else {
        panic!("{d:?}")
    };
    assert!(
        msg.contains("invalid value for HTTP header `x-next`"),
        "{msg}"
    );

    t.host
        .load(misbehaving("scripted-b", "on-http", "header-flood"))
        .unwrap();
    let d = t.host.on_http("scripted-b", &request).unwrap();
    assert_eq!(d.outcome.status, 500);
    // 100,000 empty headers: each is charged 32 bytes against the output cap.
    assert_eq!(
        d.failures[0].cause,
        FailureCause::OutputTooLarge {
            bytes: 3_200_000 + 2 + "text/plain; charset=utf-8".len() as u64 + 32 + 12,
            limit_bytes: 1 << 20
        }
    );
    t.host.unload("scripted-b").unwrap();
    t.host
        .load(misbehaving("scripted-b", "on-http", "header-many"))
        .unwrap();
    let d = t.host.on_http("scripted-b", &request).unwrap();
    let FailureCause::InvalidOutput(msg) = &d.failures[0].cause else {
        panic!("{d:?}")
    };
    assert!(msg.contains("100 HTTP headers; at most 64"), "{msg}");
}

// 4. State keyed by what the operator configured, never by what the plugin reports.
#[test]
fn state_is_keyed_by_instance_name_not_by_the_name_a_plugin_reports() {
    let t = test_host();
    // The real `scripted-a` keeps a secret, then is unloaded.
    t.host
        .load(spec("scripted-a").config(json!({"label": "real"})))
        .unwrap();
    t.host.on_send(&message("@a:hs.example", "hi"));
    t.host.unload("scripted-a").unwrap();

    // The same component (it reports `scripted-a`) loaded by the operator as `impostor`
    // sees only its own state: the chain, state and errors are keyed by `impostor`.
    let report = t
        .host
        .load(spec("scripted-a").instance("impostor"))
        .unwrap();
    assert_eq!(report.instance, "impostor");
    assert_eq!(report.info.name, "scripted-a");
    let calls = t.host.admin("impostor", "calls", &json!(null)).unwrap();
    assert_eq!(calls["calls"], json!({"on-admin": 1}), "{calls}");
    assert!(matches!(
        t.host.admin("scripted-a", "calls", &json!(null)),
        Err(Error::NoSuchPlugin(_))
    ));

    // A raw component that reports the name `scripted-a`, loaded from a file of another
    // name, is keyed by its file's stem.
    let dir = std::env::temp_dir().join(format!("mxpolicy-impostor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lookalike.wasm");
    std::fs::write(&path, raw::describing("scripted-a", 5, 4)).unwrap();
    let report = t.host.load(PluginSpec::file(&path)).unwrap();
    assert_eq!(
        (report.instance.as_str(), report.info.name.as_str()),
        ("lookalike", "scripted-a")
    );
    std::fs::remove_dir_all(&dir).ok();
    t.host.unload("lookalike").unwrap();

    // One component, two instances, two independent states.
    t.host
        .load(spec("keyword-filter").instance("filter-one"))
        .unwrap();
    t.host
        .load(
            spec("keyword-filter")
                .instance("filter-two")
                .config(json!({"keywords": ["spam"]})),
        )
        .unwrap();
    let names: Vec<String> = t.host.plugins().into_iter().map(|p| p.instance).collect();
    assert_eq!(names, ["impostor", "filter-one", "filter-two"]);
    let d = t.host.on_send(&message("@a:hs.example", "spam"));
    assert_eq!(d.decided_by.as_deref(), Some("filter-two"));
}

// 5. The memory cap is per instance, and a component may declare one memory.
#[test]
fn components_with_more_memories_than_the_world_needs_are_refused() {
    let t = test_host();
    let extra: String = (0..15).map(|i| format!("(memory $m{i} 1)\n")).collect();
    let mut items = raw::memory(4);
    items.push_str(&extra);
    items.push_str(&format!(
        "(data (i32.const 0x100) \"{}\")\n(data (i32.const 0x1000) \"hoarder\")\n",
        raw::words(&[0x1000, 7, 0x1000, 1, 0x400, 0])
    ));
    let mut bodies = BTreeMap::new();
    bodies.insert("describe", "i32.const 0x100".to_owned());
    let bytes = raw::component(&items, &bodies);
    // The pooling allocator refuses it when compiling; on-demand allocation when the
    // instance is created. Either way the load fails and says why.
    let err = t
        .host
        .load(PluginSpec::bytes("hoarder", bytes.clone()))
        .unwrap_err();
    assert!(matches!(err, Error::Load { .. }), "{err}");
    assert!(
        err.to_string().contains("memories count of 16 exceeds"),
        "{err}"
    );
    let on_demand = Host::builder(
        Arc::new(MemoryHomeserver::new(server_name())),
        Arc::new(MemoryStore::new()),
    )
    .allocation(mxpolicy_host::Allocation::OnDemand)
    .build()
    .unwrap();
    let err = on_demand
        .load(PluginSpec::bytes("hoarder", bytes))
        .unwrap_err()
        .to_string();
    assert!(err.contains("may have 1 memory"), "{err}");
    assert!(err.contains("memory count too high"), "{err}");
}

// 6. Timers: bounded passes, capped payloads and counts, backoff, giving up.
#[test]
fn a_timer_pass_is_bounded_and_a_backlog_drains_pass_by_pass() {
    let homeserver = Arc::new(MemoryHomeserver::new(server_name()));
    let clock = Arc::new(mxpolicy_host::ManualClock::new(T0));
    let host = Host::builder(homeserver, Arc::new(MemoryStore::new()))
        .clock(clock.clone())
        .timers_per_pass(100)
        .build()
        .unwrap();
    host.load(spec("scripted-a").config(json!({"schedule_timers": 250, "label": "x"})))
        .unwrap();
    assert!(
        host.on_send(&message("@a:hs.example", "hi"))
            .failures
            .is_empty()
    );
    let mut passes = Vec::new();
    loop {
        let fired = host.run_timers().unwrap().outcome.len();
        if fired == 0 {
            break;
        }
        passes.push(fired);
    }
    assert_eq!(passes, [100, 100, 50]);
}

#[test]
fn timer_payloads_counts_and_cancel_ids_are_capped() {
    let t = test_host();
    t.host
        .load(misbehaving("scripted-a", "on-send", "big-payload"))
        .unwrap();
    let d = t.host.on_send(&message("@a:hs.example", "hi"));
    let FailureCause::LimitExceeded(msg) = &d.failures[0].cause else {
        panic!("{d:?}")
    };
    assert!(msg.contains("timer payload of"), "{msg}");

    t.host
        .load(misbehaving("scripted-b", "on-send", "big-cancel"))
        .unwrap();
    t.host.unload("scripted-a").unwrap();
    let d = t.host.on_send(&message("@a:hs.example", "hi"));
    let FailureCause::LimitExceeded(msg) = &d.failures[0].cause else {
        panic!("{d:?}")
    };
    assert!(msg.contains("timer id of 1048576 bytes"), "{msg}");
    t.host.unload("scripted-b").unwrap();

    // A plugin may have at most `max_timers` scheduled.
    t.host
        .load(
            spec("scripted-a")
                .config(json!({"schedule_timers": 30}))
                .quota(Quota {
                    max_timers: 50,
                    ..mxpolicy_host::DEFAULT_QUOTA
                }),
        )
        .unwrap();
    assert!(
        t.host
            .on_send(&message("@a:hs.example", "1"))
            .failures
            .is_empty()
    );
    let d = t.host.on_send(&message("@a:hs.example", "2"));
    let FailureCause::QuotaExceeded(msg) = &d.failures[0].cause else {
        panic!("{d:?}")
    };
    assert_eq!(msg, "timers: 60 after this call, quota 50");
}

/// A homeserver whose `members_of_room` answers after 200 ms: a homeserver asked back over
/// the network, as `mxpolicy serve` asks for a timer's facts.
struct SlowHomeserver(MemoryHomeserver);

impl mxpolicy_host::Homeserver for SlowHomeserver {
    fn server_name(&self) -> &mxpolicy_host::ruma::ServerName {
        self.0.server_name()
    }
    fn rooms_of_user(
        &self,
        user: &mxpolicy_host::ruma::UserId,
    ) -> Vec<mxpolicy_host::ruma::OwnedRoomId> {
        self.0.rooms_of_user(user)
    }
    fn members_of_room(
        &self,
        room: &mxpolicy_host::ruma::RoomId,
    ) -> Vec<mxpolicy_host::ruma::OwnedUserId> {
        std::thread::sleep(Duration::from_millis(200));
        self.0.members_of_room(room)
    }
    fn ever_joined_members(
        &self,
        room: &mxpolicy_host::ruma::RoomId,
    ) -> Vec<mxpolicy_host::ruma::OwnedUserId> {
        self.0.ever_joined_members(room)
    }
}

#[test]
fn a_timer_call_gets_two_seconds_where_a_hook_call_gets_its_deadline() {
    let homeserver = Arc::new(SlowHomeserver(MemoryHomeserver::new(server_name())));
    let host = Host::builder(homeserver, Arc::new(MemoryStore::new()))
        .clock(Arc::new(mxpolicy_host::ManualClock::new(T0)))
        .build()
        .unwrap();
    let deadline = Duration::from_millis(10);
    // Asks the slow homeserver in on-timer, under a 10 ms deadline for its hooks (first in
    // the chain: its on-send, which schedules the timer, runs before the failing one).
    host.load(
        spec("scripted-b")
            .instance("slow-timer")
            .deadline(deadline)
            .config(json!({"timer_after_ms": 0, "timer_query_members_of": "!room:hs.example"})),
    )
    .unwrap();
    // Asks it in on-send: over the same 10 ms deadline.
    host.load(
        spec("scripted-a")
            .instance("slow-send")
            .deadline(deadline)
            .config(json!({"query_members_of": "!room:hs.example"})),
    )
    .unwrap();

    let sent = host.on_send(&message("@a:hs.example", "hi"));
    assert_eq!(sent.failures.len(), 1, "{:?}", sent.failures);
    assert_eq!(sent.failures[0].plugin, "slow-send");
    assert!(
        matches!(sent.failures[0].cause, FailureCause::Timeout { .. }),
        "{:?}",
        sent.failures[0]
    );

    let fired = host.run_timers().unwrap();
    assert!(fired.failures.is_empty(), "{:?}", fired.failures);
    assert_eq!(fired.outcome.len(), 1);
    assert!(fired.outcome[0].ok && fired.outcome[0].plugin == "slow-timer");
}

#[test]
fn failing_timers_back_off_then_are_given_up_and_counted() {
    let t = test_host();
    t.host
        .load(spec("scripted-a").config(
            json!({"schedule_timers": 20, "misbehave": {"hook": "on-timer", "how": "panic"}}),
        ))
        .unwrap();
    t.host.on_send(&message("@a:hs.example", "hi"));
    let first = t.host.run_timers().unwrap();
    assert_eq!(first.outcome.len(), 20);
    assert!(first.outcome.iter().all(|f| !f.ok && f.attempts == 1));
    assert_eq!(
        first.outcome[0].retry_at_ms,
        Some(T0 + mxpolicy_host::TIMER_RETRY_BASE_MS)
    );
    // Backing off: an immediate second pass runs nothing.
    assert!(t.host.run_timers().unwrap().outcome.is_empty());
    let mut attempts = 1;
    let mut given_up = 0;
    while given_up == 0 {
        t.clock.advance(mxpolicy_host::TIMER_RETRY_MAX_MS);
        let pass = t.host.run_timers().unwrap();
        assert_eq!(pass.outcome.len(), 20);
        attempts += 1;
        given_up = pass.outcome.iter().filter(|f| f.gave_up).count();
    }
    assert_eq!(attempts, MAX_TIMER_ATTEMPTS);
    assert_eq!(given_up, 20);
    t.clock.advance(mxpolicy_host::TIMER_RETRY_MAX_MS);
    assert!(t.host.run_timers().unwrap().outcome.is_empty());
    let stats = t.host.timer_stats();
    assert_eq!((stats.failed, stats.given_up), (200, 20));
}

// 7. State quota: per-entry charge, persistent quota, bounded `keys`.
#[test]
fn one_byte_keys_are_charged_their_overhead_per_call() {
    let t = test_host();
    t.host
        .load(misbehaving("scripted-a", "on-send", "write-flood"))
        .unwrap();
    let d = t.host.on_send(&message("@a:hs.example", "hi"));
    let FailureCause::LimitExceeded(msg) = &d.failures[0].cause else {
        panic!("{d:?}")
    };
    assert!(msg.contains("64 bytes charged per entry"), "{msg}");
    assert!(
        t.host
            .list_state("scripted-a", "flood/")
            .unwrap()
            .is_empty()
    );
}

#[test]
fn the_state_quota_holds_across_calls_and_keys_answers_are_capped() {
    let t = test_host();
    t.host
        .load(
            spec("scripted-a")
                .config(json!({"write_keys": 4000}))
                .quota(Quota {
                    max_keys: 11_000,
                    ..mxpolicy_host::DEFAULT_QUOTA
                }),
        )
        .unwrap();
    // Two calls of 4,000 keys fit (plus the counters); the third would pass 11,000.
    for _ in 0..2 {
        let d = t.host.on_send(&message("@a:hs.example", "hi"));
        assert!(d.failures.is_empty(), "{d:?}");
    }
    let d = t.host.on_send(&message("@a:hs.example", "hi"));
    let FailureCause::QuotaExceeded(msg) = &d.failures[0].cause else {
        panic!("{d:?}")
    };
    assert!(
        msg.starts_with("keys: 12002 after this call, quota 11000"),
        "{msg}"
    );

    // 8,000 keys under `k/`: answerable. Past 10,000, `keys` refuses rather than truncate.
    assert_eq!(
        t.host
            .admin("scripted-a", "count-keys", &json!(null))
            .unwrap(),
        json!(8000)
    );
    t.host
        .replace(
            "scripted-a",
            spec("scripted-a").config(json!({"write_keys": 2001})),
        )
        .unwrap();
    let d = t.host.on_send(&message("@a:hs.example", "hi"));
    assert!(d.failures.is_empty(), "{d:?}");
    let Err(Error::PluginFailed(f)) = t.host.admin("scripted-a", "count-keys", &json!(null)) else {
        panic!("a keys answer over the cap must fail")
    };
    let FailureCause::LimitExceeded(msg) = &f.cause else {
        panic!("{f:?}")
    };
    assert!(msg.contains("more than 10000 keys"), "{msg}");
}

// 9. Logging: bounded per call, control characters escaped.
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Run `f` with the log captured (this thread only), and return the log.
fn capture_log(f: impl FnOnce()) -> String {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || Captured(writer.clone()))
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = buf.lock().unwrap().clone();
    String::from_utf8(bytes).unwrap()
}

#[test]
fn a_log_flood_is_cut_and_counted_per_call() {
    let t = test_host();
    t.host
        .load(misbehaving("scripted-a", "on-send", "log-flood").deadline(Duration::from_secs(20)))
        .unwrap();
    let log = capture_log(|| {
        t.host.on_send(&message("@a:hs.example", "hi"));
    });
    let flood = log.lines().filter(|l| l.contains("flood line")).count();
    assert_eq!(flood, 32, "{}", &log[..log.len().min(2000)]);
    assert!(log.contains("999968 log lines dropped"), "{log}");
    assert!(log.len() < 16 << 10, "{} bytes logged", log.len());
}

#[test]
fn plugin_log_lines_cannot_forge_lines_or_send_escapes() {
    let t = test_host();
    t.host
        .load(misbehaving("scripted-a", "on-send", "log-forge"))
        .unwrap();
    let log = capture_log(|| {
        t.host.on_send(&message("@a:hs.example", "hi"));
    });
    let line = log
        .lines()
        .find(|l| l.contains("innocent"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("innocent\\n2026-01-01T00:00:00Z ERROR forged"),
        "{line}"
    );
    assert!(line.contains("\\u{1b}[2J"), "{line}");
    assert!(
        !log.lines()
            .any(|l| l.starts_with("2026-01-01T00:00:00Z ERROR forged"))
    );
    assert!(!log.contains('\u{1b}'));
}

// 10. One plugin under load does not make others fail.
#[test]
fn a_plugin_flooded_with_calls_refuses_its_own_calls_not_its_neighbours() {
    let homeserver = Arc::new(MemoryHomeserver::new(server_name()));
    // A small pool makes exhaustion easy: 32 instances, of which each plugin reserves 8.
    let host = Arc::new(
        Host::builder(homeserver, Arc::new(MemoryStore::new()))
            .allocation(mxpolicy_host::Allocation::Pooling {
                max_instances: 32,
                max_memory_bytes: 64 << 20,
            })
            .build()
            .unwrap(),
    );
    host.load(
        misbehaving("scripted-a", "on-http", "loop")
            .deadline(Duration::from_millis(200))
            .max_concurrency(8),
    )
    .unwrap();
    host.load(spec("scripted-b").max_concurrency(8)).unwrap();
    let request = get_root();
    // More calls than the whole pool holds, all at once.
    let hostile_calls = 64;
    let barrier = Arc::new(Barrier::new(hostile_calls + 1));
    let hostile: Vec<_> = (0..hostile_calls)
        .map(|_| {
            let (host, barrier, request) = (host.clone(), barrier.clone(), request.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let d = host.on_http("scripted-a", &request).unwrap();
                d.failures[0].cause.clone()
            })
        })
        .collect();
    barrier.wait();
    // While the hostile plugin's calls run and queue, its neighbour answers every time.
    for i in 0..40 {
        let answer = host.admin("scripted-b", "echo", &json!(i));
        assert_eq!(answer.unwrap(), json!(i), "call {i}");
    }
    let causes: Vec<FailureCause> = hostile.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(
        causes.iter().all(|c| matches!(
            c,
            FailureCause::Timeout { .. } | FailureCause::Busy { max_concurrency: 8 }
        )),
        "{causes:?}"
    );
    assert!(
        causes
            .iter()
            .any(|c| matches!(c, FailureCause::Busy { .. }))
    );
    // The chain's reservations must fit the pool, one slot kept for loading.
    let err = host
        .load(spec("keyword-filter").max_concurrency(16))
        .unwrap_err()
        .to_string();
    assert!(err.contains("add up to 32 instances"), "{err}");
}

// 11. What describe() and init report is capped.
#[test]
fn oversized_describe_and_init_answers_are_refused_without_echoing_them() {
    let t = test_host();
    let huge_version = raw::describing("hostile", 20 << 20, 330);
    let err = t
        .host
        .load(PluginSpec::bytes("huge-version", huge_version).deadline(TEST_DEADLINE))
        .unwrap_err()
        .to_string();
    assert!(err.contains("20971520 bytes"), "{err}");
    assert!(err.len() < 600, "{} bytes of error", err.len());

    let huge_name = "a".repeat(10 << 20);
    let bytes = raw::describing(&huge_name, 5, 200);
    let err = t
        .host
        .load(PluginSpec::bytes("huge-name", bytes).deadline(TEST_DEADLINE))
        .unwrap_err()
        .to_string();
    assert!(err.contains("names are 1-64"), "{err}");
    assert!(err.len() < 600, "{} bytes of error", err.len());
}

// 12. Limits are validated when a spec is loaded.
#[test]
fn out_of_range_limits_are_refused_at_load() {
    let t = test_host();
    let err = t
        .host
        .load(spec("keyword-filter").deadline(Duration::from_millis(u64::MAX)))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidLimit {
                limit: "deadline",
                ..
            }
        ),
        "{err}"
    );
    for (spec, limit) in [
        (spec("keyword-filter").deadline(Duration::ZERO), "deadline"),
        (spec("keyword-filter").memory_limit(0), "memory_limit"),
        (spec("keyword-filter").max_output(usize::MAX), "max_output"),
        (spec("keyword-filter").max_concurrency(0), "max_concurrency"),
    ] {
        match t.host.load(spec) {
            Err(Error::InvalidLimit { limit: l, .. }) => assert_eq!(l, limit),
            other => panic!("{limit}: {other:?}"),
        }
    }
}

// 13. Failures are named: stack overflow, timeout in describe/init.
#[test]
fn a_shadow_stack_overflow_is_reported_as_a_stack_overflow() {
    let t = test_host();
    t.host
        .load(misbehaving("scripted-a", "on-send", "recurse"))
        .unwrap();
    let d = t.host.on_send(&message("@a:hs.example", "hi"));
    assert_eq!(d.failures[0].cause, FailureCause::StackOverflow, "{d:?}");
    assert_eq!(
        d.failures[0].to_string(),
        "plugin `scripted-a` failed in on-send: stack overflow (failing closed)"
    );
}

/// Load-time calls get the plugin's deadline but at least 1 s (a component's first instance
/// pays one-time costs no hook call pays), so a 30 ms plugin looping there fails after 1 s.
#[test]
fn a_timeout_in_describe_or_init_is_named_a_timeout() {
    let t = test_host();
    let err = t
        .host
        .load(
            spec("scripted-a")
                .config(json!({"init": "loop"}))
                .deadline(Duration::from_millis(30)),
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`init` failed: timed out after 1000 ms"),
        "{err}"
    );

    let mut items = raw::memory(1);
    items.push_str("(data (i32.const 0x100) \"\")\n");
    let mut bodies = BTreeMap::new();
    bodies.insert("describe", "(loop $l br $l) i32.const 0".to_owned());
    let looping = raw::component(&items, &bodies);
    let err = t
        .host
        .load(PluginSpec::bytes("slow-describe", looping).deadline(Duration::from_millis(30)))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`describe` failed: timed out after 1000 ms"),
        "{err}"
    );
    assert!(!err.contains("interrupt"), "{err}");
}
