//! What a step's report becomes: its expectations judged, the JSON line printed, and the
//! human-readable failure.

use std::{io::Write, path::Path};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::{
    expect::Mismatch,
    scenario::{Op, Step},
};

/// Bodies longer than this are cut in the printed report (expectations see the whole body).
const MAX_PRINTED_BODY: usize = 2000;

#[derive(Serialize)]
pub(super) struct Line<'a> {
    pub(super) step: usize,
    pub(super) op: &'a str,
    #[serde(flatten)]
    pub(super) rest: &'a Map<String, Value>,
}

/// Compare a step's report with its expectations (an error the step did not expect is a
/// mismatch too), and record the outcome in the report.
pub(super) fn judge(step: &Step, report: &mut Map<String, Value>) -> Vec<Mismatch> {
    let mut mismatches = step
        .expect
        .as_ref()
        .map(|e| e.compare(report))
        .unwrap_or_default();
    if let Some(err) = report.get("error").and_then(Value::as_str)
        && step.expect.as_ref().is_none_or(|e| e.error.is_none())
    {
        mismatches.push(Mismatch {
            what: "error".into(),
            expected: "no error".into(),
            actual: err.to_owned(),
            diff: None,
        });
    }
    if let Some(note) = &step.note {
        report.insert("note".into(), note.as_str().into());
    }
    report.insert("ok".into(), mismatches.is_empty().into());
    if !mismatches.is_empty() {
        report.insert(
            "mismatches".into(),
            mismatches.iter().map(Mismatch::summary).collect(),
        );
    }
    mismatches
}

/// The human-readable failure of one step: file, step, note, then each mismatch.
pub(super) fn print_failure(
    human: &mut dyn Write,
    path: &Path,
    label: &str,
    note: Option<&str>,
    mismatches: &[Mismatch],
) {
    let note = note.map(|n| format!(" - {n}")).unwrap_or_default();
    let _ = writeln!(human, "FAIL {}: {label}{note}", path.display());
    for m in mismatches {
        let _ = write!(human, "{}", m.render());
    }
}

/// Cut long HTTP bodies in the printed line (expectations have seen the whole body).
pub(super) fn truncate_body(report: &mut Map<String, Value>) {
    if let Some(Value::String(body)) = report.get_mut("body")
        && body.len() > MAX_PRINTED_BODY
    {
        let mut cut = MAX_PRINTED_BODY;
        while !body.is_char_boundary(cut) {
            cut -= 1;
        }
        body.truncate(cut);
        body.push_str("...(truncated)");
    }
}

/// A short description of a step for failure messages.
pub(super) fn describe(op: &Op) -> String {
    let opt = |id: &Option<String>| id.as_deref().map(|i| format!(" {i}")).unwrap_or_default();
    match op {
        Op::Send {
            sender,
            room,
            event_id,
            ..
        } => format!("send{} from {sender} in {room}", opt(event_id)),
        Op::Join { room, user, .. } => format!("join {user} to {room}"),
        Op::Leave { room, user, .. } => format!("leave {user} from {room}"),
        Op::Invite { room, user, .. } => format!("invite {user} to {room}"),
        Op::Deactivate { user, erase, .. } => format!("deactivate {user}, erase: {erase}"),
        Op::Reactivate { user, .. } => format!("reactivate {user}"),
        Op::Consent { user, version, .. } => format!("consent of {user} to {version}"),
        Op::Upload { mxc, .. } => format!("upload {mxc}"),
        Op::FetchMedia { mxc, requester } => format!(
            "fetch_media {mxc} by {}",
            requester.as_deref().unwrap_or("anonymous")
        ),
        Op::ClientServe { viewer, .. } => format!(
            "client_serve to {}",
            viewer.as_ref().map(|v| v.as_str()).unwrap_or("anonymous")
        ),
        Op::FederationServe { server, .. } => format!("federation_serve to {server}"),
        Op::Http {
            plugin,
            method,
            path,
            ..
        } => format!("http {method} {path} on {plugin}"),
        Op::Swap { plugin, .. } => format!("swap {plugin}"),
        Op::Admin {
            plugin, command, ..
        } => format!("admin {command} on {plugin}"),
        other => other.name().to_owned(),
    }
}
