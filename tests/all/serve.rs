//! `mxpolicy serve` as a real process on a loopback port, driven over HTTP: every hook
//! endpoint, the consent page, authentication, bad requests, hot swap under load, graceful
//! stop with requests in flight, a restart on the same SQLite file, and the sample set's
//! printed `curl` commands.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    stores::TempDir,
    support::{binary, target_dir},
};

/// A free loopback port (bound, read, released: a small race other tests could lose).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `mxpolicy init DIR --port P`: the sample set (consent, erasure, media, spam), with test
/// deadlines.
fn init(dir: &Path, port: u16) -> PathBuf {
    let out = Command::new(binary())
        .args(["init", dir.to_str().unwrap(), "--port", &port.to_string()])
        .args(["--plugins", target_dir().join("plugins").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The suite runs many tests at once on two cores: the sample's 10 ms production deadline
    // would fail calls on scheduling noise (see `support::TEST_DEADLINE`).
    let set = dir.join("policy-set.toml");
    let text = std::fs::read_to_string(&set)
        .unwrap()
        .replace("[[plugin]]\n", "[[plugin]]\ndeadline_ms = 2000\n");
    std::fs::write(&set, text).unwrap();
    set
}

/// A running service; killed on drop if still running.
struct Service {
    child: Child,
    base: String,
    /// What it printed on stdout up to the blank line after the sample (or its first line).
    banner: String,
    secret: String,
}

impl Service {
    fn start(set: &Path) -> Self {
        let mut child = Command::new(binary())
            .args(["serve", "--config", set.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines
            .next()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("the service did not start: {:?}", child.wait()));
        let base = first
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .unwrap_or_else(|| panic!("{first}"))
            .to_owned();
        let mut banner = first.clone();
        // The sample block ends with the second curl command and a blank line.
        if std::fs::read_to_string(set)
            .unwrap()
            .contains("sample_user")
        {
            let mut curls = 0;
            for line in lines.by_ref() {
                let line = line.unwrap();
                banner.push('\n');
                banner.push_str(&line);
                if line.trim_start().starts_with("curl ") {
                    curls += 1;
                    if curls == 2 {
                        break;
                    }
                }
            }
        }
        // Keep draining stdout so the service never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let secret = std::fs::read_to_string(set.parent().unwrap().join("api-secret"))
            .unwrap()
            .trim()
            .to_owned();
        Self {
            child,
            base,
            banner,
            secret,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        std::mem::forget(self);
        status
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// POST `body` (JSON text) with `auth` as the bearer token (none if `None`).
fn post(agent: &ureq::Agent, url: &str, auth: Option<&str>, body: &str) -> (u16, Value) {
    let mut request = agent.post(url).header("content-type", "application/json");
    if let Some(token) = auth {
        request = request.header("authorization", &format!("Bearer {token}"));
    }
    let mut response = request.send(body).unwrap();
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// POST a body of `len` bytes over a raw connection: the status and the body of the answer.
fn oversized(service: &Service, path: &str, auth: Option<&str>, len: usize) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = service.base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let auth = auth
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {len}\r\n{auth}\
         content-type: application/json\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let body = std::thread::spawn(move || {
        let chunk = vec![b'x'; 64 << 10];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            if writer.write_all(&chunk[..n]).is_err() {
                return;
            }
            left -= n;
        }
    });
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let _ = body.join();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no answer: {answer:?}"));
    (status, answer)
}

fn get(agent: &ureq::Agent, url: &str) -> (u16, String) {
    let mut response = agent.get(url).call().unwrap();
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_string().unwrap())
}

impl Service {
    fn hook(&self, hook: &str, context: Value) -> Value {
        let (status, body) = post(
            &agent(),
            &self.url(&format!("/_mxpolicy/v1/hooks/{hook}")),
            Some(&self.secret),
            &json!({ "context": context }).to_string(),
        );
        assert_eq!(status, 200, "{hook}: {body}");
        body
    }

    /// `GET /_mxpolicy/v1/admin/chain`.
    fn chain(&self) -> (u16, Value) {
        let mut r = agent()
            .get(&self.url("/_mxpolicy/v1/admin/chain"))
            .header("authorization", &format!("Bearer {}", self.secret))
            .call()
            .unwrap();
        (
            r.status().as_u16(),
            r.body_mut().read_json::<Value>().unwrap(),
        )
    }

    fn admin(&self, path: &str, body: Value) -> (u16, Value) {
        post(
            &agent(),
            &self.url(&format!("/_mxpolicy/v1/admin/{path}")),
            Some(&self.secret),
            &body.to_string(),
        )
    }
}

fn send(sender: &str, body: &str) -> Value {
    json!({
        "sender": sender,
        "room_id": "!room:localhost",
        "room_version": "11",
        "event_type": "m.room.message",
        "content": {"msgtype": "m.text", "body": body},
        "origin_server_ts": 1_700_000_000_000u64,
    })
}

fn verdict(decision: &Value) -> (&str, &str) {
    (
        decision["outcome"]["verdict"].as_str().unwrap_or_default(),
        decision["outcome"]["errcode"].as_str().unwrap_or_default(),
    )
}

/// Accept the consent page the way a browser's form does.
fn accept_consent(service: &Service, consent_uri: &str) {
    let query = consent_uri.split_once('?').unwrap().1;
    let (status, page) = get(&agent(), consent_uri);
    assert_eq!(status, 200);
    assert!(page.contains("accept"), "{page}");
    let mut response = agent()
        .post(&service.url("/_mxpolicy/consent/"))
        .header("content-type", "application/x-www-form-urlencoded")
        .send(query)
        .unwrap();
    let text = response.body_mut().read_to_string().unwrap();
    assert_eq!(response.status().as_u16(), 200, "{text}");
}

#[test]
fn every_hook_endpoint_and_the_consent_page_answer_over_http() {
    let dir = TempDir::new("serve-hooks");
    let service = Service::start(&init(&dir.0, free_port()));
    let (status, health) = get(&agent(), &service.url("/health"));
    assert_eq!(status, 200, "{health}");

    // Consent: refused with the link, then accepted on the page, then allowed.
    let denied = service.hook("on-send", send("@alice:localhost", "hello"));
    assert_eq!(
        verdict(&denied),
        ("deny", "M_CONSENT_NOT_GIVEN"),
        "{denied}"
    );
    assert_eq!(denied["decided_by"], "consent");
    let uri = denied["outcome"]["fields"]["consent_uri"].as_str().unwrap();
    assert!(
        uri.starts_with(&service.url("/_mxpolicy/consent/?")),
        "{uri}"
    );
    accept_consent(&service, uri);
    let allowed = service.hook("on-send", send("@alice:localhost", "hello"));
    assert_eq!(verdict(&allowed).0, "allow", "{allowed}");
    // The keyword filter, through the same endpoint.
    let spam = service.hook("on-send", send("@alice:localhost", "buy now!"));
    assert_eq!(spam["decided_by"], "spam", "{spam}");

    // Media: alice's upload, bob's fetch.
    let mxc = "mxc://localhost/abcdefghijkl";
    let upload = service.hook(
        "on-media-upload",
        json!({"mxc": mxc, "uploader": "@alice:localhost", "size": 1234, "content_type": "image/png"}),
    );
    assert_eq!(verdict(&upload).0, "allow", "{upload}");
    let fetch = service.hook(
        "on-media-fetch",
        json!({"mxc": mxc, "requester": {"user": "@bob:localhost"}}),
    );
    assert_eq!(verdict(&fetch).0, "allow", "{fetch}");

    // Serving before and after alice's erasure request.
    let event = json!({
        "event_id": "$e1", "type": "m.room.message", "sender": "@alice:localhost",
        "room_id": "!room:localhost", "origin_server_ts": 1, "content": {"body": "hi"},
    });
    let serve = |hook: &str, viewer: Value| {
        service.hook(
            hook,
            json!({"viewer": viewer, "events": [
                {"event": event, "room_version": "11", "viewer_joined": false}
            ]}),
        )
    };
    let client = serve("on-client-serve", json!({"user": "@carol:localhost"}));
    assert_eq!(client["outcome"][0]["verdict"], "serve", "{client}");
    let deactivated = service.hook(
        "on-deactivate",
        json!({"user": "@alice:localhost", "erase": true}),
    );
    assert_eq!(verdict(&deactivated).0, "allow", "{deactivated}");
    assert!(
        deactivated["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "leave-all-rooms"),
        "{deactivated}"
    );
    assert!(
        !deactivated["outbox"].as_array().unwrap().is_empty(),
        "{deactivated}"
    );
    let unanswered = deactivated["unanswered"].as_array().unwrap();
    assert!(
        unanswered.iter().any(|q| q["question"] == "rooms_of_user"),
        "the erasure policy asked for alice's rooms, which the request did not send: {deactivated}"
    );
    let federation = serve("on-federation-serve", json!({"server": "remote.example"}));
    assert!(
        federation["outcome"][0]["verdict"].is_string(),
        "{federation}"
    );
    let reactivated = service.hook("on-reactivate", json!({"user": "@alice:localhost"}));
    assert_eq!(verdict(&reactivated).0, "allow", "{reactivated}");

    // Admin: the chain, a plugin command, the outbox.
    let (status, chain) = service.chain();
    assert_eq!(status, 200);
    let names: Vec<&str> = chain["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["instance"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["consent", "erasure", "media", "spam"]);
    assert_eq!(chain["plugins"][0]["component"], "consent");
    let (status, answer) = service.admin(
        "plugins/consent/commands/consent-status",
        json!({"user": "@alice:localhost"}),
    );
    assert_eq!(status, 200, "{answer}");
    let ids: Vec<u64> = deactivated["outbox"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let (status, _) = service.admin("outbox/ack", json!({ "ids": ids }));
    assert_eq!(status, 200);
    let (status, claimed) = service.admin("outbox/claim", json!({"limit": 10}));
    assert_eq!(status, 200);
    assert_eq!(
        claimed["actions"],
        json!([]),
        "acknowledged actions are gone"
    );

    let (status, metrics) = get(&agent(), &service.url("/metrics"));
    assert_eq!(status, 200);
    assert!(metrics.contains("mxpolicy_generation 1"), "{metrics}");
    assert!(service.stop().success());
}

#[test]
fn bad_requests_get_400_401_404_or_413_naming_what_is_wrong() {
    let dir = TempDir::new("serve-bad");
    let service = Service::start(&init(&dir.0, free_port()));
    let a = agent();
    let on_send = service.url("/_mxpolicy/v1/hooks/on-send");
    let good = json!({"context": send("@alice:localhost", "hi")}).to_string();

    let (status, body) = post(&a, &on_send, None, &good);
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("M_MISSING_TOKEN"))
    );
    let (status, body) = post(&a, &on_send, Some("not-the-secret"), &good);
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("M_UNKNOWN_TOKEN"))
    );
    let (status, _) = post(
        &a,
        &service.url("/_mxpolicy/v1/admin/plugins/consent/commands/consent-status"),
        None,
        "{}",
    );
    assert_eq!(status, 401, "admin needs the secret too");

    let secret = Some(service.secret.as_str());
    let mut bad_sender = send("@alice:localhost", "hi");
    bad_sender["sender"] = json!("alice");
    let cases = [
        (json!({"context": bad_sender}).to_string(), "context.sender"),
        (json!({"context": {"sender": "@a:localhost"}}).to_string(), "context"),
        (
            json!({"context": send("@a:localhost", "x"), "extra": 1}).to_string(),
            "",
        ),
        (
            json!({"context": send("@a:localhost", "x"), "facts": {"rooms_of_user": {"nobody": []}}})
                .to_string(),
            "facts.rooms_of_user",
        ),
        ("{not json".to_owned(), ""),
        ("[".repeat(10_000), ""),
    ];
    for (body, field) in cases {
        let (status, answer) = post(&a, &on_send, secret, &body);
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["errcode"], "M_BAD_JSON", "{answer}");
        assert!(
            answer["field"]
                .as_str()
                .unwrap_or_default()
                .starts_with(field),
            "field of {}: {answer}",
            &body[..body.len().min(80)]
        );
    }

    let (status, answer) = post(
        &a,
        &service.url("/_mxpolicy/v1/hooks/on-nothing"),
        secret,
        &good,
    );
    assert_eq!(
        (status, answer["errcode"].as_str()),
        (404, Some("M_NOT_FOUND"))
    );
    let (status, _) = post(
        &a,
        &service.url("/_mxpolicy/v1/admin/plugins/nobody/commands/x"),
        secret,
        "{}",
    );
    assert_eq!(status, 404);
    let (status, _) = get(&a, &service.url("/_mxpolicy/nobody/"));
    assert_eq!(status, 404);

    // Over the limit: the service answers 413 as soon as the limit is passed and closes the
    // connection, so the body is written from another thread (the write may then fail).
    let (status, answer) = oversized(&service, "/_mxpolicy/v1/hooks/on-send", secret, 2 << 20);
    assert_eq!(status, 413, "{answer}");
    assert!(answer.contains("M_TOO_LARGE"), "{answer}");
    let (status, _) = oversized(&service, "/_mxpolicy/consent/", None, 100 << 10);
    assert_eq!(status, 413, "web bodies are capped at 64 KiB");

    // Still serving after all of it.
    let (status, _) = post(&a, &on_send, secret, &good);
    assert_eq!(status, 200);
    assert!(service.stop().success());
}

#[test]
fn an_edited_set_is_applied_while_a_client_keeps_sending_and_no_request_fails() {
    let dir = TempDir::new("serve-swap");
    let set = init(&dir.0, free_port());
    let service = Arc::new(Service::start(&set));
    let (status, _) = service.admin(
        "plugins/consent/commands/record-consent",
        json!({"user": "@alice:localhost", "version": "1.0"}),
    );
    assert_eq!(status, 200);
    let stop = Arc::new(AtomicBool::new(false));
    let denied_after = Arc::new(AtomicU64::new(0));
    let client = {
        let (service, stop, denied_after) = (service.clone(), stop.clone(), denied_after.clone());
        std::thread::spawn(move || {
            let a = agent();
            let url = service.url("/_mxpolicy/v1/hooks/on-send");
            let body = json!({"context": send("@alice:localhost", "free tacos")}).to_string();
            let (mut sent, mut denied) = (0u64, false);
            while !stop.load(Ordering::Relaxed) {
                let (status, answer) = post(&a, &url, Some(&service.secret), &body);
                assert_eq!(status, 200, "request {sent} failed: {answer}");
                assert_eq!(answer["failures"], json!([]), "{answer}");
                let now_denied = verdict(&answer).0 == "deny";
                assert!(
                    now_denied || !denied,
                    "after the swap, the new set decides every time"
                );
                if now_denied && !denied {
                    denied_after.store(sent, Ordering::Relaxed);
                }
                denied |= now_denied;
                sent += 1;
            }
            (sent, denied)
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    // The operator's edit, written to a temporary file and renamed into place.
    let text = std::fs::read_to_string(&set)
        .unwrap()
        .replace("\"buy now\", \"free crypto\"", "\"free tacos\"");
    let tmp = dir.0.join(".policy-set.toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &set).unwrap();
    let start = Instant::now();
    while denied_after.load(Ordering::Relaxed) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the edit was never applied"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (sent, denied) = client.join().unwrap();
    assert!(denied && sent > denied_after.load(Ordering::Relaxed));
    let (status, chain) = service.chain();
    assert_eq!((status, chain["generation"].as_u64()), (200, Some(2)));
    // Rollback through the admin API brings the old keywords back.
    let (status, _) = service.admin("rollback", json!({}));
    assert_eq!(status, 200);
    let allowed = service.hook("on-send", send("@alice:localhost", "free tacos"));
    assert_eq!(verdict(&allowed).0, "allow", "{allowed}");
    eprintln!(
        "{sent} requests, none failed; denied from request {}",
        denied_after.load(Ordering::Relaxed)
    );
}

/// A set whose `slow` instance spins until its 1.5 s deadline on every send (failing open),
/// so requests stay in flight long enough to be caught by a SIGTERM.
fn slow_set(dir: &Path, port: u16) -> PathBuf {
    let set = init(dir, port);
    std::fs::copy(
        target_dir().join("plugins/scripted-a.wasm"),
        dir.join("slow.wasm"),
    )
    .unwrap();
    let mut text = std::fs::read_to_string(&set).unwrap();
    text.push_str(
        "\n[[plugin]]\ninstance = \"slow\"\npath = \"slow.wasm\"\ndeadline_ms = 1500\n\
         failure = { on-send = \"open\" }\n\
         config = { misbehave = { hook = \"on-send\", how = \"loop\" } }\n",
    );
    std::fs::write(&set, text).unwrap();
    set
}

#[test]
fn sigterm_answers_every_request_in_flight_then_exits_cleanly() {
    let dir = TempDir::new("serve-term");
    let service = Service::start(&slow_set(&dir.0, free_port()));
    service.admin(
        "plugins/consent/commands/record-consent",
        json!({"user": "@alice:localhost", "version": "1.0"}),
    );
    let url = service.url("/_mxpolicy/v1/hooks/on-send");
    let body = json!({"context": send("@alice:localhost", "hello")}).to_string();
    let requests: Vec<_> = (0..6)
        .map(|_| {
            let (url, body, secret) = (url.clone(), body.clone(), service.secret.clone());
            std::thread::spawn(move || post(&agent(), &url, Some(&secret), &body))
        })
        .collect();
    // Every request is inside its 1.5 s plugin call when the signal arrives.
    std::thread::sleep(Duration::from_millis(500));
    let status = service.stop();
    assert!(status.success(), "{status:?}");
    for r in requests {
        let (status, answer) = r.join().unwrap();
        assert_eq!(status, 200, "{answer}");
        assert_eq!(verdict(&answer).0, "allow", "failing open: {answer}");
        assert_eq!(
            answer["failures"][0]["cause"]["kind"], "timeout",
            "{answer}"
        );
    }
}

#[test]
fn a_restart_keeps_consents_and_erasures_and_fires_the_timers_due_meanwhile() {
    let dir = TempDir::new("serve-restart");
    let port = free_port();
    let set = init(&dir.0, port);
    // A 2 s grace period, so the erasure's final step falls due while the service is down.
    with_erasure_grace(&set, 2000);
    let first = Service::start(&set);
    first.admin(
        "plugins/consent/commands/record-consent",
        json!({"user": "@bob:localhost", "version": "1.0"}),
    );
    let deactivated = first.hook(
        "on-deactivate",
        json!({"user": "@alice:localhost", "erase": true}),
    );
    assert_eq!(verdict(&deactivated).0, "allow", "{deactivated}");
    assert!(first.stop().success());
    std::thread::sleep(Duration::from_millis(2500));

    let second = Service::start(&set);
    let allowed = second.hook("on-send", send("@bob:localhost", "still here"));
    assert_eq!(
        verdict(&allowed).0,
        "allow",
        "bob's consent survived: {allowed}"
    );
    // The scheduler fires the due timer within a pass or two; its actions wait in the outbox.
    let start = Instant::now();
    let announced = loop {
        let (status, claimed) = second.admin("outbox/claim", json!({"limit": 100}));
        assert_eq!(status, 200);
        let found = claimed["actions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["action"]["kind"] == "announce-erasure")
            .cloned();
        if let Some(found) = found {
            break found;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the timer never fired: {claimed}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(announced["plugin"], "erasure");
    assert_eq!(
        announced["action"]["user"], "@alice:localhost",
        "{announced}"
    );
    // Alice's erasure is final: a later viewer gets her events redacted.
    let served = second.hook(
        "on-client-serve",
        json!({"viewer": {"user": "@carol:localhost"}, "events": [{
            "event": {"event_id": "$e", "type": "m.room.message", "sender": "@alice:localhost",
                      "room_id": "!room:localhost", "origin_server_ts": 1, "content": {"body": "hi"}},
            "room_version": "11", "viewer_joined": false
        }]}),
    );
    assert_eq!(served["outcome"][0]["verdict"], "redact", "{served}");
    assert!(second.stop().success());
}

#[test]
fn the_sample_sets_printed_curl_commands_work_as_printed() {
    let dir = TempDir::new("serve-sample");
    let service = Service::start(&init(&dir.0, free_port()));
    let banner = service.banner.clone();
    let consent = banner
        .lines()
        .find_map(|l| l.strip_prefix("Consent page: "))
        .unwrap_or_else(|| panic!("{banner}"))
        .to_owned();
    let curls: Vec<&str> = banner
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("curl "))
        .collect();
    assert_eq!(curls.len(), 2, "{banner}");
    let run = |command: &str| -> Value {
        let out = Command::new("sh").args(["-c", command]).output().unwrap();
        assert!(
            out.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let before = run(curls[0]);
    assert_eq!(
        verdict(&before),
        ("deny", "M_CONSENT_NOT_GIVEN"),
        "{before}"
    );
    accept_consent(&service, &consent);
    let after = run(curls[1]);
    assert_eq!(verdict(&after).0, "allow", "{after}");
    assert!(service.stop().success());
}

#[test]
fn two_services_sharing_postgresql_fire_each_timer_exactly_once() {
    let Some(url) = crate::stores::postgres_schema("serve") else {
        return;
    };
    let dirs = [TempDir::new("serve-pg-a"), TempDir::new("serve-pg-b")];
    let services: Vec<Service> = dirs
        .iter()
        .map(|dir| {
            let set = init(&dir.0, free_port());
            let text = std::fs::read_to_string(&set)
                .unwrap()
                .replace(
                    "url = \"sqlite:state.db\"",
                    &format!("url = {}", toml_string(&url)),
                )
                .replace("[service]\n", "[service]\ntimer_interval_ms = 50\n")
                .replace(
                    "instance = \"erasure\"\n",
                    "instance = \"erasure\"\nconfig = { grace_period_ms = 1000 }\n",
                );
            std::fs::write(&set, text).unwrap();
            Service::start(&set)
        })
        .collect();
    let users = [
        "@u1:localhost",
        "@u2:localhost",
        "@u3:localhost",
        "@u4:localhost",
    ];
    for (i, user) in users.iter().enumerate() {
        let d = services[i % 2].hook("on-deactivate", json!({"user": user, "erase": true}));
        assert_eq!(verdict(&d).0, "allow", "{d}");
    }
    // Both schedulers poll every 50 ms; every timer falls due after 1 s.
    let mut announced: Vec<String> = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        for service in &services {
            let (status, claimed) = service.admin("outbox/claim", json!({"limit": 100}));
            assert_eq!(status, 200, "{claimed}");
            for a in claimed["actions"].as_array().unwrap() {
                if a["action"]["kind"] == "announce-erasure" {
                    announced.push(a["action"]["user"].as_str().unwrap().to_owned());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    announced.sort();
    assert_eq!(
        announced, users,
        "each timer fired once, by one of the two services"
    );
    for service in services {
        assert!(service.stop().success());
    }
}

fn toml_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Add `keys` (TOML lines) to the `[service]` section of `set`.
fn with_service_keys(set: &Path, keys: &str) {
    let text = std::fs::read_to_string(set)
        .unwrap()
        .replace("[service]\n", &format!("[service]\n{keys}\n"));
    std::fs::write(set, text).unwrap();
}

/// A raw connection that sends `bytes` and reads what comes back until the service closes it
/// (or 20 s pass): the answer and how long it took.
fn raw(service: &Service, bytes: &[u8]) -> (String, Duration) {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect(service.base.trim_start_matches("http://")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let start = Instant::now();
    stream.write_all(bytes).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    (
        String::from_utf8_lossy(&answer).into_owned(),
        start.elapsed(),
    )
}

#[test]
fn slow_idle_and_surplus_connections_are_cut_off() {
    let dir = TempDir::new("serve-slow");
    let set = init(&dir.0, free_port());
    with_service_keys(
        &set,
        "header_timeout_s = 1\nbody_timeout_s = 1\nmax_connections = 4",
    );
    let service = Service::start(&set);
    // Headers never finished: closed after the header timeout, without an answer.
    let (answer, took) = raw(
        &service,
        b"POST /_mxpolicy/v1/hooks/on-send HTTP/1.1\r\nhost: x\r\n",
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(!answer.contains("200"), "{answer}");
    // A body that never arrives: 408 after the body timeout.
    let request = format!(
        "POST /_mxpolicy/v1/hooks/on-send HTTP/1.1\r\nhost: x\r\nauthorization: bearer {}\r\n\
         content-length: 100\r\n\r\n{{\"co",
        service.secret
    );
    let (answer, took) = raw(&service, request.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    // A declared length over the limit: 413 before any of the body is read.
    let request =
        "POST /_mxpolicy/consent/ HTTP/1.1\r\nhost: x\r\ncontent-length: 99999999999\r\n\r\nabc";
    let (answer, _) = raw(&service, request.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // A keep-alive connection left idle after its request is closed after the timeout too.
    let (answer, took) = raw(&service, b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        took < Duration::from_secs(10),
        "idle keep-alive kept {took:?}"
    );

    // Four idle connections fill the cap: a fifth is closed at once, without an answer.
    let idle: Vec<std::net::TcpStream> = (0..4)
        .map(|_| std::net::TcpStream::connect(service.base.trim_start_matches("http://")).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let (answer, _) = raw(&service, b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n");
    assert_eq!(answer, "", "over the cap");
    // The idle ones are cut after the header timeout, and the service answers again.
    std::thread::sleep(Duration::from_millis(1500));
    let (status, _) = get(&agent(), &service.url("/health"));
    assert_eq!(status, 200);
    drop(idle);
    assert!(service.stop().success());
}

#[test]
fn error_answers_are_json_bounded_and_the_scheme_is_case_insensitive() {
    let dir = TempDir::new("serve-errors");
    let service = Service::start(&init(&dir.0, free_port()));
    let a = agent();
    // `bearer` in any case.
    let (status, _) = post(
        &a,
        &service.url("/_mxpolicy/v1/hooks/on-send"),
        Some(&service.secret),
        &json!({"context": send("@alice:localhost", "hi")}).to_string(),
    );
    assert_eq!(status, 200);
    let mut r = a
        .post(&service.url("/_mxpolicy/v1/hooks/on-send"))
        .header("authorization", &format!("BEARER {}", service.secret))
        .send(
            json!({"context": send("@alice:localhost", "hi")})
                .to_string()
                .as_str(),
        )
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let _ = r.body_mut().read_to_string();
    // 405 and an undecodable path segment are JSON too.
    let mut r = a
        .get(&service.url("/_mxpolicy/v1/hooks/on-send"))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let body: Value = r.body_mut().read_json().unwrap();
    assert_eq!(body["errcode"], "M_UNRECOGNIZED");
    let (answer, _) = raw(
        &service,
        b"GET /_mxpolicy/%FF/ HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("\"errcode\""), "{answer}");
    // What a client sent is echoed short.
    let long = "a".repeat(60_000);
    let (status, body) = get(&a, &service.url(&format!("/_mxpolicy/{long}/")));
    assert_eq!(status, 404);
    assert!(body.len() < 1000, "{} bytes", body.len());
    let mut bad = send("@alice:localhost", "hi");
    bad["room_version"] = json!("9".repeat(5000));
    let (status, body) = post(
        &a,
        &service.url("/_mxpolicy/v1/hooks/on-send"),
        Some(&service.secret),
        &json!({"context": bad}).to_string(),
    );
    assert_eq!(status, 400);
    assert!(body.to_string().len() < 1200, "{body}");
    // A serve batch over the cap is refused by field.
    let event = json!({"event": {"event_id": "$e", "type": "m.room.message", "sender": "@b:localhost",
        "room_id": "!r:localhost", "origin_server_ts": 1, "content": {}}, "room_version": "11"});
    let events: Vec<Value> = (0..1001).map(|_| event.clone()).collect();
    let (status, body) = post(
        &a,
        &service.url("/_mxpolicy/v1/hooks/on-client-serve"),
        Some(&service.secret),
        &json!({"context": {"viewer": "anonymous", "events": events}}).to_string(),
    );
    let shown: String = body.to_string().chars().take(300).collect();
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("context.events")),
        "{shown}"
    );
    assert!(service.stop().success());
}

#[test]
fn the_readmes_first_command_starts_the_sample_service() {
    let dir = TempDir::new("serve-readme");
    let local = dir.0.join("local");
    let port = free_port();
    let mut child = Command::new("bash")
        .arg(crate::support::repo().join("scripts/serve.sh"))
        .env("MXPOLICY_PORT", port.to_string())
        .env("MXPOLICY_LOCAL", &local)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = String::new();
    let mut curls = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        banner.push_str(&line);
        banner.push('\n');
        if line.trim_start().starts_with("curl ") {
            curls.push(line.trim().to_owned());
            if curls.len() == 2 {
                break;
            }
        }
    }
    std::thread::spawn(move || for _ in lines {});
    assert!(
        banner.contains(&format!("listening on http://127.0.0.1:{port}")),
        "{banner}"
    );
    let out = Command::new("sh").args(["-c", &curls[0]]).output().unwrap();
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        verdict(&answer),
        ("deny", "M_CONSENT_NOT_GIVEN"),
        "{answer}"
    );
    // `exec` made the script the service itself: SIGTERM stops it cleanly.
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    assert!(local.join("policy-set.toml").is_file());
}

/// Give the sample set's erasure entry a grace period of `ms`.
fn with_erasure_grace(set: &Path, ms: u64) {
    let text = std::fs::read_to_string(set).unwrap().replace(
        "instance = \"erasure\"\n",
        &format!("instance = \"erasure\"\nconfig = {{ grace_period_ms = {ms} }}\n"),
    );
    std::fs::write(set, text).unwrap();
}

/// on-deactivate of `@alice:localhost` with erasure, her rooms sent as the request's facts:
/// the decision (answered 200).
fn erase_alice(service: &Service, rooms: &[&str]) -> Value {
    let (status, deactivated) = post(
        &agent(),
        &service.url("/_mxpolicy/v1/hooks/on-deactivate"),
        Some(&service.secret),
        &json!({
            "context": {"user": "@alice:localhost", "erase": true},
            "facts": {"rooms_of_user": {"@alice:localhost": rooms}},
        })
        .to_string(),
    );
    assert_eq!(status, 200, "{deactivated}");
    deactivated
}

/// A stand-in for the homeserver's facts endpoint (`service.facts_url`): answers
/// `ever_joined_members` from `rooms`, anything else with `[]`, and records each request
/// line and its `Authorization` header. A test double: what it stands in for is the
/// homeserver, which the Synapse end-to-end suite provides for real.
struct FactsEndpoint {
    url: String,
    seen: Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

impl FactsEndpoint {
    fn start(rooms: Vec<(&'static str, Vec<&'static str>)>) -> Self {
        Self::start_failing(rooms, 0)
    }

    /// As [`FactsEndpoint::start`], answering the first `fail_first` requests 503 (a
    /// homeserver restarting).
    fn start_failing(rooms: Vec<(&'static str, Vec<&'static str>)>, fail_first: usize) -> Self {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/facts", listener.local_addr().unwrap());
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                // The request line, with the percent-escapes ids can carry decoded.
                let line = head
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .replace("%21", "!")
                    .replace("%3A", ":")
                    .replace("%40", "@");
                let auth = head
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("authorization: ")
                            .or(l.strip_prefix("Authorization: "))
                    })
                    .unwrap_or_default()
                    .to_owned();
                let answer: Vec<&str> = rooms
                    .iter()
                    .find(|(room, _)| {
                        line.contains("question=ever_joined_members")
                            && line.contains(&format!("subject={room} "))
                    })
                    .map(|(_, members)| members.clone())
                    .unwrap_or_default();
                let mut log = log.lock().unwrap();
                log.push((line, auth));
                let (status, body) = if log.len() <= fail_first {
                    ("503 Service Unavailable", "{}".to_owned())
                } else {
                    ("200 OK", json!({ "answer": answer }).to_string())
                };
                drop(log);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Self { url, seen }
    }
}

#[test]
fn timers_ask_the_homeserver_for_their_facts_and_purge_only_rooms_everyone_left_erased() {
    let dir = TempDir::new("serve-facts-url");
    let port = free_port();
    let set = init(&dir.0, port);
    with_erasure_grace(&set, 1000);
    // Alice alone ever joined !lonely; bob, not erased, was in !shared too.
    let facts = FactsEndpoint::start(vec![
        ("!lonely:localhost", vec!["@alice:localhost"]),
        (
            "!shared:localhost",
            vec!["@alice:localhost", "@bob:localhost"],
        ),
    ]);
    with_service_keys(&set, &format!("facts_url = {}", toml_string(&facts.url)));
    let service = Service::start(&set);
    // The deactivation brings the rooms she is in, as a request's facts do.
    let deactivated = erase_alice(&service, &["!lonely:localhost", "!shared:localhost"]);
    assert_eq!(verdict(&deactivated).0, "allow", "{deactivated}");

    let start = Instant::now();
    let mut actions = Vec::new();
    while !actions
        .iter()
        .any(|a: &Value| a["action"]["kind"] == "announce-erasure")
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the grace period's timer never fired: {actions:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
        let (status, claimed) = service.admin("outbox/claim", json!({"limit": 100}));
        assert_eq!(status, 200);
        actions.extend(claimed["actions"].as_array().unwrap().iter().cloned());
    }
    let purged: Vec<&Value> = actions
        .iter()
        .filter(|a| a["action"]["kind"] == "purge-room-history")
        .map(|a| &a["action"]["room"])
        .collect();
    assert_eq!(purged, [&json!("!lonely:localhost")], "{actions:?}");

    // Asked by the timer, with the API secret, about both rooms.
    let seen = facts.seen.lock().unwrap().clone();
    for room in ["!lonely:localhost", "!shared:localhost"] {
        assert!(
            seen.iter()
                .any(|(line, auth)| line.starts_with("GET /facts?")
                    && line.contains("question=ever_joined_members")
                    && line.contains(&format!("subject={room} "))
                    && *auth == format!("Bearer {}", service.secret)),
            "{room} not asked with the secret: {seen:?}"
        );
    }
    assert!(service.stop().success());
}

#[test]
fn a_timer_whose_facts_do_not_come_is_retried_and_purges_then() {
    let dir = TempDir::new("serve-facts-retry");
    let port = free_port();
    let set = init(&dir.0, port);
    with_erasure_grace(&set, 500);
    // The homeserver does not answer the timer's first question (it is restarting, say).
    let facts =
        FactsEndpoint::start_failing(vec![("!lonely:localhost", vec!["@alice:localhost"])], 1);
    with_service_keys(&set, &format!("facts_url = {}", toml_string(&facts.url)));
    let service = Service::start(&set);
    erase_alice(&service, &["!lonely:localhost"]);

    // The first attempt fails (no decision on an answer that did not come); the retry, 10 s
    // later (TIMER_RETRY_BASE_MS), asks again and purges.
    let start = Instant::now();
    let mut actions: Vec<Value> = Vec::new();
    while !actions
        .iter()
        .any(|a| a["action"]["kind"] == "purge-room-history")
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never purged after the retry: {actions:?} {:?}",
            facts.seen.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(250));
        let (_, claimed) = service.admin("outbox/claim", json!({"limit": 100}));
        actions.extend(claimed["actions"].as_array().unwrap().iter().cloned());
    }
    let kinds: Vec<&Value> = actions
        .iter()
        .map(|a| &a["action"]["kind"])
        .filter(|k| *k != "leave-all-rooms" && *k != "remove-from-user-directory")
        .filter(|k| *k != "unbind-threepids" && *k != "delete-profile")
        .collect();
    assert_eq!(
        kinds,
        [&json!("announce-erasure"), &json!("purge-room-history")],
        "one erasure, announced once, after the retry: {actions:?}"
    );
    let asked = facts.seen.lock().unwrap().len();
    assert!(asked >= 2, "asked {asked} times");
    assert!(
        start.elapsed() >= Duration::from_secs(5),
        "purged before the retry could have run"
    );
    assert!(service.stop().success());
}
