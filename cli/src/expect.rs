//! Expectations: what a step's `expect` may hold, how each key is compared with the step's
//! report, and a readable rendering of the differences.

use serde::Deserialize;
use serde_json::{Map, Value};

/// What a step expects. Every key is optional; only the keys given are checked.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// `allow` or `deny`.
    #[serde(default)]
    pub verdict: Option<String>,
    /// The deny's errcode.
    #[serde(default)]
    pub errcode: Option<String>,
    /// A substring of the deny's human-readable message.
    #[serde(default)]
    pub message_contains: Option<String>,
    /// Extra keys of the deny's error body: only the keys given are compared.
    #[serde(default)]
    pub fields: Option<Map<String, Value>>,
    /// The plugin whose verdict decided (`homeserver` for the simulation's own checks), or
    /// null for none.
    #[serde(default, deserialize_with = "some")]
    pub decided_by: Option<Value>,
    /// The actions, in order: same count, each action's given keys compared.
    #[serde(default)]
    pub actions: Option<Vec<Value>>,
    /// Contained plugin failures: same count, each failure's given keys compared.
    #[serde(default)]
    pub failures: Option<Vec<Value>>,
    /// One serve verdict per requested event.
    #[serde(default)]
    pub verdicts: Option<Vec<String>>,
    /// The events exactly as served (withheld and invisible ones left out).
    #[serde(default)]
    pub events: Option<Vec<Value>>,
    /// The HTTP status.
    #[serde(default)]
    pub status: Option<u16>,
    /// A substring of the HTTP body.
    #[serde(default)]
    pub body_contains: Option<String>,
    /// A string the HTTP body must not contain.
    #[serde(default)]
    pub body_not_contains: Option<String>,
    /// The admin command's JSON answer: objects compared on the keys given.
    #[serde(default, deserialize_with = "some")]
    pub result: Option<Value>,
    /// The step fails with an error containing this.
    #[serde(default)]
    pub error: Option<String>,
    /// The timers fired by `run_timers`: same count, each timer's given keys compared.
    #[serde(default)]
    pub fired: Option<Vec<Value>>,
    /// What `inspect` reports: objects compared on the keys given.
    #[serde(default)]
    pub facts: Option<Value>,
}

/// Deserialize a present value (even `null`) as `Some`.
fn some<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

const VERDICT_OPS: &[&str] = &[
    "send",
    "join",
    "leave",
    "invite",
    "deactivate",
    "reactivate",
    "upload",
    "fetch_media",
];
const SERVE_OPS: &[&str] = &["client_serve", "federation_serve"];

impl Expect {
    /// The expectation keys given, in declaration order.
    fn keys(&self) -> Vec<&'static str> {
        let mut k = Vec::new();
        let mut add = |present: bool, name| {
            if present {
                k.push(name)
            }
        };
        add(self.verdict.is_some(), "verdict");
        add(self.errcode.is_some(), "errcode");
        add(self.message_contains.is_some(), "message_contains");
        add(self.fields.is_some(), "fields");
        add(self.decided_by.is_some(), "decided_by");
        add(self.actions.is_some(), "actions");
        add(self.failures.is_some(), "failures");
        add(self.verdicts.is_some(), "verdicts");
        add(self.events.is_some(), "events");
        add(self.status.is_some(), "status");
        add(self.body_contains.is_some(), "body_contains");
        add(self.body_not_contains.is_some(), "body_not_contains");
        add(self.result.is_some(), "result");
        add(self.error.is_some(), "error");
        add(self.fired.is_some(), "fired");
        add(self.facts.is_some(), "facts");
        k
    }

    /// Refuse expectation keys that the op never reports (a typo or a misunderstanding).
    pub fn check_applies_to(&self, op: &str) -> Result<(), String> {
        let allowed: &[&str] = if VERDICT_OPS.contains(&op) {
            &[
                "verdict",
                "errcode",
                "message_contains",
                "fields",
                "decided_by",
                "actions",
                "failures",
            ]
        } else if SERVE_OPS.contains(&op) {
            &["verdicts", "events", "decided_by", "actions", "failures"]
        } else {
            match op {
                "http" => &[
                    "status",
                    "body_contains",
                    "body_not_contains",
                    "actions",
                    "failures",
                    "error",
                ],
                "run_timers" => &["fired", "actions", "failures", "error"],
                "admin" | "consent" => &["result", "error"],
                "swap" => &["error"],
                "inspect" => &["facts"],
                _ => &[],
            }
        };
        if let Some(bad) = self.keys().into_iter().find(|k| !allowed.contains(k)) {
            return Err(if allowed.is_empty() {
                format!("expect.{bad}: op `{op}` takes no expectations")
            } else {
                format!(
                    "expect.{bad} does not apply to op `{op}` (it takes: {})",
                    allowed.join(", ")
                )
            });
        }
        if let Some(v) = &self.verdict
            && v != "allow"
            && v != "deny"
        {
            return Err(format!(
                "expect.verdict must be \"allow\" or \"deny\", not {v:?}"
            ));
        }
        if let Some(vs) = &self.verdicts {
            const VALID: [&str; 6] = [
                "serve",
                "redact",
                "pseudonymize",
                "withhold",
                "not_visible",
                "not_found",
            ];
            if let Some(bad) = vs.iter().find(|v| !VALID.contains(&v.as_str())) {
                return Err(format!(
                    "expect.verdicts: unknown verdict {bad:?} (valid: {})",
                    VALID.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// Compare with a step's report; an empty list means every expectation holds.
    pub fn compare(&self, report: &Map<String, Value>) -> Vec<Mismatch> {
        let mut out = Vec::new();
        let get = |k: &str| report.get(k).cloned().unwrap_or(Value::Null);
        if let Some(v) = &self.verdict {
            exact(
                &mut out,
                "verdict",
                &Value::from(v.as_str()),
                &get("verdict"),
            );
        }
        if let Some(v) = &self.errcode {
            exact(
                &mut out,
                "errcode",
                &Value::from(v.as_str()),
                &get("errcode"),
            );
        }
        if let Some(v) = &self.message_contains {
            contains(&mut out, "message", v, &get("message"), true);
        }
        if let Some(v) = &self.fields {
            let actual = match get("fields") {
                Value::Null => Value::Object(Map::new()),
                other => other,
            };
            subset(&mut out, "fields", &Value::Object(v.clone()), &actual);
        }
        if let Some(v) = &self.decided_by {
            exact(&mut out, "decided_by", v, &get("decided_by"));
        }
        for (key, list) in [
            ("actions", &self.actions),
            ("failures", &self.failures),
            ("fired", &self.fired),
        ] {
            if let Some(v) = list {
                let actual = match get(key) {
                    Value::Null => Value::Array(Vec::new()),
                    other => other,
                };
                subset(&mut out, key, &Value::Array(v.clone()), &actual);
            }
        }
        if let Some(v) = &self.verdicts {
            let expected = Value::Array(v.iter().map(|s| Value::from(s.as_str())).collect());
            exact(&mut out, "verdicts", &expected, &get("verdicts"));
        }
        if let Some(v) = &self.events {
            exact(&mut out, "events", &Value::Array(v.clone()), &get("events"));
        }
        if let Some(v) = self.status {
            exact(&mut out, "status", &Value::from(v), &get("status"));
        }
        if let Some(v) = &self.body_contains {
            contains(&mut out, "body", v, &get("body"), true);
        }
        if let Some(v) = &self.body_not_contains {
            contains(&mut out, "body", v, &get("body"), false);
        }
        if let Some(v) = &self.result {
            subset(&mut out, "result", v, &get("result"));
        }
        if let Some(v) = &self.error {
            match report.get("error") {
                Some(actual) => contains(&mut out, "error", v, actual, true),
                None => out.push(Mismatch {
                    what: "error".into(),
                    expected: format!(
                        "an error containing {}",
                        json_text(&Value::from(v.as_str()))
                    ),
                    actual: "the step succeeded".into(),
                    diff: None,
                }),
            }
        }
        if let Some(v) = &self.facts {
            subset(&mut out, "facts", v, &get("facts"));
        }
        out
    }
}

/// One expectation that does not hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Mismatch {
    /// What differs: a report key, with a path into it (`actions[1].room`).
    pub what: String,
    /// The expectation, as text.
    pub expected: String,
    /// What happened, as text.
    pub actual: String,
    /// For large values: a line diff of expected (`-`) against actual (`+`).
    pub diff: Option<String>,
}

impl Mismatch {
    /// A one-line summary, for the JSON report.
    pub fn summary(&self) -> String {
        if self.diff.is_some() {
            format!("{}: differs (see the diff)", self.what)
        } else {
            format!(
                "{}: expected {}, got {}",
                self.what, self.expected, self.actual
            )
        }
    }

    /// The human-readable form, indented, for the terminal.
    pub fn render(&self) -> String {
        match &self.diff {
            None => format!(
                "    {}: expected {}, got {}\n",
                self.what, self.expected, self.actual
            ),
            Some(diff) => {
                let mut s = format!("    {}: expected (-) vs actual (+):\n", self.what);
                for line in diff.lines() {
                    s.push_str("      ");
                    s.push_str(line);
                    s.push('\n');
                }
                s
            }
        }
    }
}

/// Compact JSON text of a value.
fn json_text(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| v.to_string())
}

fn mismatch(what: &str, expected: &Value, actual: &Value) -> Mismatch {
    let (e, a) = (json_text(expected), json_text(actual));
    let small = e.len() + a.len() <= 100 && !expected.is_object() && !actual.is_object();
    Mismatch {
        what: what.to_owned(),
        diff: (!small).then(|| line_diff(&pretty(expected), &pretty(actual))),
        expected: e,
        actual: if actual.is_null() {
            "nothing".into()
        } else {
            a
        },
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

fn exact(out: &mut Vec<Mismatch>, what: &str, expected: &Value, actual: &Value) {
    if expected != actual {
        out.push(mismatch(what, expected, actual));
    }
}

fn contains(out: &mut Vec<Mismatch>, what: &str, needle: &str, actual: &Value, want: bool) {
    let text = actual.as_str().unwrap_or_default();
    if text.contains(needle) != want {
        let shown = if text.chars().count() > 300 {
            let cut: String = text.chars().take(300).collect();
            format!("{} (truncated)", json_text(&Value::from(cut)))
        } else {
            json_text(actual)
        };
        out.push(Mismatch {
            what: what.to_owned(),
            expected: format!(
                "{} {}",
                if want {
                    "text containing"
                } else {
                    "text without"
                },
                json_text(&Value::from(needle))
            ),
            actual: shown,
            diff: None,
        });
    }
}

/// `expected` matches `actual` when every key of each expected object is in the actual object
/// with a matching value, arrays have the same length and match element by element, and other
/// values are equal.
pub fn subset(out: &mut Vec<Mismatch>, what: &str, expected: &Value, actual: &Value) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                let path = format!("{what}.{k}");
                match a.get(k) {
                    Some(av) => subset(out, &path, ev, av),
                    None => out.push(Mismatch {
                        what: path,
                        expected: json_text(ev),
                        actual: "no such key".into(),
                        diff: None,
                    }),
                }
            }
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                subset(out, &format!("{what}[{i}]"), ev, av);
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            let mut m = mismatch(what, expected, actual);
            m.what = format!("{what} ({} expected, {} actual)", e.len(), a.len());
            out.push(m);
        }
        _ => exact(out, what, expected, actual),
    }
}

/// A line diff of two texts (the `similar` crate's Myers diff of their lines): `  ` common,
/// `- ` only in `old`, `+ ` only in `new`, one output line per line of either text. Lines are
/// those of [`str::lines`], so a final newline or a `\r\n` ending makes no difference.
/// (The whole texts are shown, without hunk headers, which is why the lines are written here
/// rather than with `similar`'s unified-diff formatter.)
pub fn line_diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let mut out = String::new();
    for op in similar::capture_diff_slices(similar::Algorithm::Myers, &a, &b) {
        for change in op.iter_changes(&a, &b) {
            out.push_str(match change.tag() {
                similar::ChangeTag::Equal => "  ",
                similar::ChangeTag::Delete => "- ",
                similar::ChangeTag::Insert => "+ ",
            });
            out.push_str(change.value());
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn expect(v: Value) -> Expect {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn only_given_keys_are_compared() {
        let report = json!({"verdict": "deny", "errcode": "M_X", "message": "no way",
                            "fields": {"a": 1, "b": 2}, "actions": [{"kind": "k", "user": "@u:h"}]});
        let report = report.as_object().unwrap();
        let ok = expect(
            json!({"verdict": "deny", "fields": {"a": 1}, "message_contains": "no",
                               "actions": [{"kind": "k"}]}),
        );
        assert_eq!(ok.compare(report), vec![]);
        let bad = expect(json!({"verdict": "allow", "fields": {"c": 3}, "actions": []}));
        let m = bad.compare(report);
        assert_eq!(m.len(), 3, "{m:?}");
        assert_eq!(
            m[0].render(),
            "    verdict: expected \"allow\", got \"deny\"\n"
        );
        assert_eq!(m[1].what, "fields.c");
        assert!(m[2].what.starts_with("actions (0 expected, 1 actual)"));
    }

    #[test]
    fn null_decided_by_is_an_expectation() {
        let e = expect(json!({"decided_by": null}));
        assert!(e.compare(json!({}).as_object().unwrap()).is_empty());
        let m = e.compare(json!({"decided_by": "x"}).as_object().unwrap());
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn diff_marks_changed_lines() {
        let d = line_diff("a\nb\nc", "a\nx\nc");
        assert_eq!(d, "  a\n- b\n+ x\n  c\n");
        assert_eq!(line_diff("a\nb", "b\nc\n"), "- a\n  b\n+ c\n");
        assert_eq!(line_diff("", "x"), "+ x\n");
        assert_eq!(line_diff("same\r\n", "same"), "  same\n");
    }

    #[test]
    fn inapplicable_keys_are_refused() {
        let e = expect(json!({"status": 200}));
        assert!(e.check_applies_to("http").is_ok());
        let err = e.check_applies_to("send").unwrap_err();
        assert!(
            err.contains("expect.status does not apply to op `send`"),
            "{err}"
        );
        let e = expect(json!({"verdicts": ["serve", "maybe"]}));
        assert!(e.check_applies_to("client_serve").is_err());
    }
}
