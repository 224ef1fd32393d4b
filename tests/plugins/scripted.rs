// A test fixture plugin whose behaviour is set by its configuration, so integration tests can
// drive composition, failure containment (including hostile behaviour: infinite loops, memory
// bombs, panics, oversized output), transactional state and timers through the real host with
// a real compiled component. Built twice (scripted-a, scripted-b) under two names, so a chain
// can hold two of them. Not an example of a good policy.
//
// The two builds differ in one record, so tests can roll a plugin back and forth: each crate
// defines `Note`, the record under the key `note`, before including this file. scripted-a is
// the older build (`text`), scripted-b the newer one (`text`, and `tags` added with a default).
// The admin commands `note-write` (args: the note as JSON), `note-write-raw` (args: a string,
// stored as its bytes) and `note-read` write and read it; `note-read` answers the decoding
// error as data (`{"error": {...}}`), which shows the policy got it rather than trapped.

use std::collections::BTreeMap;

use mxpolicy_guest::{
    Action, AdminRequest, ConfigError, DeactivateContext, HttpRequest, HttpResponse,
    MediaFetchContext, MediaUploadContext, Outcome, Policy, ReactivateContext, SendContext,
    ServeContext, ServeOutcome, ServeVerdict, TimerContext, UserId, export_policy, homeserver,
    policy, state, timers,
};
use serde::Deserialize;
use serde_json::{Value, json};

/// A hook to misbehave in, and how.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Misbehave {
    /// The hook's WIT name, e.g. `on-send`.
    pub hook: String,
    /// `loop`, `oom`, `panic`, `huge-output`, `write-then-panic`, `bad-count`, `bad-action`,
    /// and the hostile ones: `recurse` (unbounded recursion), `log-flood` (a million log
    /// lines), `log-forge` (control characters and a fake log line), `write-flood` (state
    /// writes until refused), `big-cancel` (cancel a 1 MiB timer id), `big-payload` (a timer
    /// with a 1 MiB payload), `header-inject` (CR LF in a header value), `header-flood`
    /// (100,000 empty headers), `header-many` (100 valid headers).
    pub how: String,
}

/// The fixture's configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Deny sends (and media requests) with this errcode.
    #[serde(default)]
    pub deny: Option<String>,
    /// Only deny sends whose body contains this.
    #[serde(default)]
    pub deny_body: Option<String>,
    /// Per sender: `redact`, `withhold` or `pseudonymize:@pseudonym:server`.
    #[serde(default)]
    pub serve: BTreeMap<String, String>,
    /// Actions returned by every allow/deny hook and by timers:
    /// `{"kind": "delete-media", "mxc": ...}`, `{"kind": "leave-all-rooms", "user": ...}`, ...
    #[serde(default)]
    pub actions: Vec<Value>,
    /// Misbehave in one hook.
    #[serde(default)]
    pub misbehave: Option<Misbehave>,
    /// Misbehave in `init` itself: `loop` or `panic`.
    #[serde(default)]
    pub init: Option<String>,
    /// A label echoed in deny messages and admin answers, to tell configs and builds apart.
    #[serde(default)]
    pub label: String,
    /// Spin this many iterations in on-send before answering (to keep a call in flight).
    #[serde(default)]
    pub spin: u64,
    /// On each send, schedule a timer this many ms after `now`.
    #[serde(default)]
    pub timer_after_ms: Option<u64>,
    /// On each send, ask the homeserver for the members of this room (tests use a homeserver
    /// that blocks there, to hold a call in flight deterministically).
    #[serde(default)]
    pub query_members_of: Option<String>,
    /// On each timer, ask the homeserver for the members of this room (as above).
    #[serde(default)]
    pub timer_query_members_of: Option<String>,
    /// On each send, write this many new one-byte keys `k/<n>`.
    #[serde(default)]
    pub write_keys: u64,
    /// On each send, schedule this many new timers `many/<n>`, due at `now`.
    #[serde(default)]
    pub schedule_timers: u64,
    /// On each send, append to the list under `list` (a read-modify-write, like the call
    /// counter), to test that concurrent calls lose no update.
    #[serde(default)]
    pub append: bool,
    /// On each send, write the two related keys `pair/a/<body>` and `pair/b/<body>` and return
    /// one server notice to the sender whose body is the message's body (the crash test).
    #[serde(default)]
    pub pair: bool,
}

/// The fixture policy.
pub struct Scripted {
    config: Config,
}

/// A value only this fixture writes (counters, the list). One that does not decode is a broken
/// test set-up: the call traps, naming the key.
fn own<T: serde::de::DeserializeOwned + Default>(key: &str) -> T {
    match state::get::<T>(key) {
        Ok(value) => value.unwrap_or_default(),
        Err(e) => panic!("{e}"),
    }
}

/// Calls this instance has run (its memory, not its state): 1 in a fresh instance, more in a
/// reused one.
static CALLS_IN_MEMORY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn count(hook: &str) -> u64 {
    CALLS_IN_MEMORY.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let key = format!("calls/{hook}");
    let n = own::<u64>(&key) + 1;
    state::set(&key, &n);
    n
}

impl Scripted {
    fn misbehave(&self, hook: &str) -> Option<&str> {
        self.config
            .misbehave
            .as_ref()
            .filter(|m| m.hook == hook)
            .map(|m| m.how.as_str())
    }

    /// Count the call, then misbehave if configured. Returns `true` for `huge-output`.
    fn enter(&self, hook: &str) -> Option<&str> {
        count(hook);
        match self.misbehave(hook) {
            Some("loop") => loop {
                std::hint::black_box(0u64);
            },
            Some("oom") => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![7u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            Some("panic") | Some("write-then-panic") => panic!("scripted panic in {hook}"),
            Some("recurse") => {
                std::hint::black_box(recurse(std::hint::black_box(1)));
                None
            }
            Some("log-flood") => {
                for i in 0..1_000_000u32 {
                    mxpolicy_guest::log::info(&format!("flood line {i}"));
                }
                None
            }
            Some("log-forge") => {
                mxpolicy_guest::log::warn(
                    "innocent\n2026-01-01T00:00:00Z ERROR forged: admin password reset\u{1b}[2J",
                );
                None
            }
            Some("write-flood") => {
                for i in 0u64.. {
                    state::set_raw(&format!("flood/{i}"), &[1]);
                }
                None
            }
            Some("big-cancel") => {
                timers::cancel(&"c".repeat(1 << 20));
                None
            }
            Some("big-payload") => {
                timers::schedule("big", 0, &vec![7u8; 1 << 20]);
                None
            }
            other => other,
        }
    }

    fn actions(&self) -> Vec<Action> {
        let bad = self
            .config
            .misbehave
            .as_ref()
            .is_some_and(|m| m.how == "bad-action");
        let mut out: Vec<Action> = self.config.actions.iter().filter_map(action).collect();
        if bad {
            out.push(Action::LeaveAllRooms(UserId::from("not-a-user-id")));
        }
        out
    }

    fn outcome(&self, hook: &str, body: Option<&str>) -> Outcome {
        let how = self.enter(hook);
        let mut out = match &self.config.deny {
            Some(errcode)
                if self
                    .config
                    .deny_body
                    .as_deref()
                    .is_none_or(|w| body.is_some_and(|b| b.contains(w))) =>
            {
                let message = if how == Some("huge-output") {
                    "x".repeat(4 << 20)
                } else {
                    format!("denied by {}", self.config.label)
                };
                Outcome::deny(errcode, message).with_field("label", self.config.label.as_str())
            }
            _ => Outcome::allow(),
        };
        if how == Some("huge-output") && out.is_allow() {
            out = Outcome::deny("M_FORBIDDEN", "x".repeat(4 << 20));
        }
        out.actions = self.actions();
        out
    }

    fn serve(&self, hook: &str, ctx: &ServeContext) -> ServeOutcome {
        let how = self.enter(hook);
        let mut verdicts: Vec<ServeVerdict> = ctx
            .events
            .iter()
            .map(
                |e| match self.config.serve.get(e.sender.as_str()).map(String::as_str) {
                    Some("redact") => ServeVerdict::Redact,
                    Some("withhold") => ServeVerdict::Withhold,
                    Some(p) if p.starts_with("pseudonymize:") => {
                        ServeVerdict::Pseudonymize(UserId::from(&p["pseudonymize:".len()..]))
                    }
                    _ => ServeVerdict::Serve,
                },
            )
            .collect();
        if how == Some("bad-count") {
            verdicts.push(ServeVerdict::Serve);
        }
        ServeOutcome {
            verdicts,
            actions: self.actions(),
        }
    }
}

/// Recursion without end, each frame keeping a buffer on the shadow stack.
#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    let buf = std::hint::black_box([n; 64]);
    recurse(buf[(n % 64) as usize].wrapping_add(1)).wrapping_add(buf[3])
}

/// Next value of a counter kept in state.
fn next(key: &str) -> u64 {
    let n = own::<u64>(key);
    state::set(key, &(n + 1));
    n
}

fn action(v: &Value) -> Option<Action> {
    let s = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    Some(match v.get("kind")?.as_str()? {
        "leave-all-rooms" => Action::LeaveAllRooms(s("user").into()),
        "remove-from-user-directory" => Action::RemoveFromUserDirectory(s("user").into()),
        "unbind-threepids" => Action::UnbindThreepids(s("user").into()),
        "delete-profile" => Action::DeleteProfile(s("user").into()),
        "purge-room-history" => Action::PurgeRoomHistory(s("room").into()),
        "delete-media" => Action::DeleteMedia(s("mxc").into()),
        "announce-erasure" => Action::AnnounceErasure(s("user").into()),
        "send-server-notice" => Action::SendServerNotice {
            user: s("user").into(),
            body: s("body"),
            content: Default::default(),
        },
        _ => return None,
    })
}

#[policy]
impl Policy for Scripted {
    const NAME: &'static str = env!("CARGO_PKG_NAME");
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Config = Config;

    fn new(config: Config) -> Result<Self, ConfigError> {
        match config.init.as_deref() {
            Some("loop") => loop {
                std::hint::black_box(0u64);
            },
            Some("panic") => panic!("scripted panic in init"),
            Some(other) => return Err(ConfigError::new("init", format!("unknown `{other}`"))),
            None => {}
        }
        if config.deny.as_ref().is_some_and(|e| !e.starts_with("M_")) {
            return Err(ConfigError::new("deny", "an errcode starts with M_"));
        }
        Ok(Self { config })
    }

    fn on_send(&self, ctx: &SendContext) -> Outcome {
        let mut spun = 0u64;
        for i in 0..self.config.spin {
            spun = std::hint::black_box(spun.wrapping_add(i));
        }
        if let Some(room) = &self.config.query_members_of {
            let members = homeserver::members_of_room(&room.as_str().into());
            state::set("last-members", &members.len());
        }
        if self.config.pair {
            let body = ctx.content["body"].as_str().unwrap_or_default();
            state::set_raw(&format!("pair/a/{body}"), body.as_bytes());
            state::set_raw(&format!("pair/b/{body}"), body.as_bytes());
            let mut out = Outcome::allow();
            out.actions.push(Action::SendServerNotice {
                user: ctx.sender.clone(),
                body: body.to_owned(),
                content: Default::default(),
            });
            return out;
        }
        if self.config.append {
            let mut list: Vec<u64> = own("list");
            list.push(list.len() as u64);
            state::set("list", &list);
        }
        for _ in 0..self.config.write_keys {
            let n = next("next-key");
            state::set_raw(&format!("k/{n:08}"), &[1]);
        }
        for _ in 0..self.config.schedule_timers {
            let n = next("next-timer");
            timers::schedule(&format!("many/{n:08}"), ctx.now_ms, self.config.label.as_str());
        }
        if let Some(after) = self.config.timer_after_ms {
            let n = state::keys("timer-scheduled/").len();
            state::set(&format!("timer-scheduled/{n}"), &true);
            timers::schedule(
                &format!("t/{n}"),
                ctx.now_ms + after,
                self.config.label.as_str(),
            );
        }
        self.outcome("on-send", ctx.content["body"].as_str())
    }

    fn on_client_serve(&self, ctx: &ServeContext) -> ServeOutcome {
        self.serve("on-client-serve", ctx)
    }

    fn on_federation_serve(&self, ctx: &ServeContext) -> ServeOutcome {
        self.serve("on-federation-serve", ctx)
    }

    fn on_deactivate(&self, _ctx: &DeactivateContext) -> Outcome {
        self.outcome("on-deactivate", None)
    }

    fn on_reactivate(&self, _ctx: &ReactivateContext) -> Outcome {
        self.outcome("on-reactivate", None)
    }

    fn on_media_upload(&self, _ctx: &MediaUploadContext) -> Outcome {
        self.outcome("on-media-upload", None)
    }

    fn on_media_fetch(&self, _ctx: &MediaFetchContext) -> Outcome {
        self.outcome("on-media-fetch", None)
    }

    fn on_http(&self, req: &HttpRequest) -> HttpResponse {
        let how = self.enter("on-http");
        if how == Some("huge-output") {
            return HttpResponse::text(200, "x".repeat(4 << 20));
        }
        if how == Some("header-inject") {
            let mut r = HttpResponse::text(200, "ok");
            r.headers
                .push(("x-next".into(), "a\r\nSet-Cookie: session=stolen".into()));
            return r;
        }
        if how == Some("header-many") {
            let mut r = HttpResponse::text(200, "ok");
            r.headers
                .extend((0..99).map(|i| (format!("x-h{i}"), "v".to_owned())));
            return r;
        }
        if how == Some("header-flood") {
            let mut r = HttpResponse::text(200, "ok");
            r.headers
                .extend((0..100_000).map(|_| (String::new(), String::new())));
            return r;
        }
        HttpResponse::text(
            200,
            format!("{} {} {}", self.config.label, req.method, req.path),
        )
    }

    fn on_timer(&self, ctx: &TimerContext) -> Vec<Action> {
        self.enter("on-timer");
        if let Some(room) = &self.config.timer_query_members_of {
            let members = homeserver::members_of_room(&room.as_str().into());
            state::set("last-timer-members", &members.len());
        }
        state::set(
            &format!("fired/{}", ctx.id),
            &ctx.payload::<String>().unwrap_or_default(),
        );
        self.actions()
    }

    fn on_admin(&self, req: &AdminRequest) -> Result<Value, String> {
        self.enter("on-admin");
        match req.command.as_str() {
            "calls" => {
                let calls: BTreeMap<String, u64> = state::keys("calls/")
                    .into_iter()
                    .map(|k| {
                        let n = own::<u64>(&k);
                        (k.trim_start_matches("calls/").to_owned(), n)
                    })
                    .collect();
                Ok(json!({"label": self.config.label, "calls": calls}))
            }
            "echo" => Ok(req.args.clone()),
            "memory-calls" => Ok(json!(
                CALLS_IN_MEMORY.load(std::sync::atomic::Ordering::Relaxed)
            )),
            "page" => Ok(json!(state::keys_page(
                req.args["prefix"].as_str().unwrap_or_default(),
                req.args["after"].as_str(),
                req.args["limit"].as_u64().unwrap_or(10) as u32,
            ))),
            "iter-count" => Ok(json!(state::keys_iter("k/").count())),
            "write-then-page" => {
                // The call's own writes and deletes show in its pages.
                state::set_raw("k/00000000-new", b"1");
                state::delete("k/00000001");
                Ok(json!(state::keys_page("k/", None, 3)))
            }
            "count-keys" => Ok(json!(state::keys("k/").len())),
            "list" => Ok(json!(own::<Vec<u64>>("list"))),
            "read" => Ok(json!(
                state::get_raw(req.args.as_str().unwrap_or_default())
                    .map(|v| String::from_utf8_lossy(&v).into_owned())
            )),
            "note-write" => {
                let note: Note =
                    serde_json::from_value(req.args.clone()).map_err(|e| e.to_string())?;
                state::set("note", &note);
                Ok(json!({ "written": note }))
            }
            "note-write-raw" => {
                let bytes = req.args.as_str().ok_or("a string is required")?;
                state::set_raw("note", bytes.as_bytes());
                Ok(json!({ "written": bytes }))
            }
            "note-read" => Ok(match state::get::<Note>("note") {
                Ok(note) => json!({ "note": note }),
                Err(e) => json!({"error": {
                    "key": e.key(),
                    "type": e.type_name(),
                    "cause": e.cause(),
                    "message": e.to_string(),
                }}),
            }),
            other => Err(format!("unknown command `{other}`")),
        }
    }
}

export_policy!(Scripted);
