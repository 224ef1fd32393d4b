//! Serving ops: `client_serve` and `federation_serve`.

use mxpolicy_host::{ServeVerdict, Viewer};
use serde_json::{Map, Value, json};

use super::runner::{Runner, failures_value};
use crate::sim::Slot;

impl Runner {
    pub(super) fn serve(
        &self,
        r: &mut Map<String, Value>,
        i: usize,
        viewer: &Viewer,
        ids: &[String],
        federation: bool,
    ) -> Result<(), String> {
        let slots = self.world.read().serve_slots(viewer, ids, federation)?;
        let mut visible = Vec::new();
        let mut verdicts: Vec<Value> = Vec::with_capacity(slots.len());
        for slot in slots {
            match slot {
                Slot::NotFound => verdicts.push("not_found".into()),
                Slot::NotVisible => verdicts.push("not_visible".into()),
                Slot::Visible(e) => {
                    verdicts.push(Value::Null);
                    visible.push(e);
                }
            }
        }
        let mut served = Vec::new();
        if !visible.is_empty() {
            let result = if federation {
                self.host.on_federation_serve(viewer, visible)
            } else {
                self.host.on_client_serve(viewer, visible)
            };
            let d = match result {
                Ok(d) => d,
                Err(e) => {
                    r.insert("error".into(), e.to_string().into());
                    return Ok(());
                }
            };
            let mut outcome = d.outcome.iter();
            for v in verdicts.iter_mut().filter(|v| v.is_null()) {
                if let Some(one) = outcome.next() {
                    *v = serde_json::to_value(one.verdict).unwrap_or(Value::Null);
                    if one.verdict != ServeVerdict::Withhold {
                        served.extend(one.event.clone());
                    }
                }
            }
            r.insert("decided_by".into(), json!(d.decided_by));
            r.insert("failures".into(), failures_value(&d.failures));
            self.apply(r, &d.actions, i);
        } else {
            r.insert("decided_by".into(), Value::Null);
            r.insert("failures".into(), json!([]));
            r.insert("actions".into(), json!([]));
        }
        r.insert("verdicts".into(), Value::Array(verdicts));
        r.insert("events".into(), Value::Array(served));
        Ok(())
    }
}
