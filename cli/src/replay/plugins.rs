//! Plugin ops: loading the scenario's plugins, `swap`, `http` and `admin`.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use mxpolicy_host::PluginSpec;
use serde_json::{Map, Value, json};

use super::{
    REPLAY_DEADLINE,
    runner::{Runner, failures_value, is_bad_input},
};
use crate::{
    locate,
    scenario::{Op, PluginEntry},
};

/// A loaded plugin, remembered for `swap`.
#[derive(Clone)]
pub(super) struct Loaded {
    pub(super) path: PathBuf,
    pub(super) entry: PluginEntry,
}

pub(super) fn spec_for(path: &Path, entry: &PluginEntry) -> PluginSpec {
    let mut spec = PluginSpec::file(path)
        .config(entry.config.clone().unwrap_or_else(|| json!({})))
        .deadline(
            entry
                .deadline_ms
                .map(Duration::from_millis)
                .unwrap_or(REPLAY_DEADLINE),
        );
    for (hook, policy) in &entry.failure_policy {
        spec = spec.failure_policy(*hook, *policy);
    }
    if let Some(mode) = entry.instance_mode {
        spec = spec.instance_mode(mode);
    }
    spec
}

impl Runner {
    /// Load a plugin of the scenario; `compiling` is told its file just before it compiles.
    pub(super) fn load(
        &mut self,
        entry: &PluginEntry,
        compiling: &mut dyn FnMut(&Path),
    ) -> Result<Value, String> {
        let reference = entry
            .path
            .as_deref()
            .or(entry.name.as_deref())
            .ok_or("a plugin needs a `path` or a `name`")?;
        let path = locate::resolve(reference, &self.dir)?;
        compiling(&path);
        // Host errors name the plugin (its file until it reports its name).
        let report = self
            .host
            .load(spec_for(&path, entry))
            .map_err(|e| e.to_string())?;
        if let Some(name) = &entry.name
            && *name != report.info.name
        {
            return Err(format!(
                "{} reports the name `{}`, but the scenario calls it `{name}`",
                path.display(),
                report.info.name
            ));
        }
        self.loaded.insert(
            report.info.name.clone(),
            Loaded {
                path: path.clone(),
                entry: entry.clone(),
            },
        );
        Ok(json!({
            "name": report.info.name,
            "version": report.info.version,
            "hooks": report.info.hooks,
            "sha256": report.sha256,
            "path": path.display().to_string(),
        }))
    }

    pub(super) fn http(&self, r: &mut Map<String, Value>, i: usize, op: &Op) -> Result<(), String> {
        let Op::Http {
            plugin,
            method,
            path,
            query,
            body,
            headers,
        } = op
        else {
            return Ok(());
        };
        let request = mxpolicy_host::HttpRequest {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect(),
            body: body.clone().into_bytes(),
        };
        match self.host.on_http(plugin, &request) {
            Ok(d) => {
                let resp = &d.outcome;
                r.insert("status".into(), resp.status.into());
                let headers: Map<String, Value> = resp
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().into()))
                    .collect();
                r.insert("headers".into(), Value::Object(headers));
                r.insert(
                    "body".into(),
                    String::from_utf8_lossy(&resp.body).into_owned().into(),
                );
                r.insert("failures".into(), failures_value(&d.failures));
                self.apply(r, &d.actions, i);
            }
            Err(e) if is_bad_input(&e) => {
                return Err(format!(
                    "no plugin named `{plugin}` with an on-http hook is loaded"
                ));
            }
            Err(e) => {
                r.insert("error".into(), e.to_string().into());
            }
        }
        Ok(())
    }

    /// Replace a plugin, each of path, config and deadline defaulting to the current one.
    pub(super) fn swap(
        &mut self,
        r: &mut Map<String, Value>,
        plugin: &str,
        path: &Option<String>,
        config: &Option<Value>,
        deadline_ms: Option<u64>,
    ) -> Result<(), String> {
        let current = self.loaded.get(plugin).cloned().ok_or_else(|| {
            format!(
                "no plugin named `{plugin}` is loaded (loaded: {})",
                self.loaded.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?;
        let mut entry = current.entry;
        let file = match path {
            Some(p) => {
                entry.path = Some(p.clone());
                locate::resolve(p, &self.dir)?
            }
            None => current.path,
        };
        if let Some(c) = config {
            entry.config = Some(c.clone());
        }
        if let Some(d) = deadline_ms {
            entry.deadline_ms = Some(d);
        }
        match self.host.replace(plugin, spec_for(&file, &entry)) {
            Ok(report) => {
                r.insert(
                    "plugin".into(),
                    json!({
                        "name": report.info.name,
                        "version": report.info.version,
                        "sha256": report.sha256,
                        "generation": self.host.generation(),
                    }),
                );
                self.loaded
                    .insert(plugin.to_owned(), Loaded { path: file, entry });
            }
            Err(e) => {
                r.insert("error".into(), e.to_string().into());
            }
        }
        Ok(())
    }

    /// An admin command: `result`, or `error` when the plugin refuses or fails; a plugin that
    /// is not loaded is bad input.
    pub(super) fn admin(
        &self,
        r: &mut Map<String, Value>,
        plugin: &str,
        command: &str,
        args: &Value,
    ) -> Result<(), String> {
        match self.host.admin(plugin, command, args) {
            Ok(v) => {
                r.insert("result".into(), v);
            }
            Err(e) if is_bad_input(&e) => {
                return Err(format!(
                    "no plugin named `{plugin}` with an on-admin hook is loaded"
                ));
            }
            Err(e) => {
                r.insert("error".into(), e.to_string().into());
            }
        }
        Ok(())
    }
}
