//! The readable form of a replay, for a terminal: a header naming the scenario and its
//! plugins, then one table row per step (what it did, to whom, what came out, how many actions,
//! whether its expectations held). The JSON lines stay the machine-readable form.

use serde_json::{Map, Value};

use super::term::{Align, Cell, Table, Tone, paint, sanitize, truncate};
use crate::scenario::{Op, Step};

/// Widest "who / what" cell; longer ones are cut with `…` (the JSON lines have everything).
const SUBJECT_WIDTH: usize = 56;
/// Widest outcome cell.
const OUTCOME_WIDTH: usize = 48;
/// Widest note cell.
const NOTE_WIDTH: usize = 72;
/// Widest description under the file's name.
const DESCRIPTION_WIDTH: usize = 120;

/// How a step came out, as the table shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRow {
    /// The step's index.
    pub step: usize,
    /// The op's name.
    pub op: &'static str,
    /// Who or what the op is about (`@alice:hs.example in !r:hs.example`).
    pub subject: String,
    /// What came out (`allow`, `deny M_FORBIDDEN (consent)`, `HTTP 200`, ...).
    pub outcome: String,
    /// The tone of the outcome: allow, deny, error.
    pub tone: Tone,
    /// The number of actions the hooks returned, when the op reports actions.
    pub actions: Option<usize>,
    /// Whether the step had expectations.
    pub checked: bool,
    /// Whether its expectations held (and it reported no error it did not expect).
    pub ok: bool,
    /// The step's note.
    pub note: Option<String>,
}

impl StepRow {
    /// The row of step `index`, from the step and its judged report.
    pub fn new(index: usize, step: &Step, report: &Map<String, Value>) -> Self {
        let (outcome, tone) = outcome(&step.op, report);
        Self {
            step: index,
            op: step.op.name(),
            subject: subject(&step.op),
            outcome,
            tone,
            actions: report
                .get("actions")
                .and_then(Value::as_array)
                .map(Vec::len),
            checked: step.expect.is_some(),
            ok: report.get("ok").and_then(Value::as_bool).unwrap_or(true),
            note: step.note.clone(),
        }
    }
}

/// A scenario file's replay, for the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileTable {
    /// The scenario file, as named on the command line.
    pub scenario: String,
    /// Its description.
    pub description: Option<String>,
    /// The simulated homeserver's name.
    pub server_name: String,
    /// The plugins loaded, `(name, version)`, in chain order.
    pub plugins: Vec<(String, String)>,
    /// The steps run (up to the one with bad input, if any).
    pub rows: Vec<StepRow>,
}

/// The readable report of one file: its name and description, its plugins, then the table of
/// steps. Colours only when `color` (see `term::color_enabled`).
pub fn render(file: &FileTable, color: bool) -> String {
    let mut out = paint(&sanitize(&file.scenario), Tone::Bold, color);
    out.push('\n');
    if let Some(d) = &file.description {
        out.push_str(&paint(
            &truncate(&sanitize(d), DESCRIPTION_WIDTH),
            Tone::Dim,
            color,
        ));
        out.push('\n');
    }
    let plugins: Vec<String> = file
        .plugins
        .iter()
        .map(|(name, version)| format!("{name} {version}"))
        .collect();
    let plugins = if plugins.is_empty() {
        "none".to_owned()
    } else {
        plugins.join(", ")
    };
    out.push_str(&sanitize(&format!(
        "server {}, plugins: {plugins}",
        file.server_name
    )));
    out.push_str("\n\n");
    out.push_str(&steps_table(&file.rows).render(color));
    out
}

fn steps_table(rows: &[StepRow]) -> Table {
    let mut table = Table::new(&[
        ("STEP", Align::Right),
        ("OP", Align::Left),
        ("WHO / WHAT", Align::Left),
        ("OUTCOME", Align::Left),
        ("ACTIONS", Align::Right),
        ("CHECK", Align::Left),
        ("NOTE", Align::Left),
    ]);
    for r in rows {
        let check = match (r.ok, r.checked) {
            (false, _) => Cell::new("FAIL", Tone::Bad, 4),
            (true, true) => Cell::new("PASS", Tone::Good, 4),
            (true, false) => Cell::new("-", Tone::Dim, 1),
        };
        let actions = match r.actions {
            Some(0) => Cell::new("0", Tone::Dim, 8),
            Some(n) => Cell::plain(&n.to_string(), 8),
            None => Cell::default(),
        };
        table.row(vec![
            Cell::plain(&r.step.to_string(), 8),
            Cell::plain(r.op, 24),
            Cell::plain(&r.subject, SUBJECT_WIDTH),
            Cell::new(&r.outcome, r.tone, OUTCOME_WIDTH),
            actions,
            check,
            Cell::new(r.note.as_deref().unwrap_or(""), Tone::Dim, NOTE_WIDTH),
        ]);
    }
    table
}

/// Who or what a step is about, without the op's name (its own column).
fn subject(op: &Op) -> String {
    let or_anonymous = |s: Option<&str>| s.unwrap_or("anonymous").to_owned();
    match op {
        Op::Clock { .. } | Op::RunTimers {} => String::new(),
        Op::Advance { ms } => format!("+{}", duration(*ms)),
        Op::Register { user, kind } => {
            let kind = serde_json::to_value(kind).unwrap_or(Value::Null);
            match kind.as_str() {
                Some(k) if k != "regular" => format!("{user} ({k})"),
                _ => user.to_string(),
            }
        }
        Op::CreateRoom { room, creator, .. } => format!("{room} by {creator}"),
        Op::Join { room, user, .. } => format!("{user} to {room}"),
        Op::Leave { room, user, .. } => format!("{user} from {room}"),
        Op::Invite { room, user, by, .. } => format!("{user} to {room} by {by}"),
        Op::Consent { user, version, .. } => format!("{user} to {version}"),
        Op::Send {
            room,
            sender,
            event_type,
            ..
        } => {
            if event_type == "m.room.message" {
                format!("{sender} in {room}")
            } else {
                format!("{sender} in {room} ({event_type})")
            }
        }
        Op::Deactivate { user, erase, .. } => {
            if *erase {
                format!("{user} (erase)")
            } else {
                user.to_string()
            }
        }
        Op::Reactivate { user, .. } => user.to_string(),
        Op::Upload { user, mxc, .. } => format!("{mxc} by {user}"),
        Op::FetchMedia { mxc, requester } => {
            format!("{mxc} by {}", or_anonymous(requester.as_deref()))
        }
        Op::ClientServe { viewer, event_ids } => format!(
            "{} to {}",
            events(event_ids.len()),
            or_anonymous(viewer.as_ref().map(|v| v.as_str()))
        ),
        Op::FederationServe { server, event_ids } => {
            format!("{} to {server}", events(event_ids.len()))
        }
        Op::Http {
            plugin,
            method,
            path,
            query,
            ..
        } => {
            let query = if query.is_empty() {
                String::new()
            } else {
                format!("?{query}")
            };
            format!("{plugin}: {method} {path}{query}")
        }
        Op::Swap {
            plugin,
            path,
            config,
            ..
        } => {
            let mut what = Vec::new();
            if path.is_some() {
                what.push("new build");
            }
            if config.is_some() {
                what.push("new config");
            }
            if what.is_empty() {
                plugin.clone()
            } else {
                format!("{plugin} ({})", what.join(", "))
            }
        }
        Op::Admin {
            plugin, command, ..
        } => format!("{command} on {plugin}"),
        Op::Inspect { user, room, mxc } => user
            .as_ref()
            .map(|u| u.to_string())
            .or_else(|| room.as_ref().map(|r| r.to_string()))
            .or_else(|| mxc.as_ref().map(|m| m.to_string()))
            .unwrap_or_default(),
    }
}

fn events(n: usize) -> String {
    if n == 1 {
        "1 event".into()
    } else {
        format!("{n} events")
    }
}

/// What came out of a step, from its report: the error, the verdict, the serve verdicts, the
/// HTTP status, the timers fired, the swapped plugin, an admin answer; for `clock` and
/// `advance`, the time they set.
fn outcome(op: &Op, r: &Map<String, Value>) -> (String, Tone) {
    if let (Op::Clock { .. } | Op::Advance { .. }, Some(now)) =
        (op, r.get("now_ms").and_then(Value::as_u64))
    {
        return (format!("now {}", timestamp(now)), Tone::Dim);
    }
    let text = |key: &str| r.get(key).and_then(Value::as_str);
    let failures = match r.get("failures").and_then(Value::as_array).map(Vec::len) {
        Some(0) | None => String::new(),
        Some(1) => ", 1 failure".into(),
        Some(n) => format!(", {n} failures"),
    };
    if let Some(e) = text("error") {
        return (format!("error: {e}"), Tone::Bad);
    }
    if let Some(v) = text("verdict") {
        return match (v, text("errcode")) {
            ("deny", code) => {
                let by = text("decided_by")
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default();
                let code = code.map(|c| format!(" {c}")).unwrap_or_default();
                (format!("deny{code}{by}{failures}"), Tone::Warn)
            }
            (v, _) => (format!("{v}{failures}"), Tone::Good),
        };
    }
    if let Some(verdicts) = r.get("verdicts").and_then(Value::as_array) {
        return (
            format!("{}{failures}", count_verdicts(verdicts)),
            Tone::Plain,
        );
    }
    if let Some(status) = r.get("status").and_then(Value::as_u64) {
        let tone = if status < 400 {
            Tone::Plain
        } else {
            Tone::Warn
        };
        return (format!("HTTP {status}{failures}"), tone);
    }
    if let Some(fired) = r.get("fired").and_then(Value::as_array) {
        let text = match fired.len() {
            0 => "no timer due".to_owned(),
            1 => "1 timer fired".to_owned(),
            n => format!("{n} timers fired"),
        };
        return (format!("{text}{failures}"), Tone::Plain);
    }
    if let Some(p) = r.get("plugin").and_then(Value::as_object) {
        let field = |k: &str| p.get(k).map(|v| v.to_string().trim_matches('"').to_owned());
        return (
            format!(
                "now {} {}, generation {}",
                field("name").unwrap_or_default(),
                field("version").unwrap_or_default(),
                field("generation").unwrap_or_default()
            ),
            Tone::Plain,
        );
    }
    if r.contains_key("result") {
        return ("ok".into(), Tone::Plain);
    }
    (String::new(), Tone::Plain)
}

/// `["serve", "serve", "redact"]` as `2 serve, redact`: each verdict once, in the order met,
/// with its count when more than one.
fn count_verdicts(verdicts: &[Value]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for v in verdicts {
        let v = v.as_str().unwrap_or("?");
        match counts.iter_mut().find(|(name, _)| *name == v) {
            Some((_, n)) => *n += 1,
            None => counts.push((v, 1)),
        }
    }
    if counts.is_empty() {
        return "nothing".into();
    }
    counts
        .iter()
        .map(|(v, n)| {
            if *n == 1 {
                (*v).to_owned()
            } else {
                format!("{n} {v}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A duration in milliseconds as days, hours, minutes, seconds and milliseconds: `29d`,
/// `1d 2h 30m`, `1500ms` is `1s 500ms`, `0` is `0ms`.
fn duration(ms: u64) -> String {
    let units = [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ];
    let mut rest = ms;
    let mut parts = Vec::new();
    for (unit, size) in units {
        if rest >= size {
            parts.push(format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    if parts.is_empty() {
        "0ms".into()
    } else {
        parts.join(" ")
    }
}

/// Milliseconds since the Unix epoch as a UTC time, `2026-01-01 00:00:00Z` (with `.mmm` when
/// the milliseconds are not zero).
fn timestamp(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    let millis = match ms % 1000 {
        0 => String::new(),
        m => format!(".{m:03}"),
    };
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}{millis}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn row(step: usize, op: &'static str, subject: &str, outcome: &str, tone: Tone) -> StepRow {
        StepRow {
            step,
            op,
            subject: subject.into(),
            outcome: outcome.into(),
            tone,
            actions: None,
            checked: false,
            ok: true,
            note: None,
        }
    }

    fn sample() -> FileTable {
        FileTable {
            scenario: "tests/scenarios/keyword-filter.json".into(),
            description: Some("The keyword filter\nin action".into()),
            server_name: "hs.example".into(),
            plugins: vec![("keyword-filter".into(), "0.1.0".into())],
            rows: vec![
                row(0, "register", "@alice:hs.example", "", Tone::Plain),
                StepRow {
                    actions: Some(0),
                    checked: true,
                    note: Some("spam is refused".into()),
                    ..row(
                        1,
                        "send",
                        "@alice:hs.example in !r:hs.example",
                        "deny M_FORBIDDEN (keyword-filter)",
                        Tone::Warn,
                    )
                },
                StepRow {
                    actions: Some(2),
                    checked: true,
                    ok: false,
                    ..row(12, "run_timers", "", "1 timer fired", Tone::Plain)
                },
            ],
        }
    }

    #[test]
    fn the_table_without_colour_is_plain_aligned_text() {
        let text = render(&sample(), false);
        assert!(!text.contains('\x1b'), "{text}");
        let expected = "\
tests/scenarios/keyword-filter.json
The keyword filter in action
server hs.example, plugins: keyword-filter 0.1.0

STEP  OP          WHO / WHAT                          OUTCOME                            ACTIONS  CHECK  NOTE
   0  register    @alice:hs.example                                                               -
   1  send        @alice:hs.example in !r:hs.example  deny M_FORBIDDEN (keyword-filter)        0  PASS   spam is refused
  12  run_timers                                      1 timer fired                            2  FAIL
";
        assert_eq!(text, expected);
    }

    #[test]
    fn the_table_with_colour_marks_pass_and_fail() {
        let text = render(&sample(), true);
        assert!(text.contains("\x1b[32mPASS\x1b[0m"), "{text:?}");
        assert!(text.contains("FAIL\x1b[0m"), "{text:?}");
        assert!(text.contains("\x1b[31m"), "{text:?}");
        // Escapes do not shift the columns: the same text once they are removed.
        let stripped = strip_escapes(&text);
        assert_eq!(stripped, render(&sample(), false));
    }

    #[test]
    fn long_cells_are_cut_and_control_characters_escaped() {
        let mut file = sample();
        file.rows[0].subject = "x".repeat(200);
        file.rows[0].note = Some("evil \x1b[2J note".into());
        let text = render(&file, false);
        assert!(
            text.contains(&format!("{}…", "x".repeat(SUBJECT_WIDTH - 1))),
            "{text}"
        );
        assert!(text.contains("evil \\u{1b}[2J note"), "{text}");
        assert!(!text.contains('\x1b'), "{text}");
    }

    #[test]
    fn outcomes_read_from_the_report() {
        let run_timers = Op::RunTimers {};
        let o = |v: Value| outcome(&run_timers, v.as_object().unwrap());
        assert_eq!(
            o(json!({"verdict": "allow", "failures": [], "actions": []})),
            ("allow".into(), Tone::Good)
        );
        assert_eq!(
            o(json!({"verdict": "deny", "errcode": "M_NOT_FOUND", "decided_by": "homeserver"})),
            ("deny M_NOT_FOUND (homeserver)".into(), Tone::Warn)
        );
        assert_eq!(
            o(json!({"verdict": "allow", "failures": [{}, {}]})).0,
            "allow, 2 failures"
        );
        assert_eq!(
            o(json!({"verdicts": ["serve", "redact", "serve", "not_found"]})).0,
            "2 serve, redact, not_found"
        );
        assert_eq!(o(json!({"status": 403})), ("HTTP 403".into(), Tone::Warn));
        assert_eq!(o(json!({"fired": []})).0, "no timer due");
        assert_eq!(
            o(json!({"error": "plugin `x` refused"})),
            ("error: plugin `x` refused".into(), Tone::Bad)
        );
        assert_eq!(
            o(json!({"plugin": {"name": "consent", "version": "0.2.0", "generation": 4}})).0,
            "now consent 0.2.0, generation 4"
        );
        assert_eq!(o(json!({"result": {"ok": 1}, "now_ms": 0})).0, "ok");
        assert_eq!(o(json!({"now_ms": 0, "facts": {}})).0, "");
        let clock = Op::Clock { now_ms: 0 };
        let now = json!({"now_ms": 1_767_225_600_000_u64});
        assert_eq!(
            outcome(&clock, now.as_object().unwrap()),
            ("now 2026-01-01 00:00:00Z".into(), Tone::Dim)
        );
    }

    #[test]
    fn durations_and_timestamps() {
        assert_eq!(duration(0), "0ms");
        assert_eq!(duration(60_000), "1m");
        assert_eq!(duration(29 * 86_400_000), "29d");
        assert_eq!(
            duration(86_400_000 + 2 * 3_600_000 + 1500),
            "1d 2h 1s 500ms"
        );
        assert_eq!(timestamp(0), "1970-01-01 00:00:00Z");
        assert_eq!(timestamp(1_769_904_060_000), "2026-02-01 00:01:00Z");
        assert_eq!(timestamp(951_782_400_123), "2000-02-29 00:00:00.123Z");
    }

    #[test]
    fn subjects_name_who_and_what() {
        let op = |v: Value| -> Op {
            let Value::Object(mut m) = v else {
                unreachable!()
            };
            let name = m.remove("op").unwrap();
            serde_json::from_value(json!({ name.as_str().unwrap(): m })).unwrap()
        };
        assert_eq!(
            subject(&op(
                json!({"op": "send", "room": "!r:hs", "sender": "@a:hs"})
            )),
            "@a:hs in !r:hs"
        );
        assert_eq!(
            subject(&op(json!({"op": "fetch_media", "mxc": "mxc://hs/x"}))),
            "mxc://hs/x by anonymous"
        );
        assert_eq!(
            subject(&op(
                json!({"op": "register", "user": "@b:hs", "kind": "bot"})
            )),
            "@b:hs (bot)"
        );
        assert_eq!(subject(&op(json!({"op": "advance", "ms": 60_000}))), "+1m");
        assert_eq!(
            subject(&op(
                json!({"op": "client_serve", "event_ids": ["$a", "$b"]})
            )),
            "2 events to anonymous"
        );
        assert_eq!(
            subject(&op(
                json!({"op": "http", "plugin": "consent", "path": "/c", "query": "u=1"})
            )),
            "consent: GET /c?u=1"
        );
    }

    /// Remove the SGR escapes `\x1b[...m`.
    fn strip_escapes(s: &str) -> String {
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }
}
