//! Policy-set files applied atomically, with rollback: through the real host and plugins.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use mxpolicy_host::{Action, Error, PolicySet};

use crate::{
    end_to_end::message,
    stores::TempDir,
    support::{plugin_path, test_host},
};

/// Write `text` as `set.toml` in `dir`, with the built plugins copied beside it.
fn write_set(dir: &Path, text: &str) -> PolicySet {
    for name in ["scripted-a", "scripted-b", "keyword-filter"] {
        let to = dir.join(format!("{name}.wasm"));
        if !to.exists() {
            std::fs::copy(plugin_path(name), to).unwrap();
        }
    }
    let path = dir.join("set.toml");
    std::fs::write(&path, text).unwrap();
    PolicySet::from_file(&path).unwrap()
}

fn notice(body: &str) -> String {
    format!(r#"{{ kind = "send-server-notice", user = "@u:hs.example", body = "{body}" }}"#)
}

/// Two plugins that each return one labelled action on every send, in the given order.
fn two(first: (&str, &str), second: (&str, &str)) -> String {
    format!(
        "[[plugin]]\ninstance = \"{}\"\npath = \"{}.wasm\"\ndeadline_ms = 2000\n\
         config = {{ actions = [{}] }}\n\n\
         [[plugin]]\ninstance = \"{}\"\npath = \"{}.wasm\"\ndeadline_ms = 2000\n\
         config = {{ actions = [{}] }}\n",
        first.0,
        first.0,
        notice(first.1),
        second.0,
        second.0,
        notice(second.1)
    )
}

fn bodies(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .map(|a| match a {
            Action::SendServerNotice { content, .. } => {
                content["body"].as_str().unwrap_or_default().to_owned()
            }
            other => format!("{other:?}"),
        })
        .collect()
}

#[test]
fn a_set_is_applied_whole_and_one_component_can_be_two_instances() {
    let dir = TempDir::new("set");
    let t = test_host();
    let set = write_set(
        &dir.0,
        "[[plugin]]\ninstance = \"spam\"\npath = \"keyword-filter.wasm\"\n\
         deadline_ms = 2000\nconfig = { keywords = [\"spam\"] }\n\n\
         [[plugin]]\ninstance = \"scam\"\npath = \"keyword-filter.wasm\"\n\
         deadline_ms = 2000\nconfig = { keywords = [\"scam\"] }\n",
    );
    let applied = t.host.apply(&set).unwrap();
    let names: Vec<&str> = applied
        .plugins
        .iter()
        .map(|p| p.instance.as_str())
        .collect();
    assert_eq!(names, ["spam", "scam"]);
    assert!(
        applied
            .plugins
            .iter()
            .all(|p| p.info.name == "keyword-filter")
    );
    assert_eq!(
        t.host
            .on_send(&message("@a:hs.example", "scam"))
            .decided_by
            .as_deref(),
        Some("scam")
    );
    assert_eq!(
        t.host
            .on_send(&message("@a:hs.example", "spam"))
            .decided_by
            .as_deref(),
        Some("spam")
    );
}

#[test]
fn a_broken_set_leaves_the_running_chain_and_reports_every_problem() {
    let dir = TempDir::new("set-broken");
    let t = test_host();
    t.host
        .apply(&write_set(
            &dir.0,
            &two(("scripted-a", "A1"), ("scripted-b", "A2")),
        ))
        .unwrap();
    let generation = t.host.generation();
    std::fs::write(dir.0.join("junk.wasm"), b"not a component").unwrap();
    // A component of the 0.1.0 world (it imports that version's `log`).
    let old_wit = concat!(env!("CARGO_MANIFEST_DIR"), "/all/policy-0.1.0.wit");
    let mut items =
        String::from("(import \"mxpolicy:policy/log@0.1.0\" \"log\" (func (param i32 i32 i32)))\n");
    items.push_str(&crate::raw::memory(1));
    let mut exports = std::collections::BTreeMap::new();
    exports.insert("describe", "i32.const 0".to_owned());
    let old = crate::raw::component_of(old_wit, &items, &exports);
    std::fs::write(dir.0.join("old.wasm"), old).unwrap();
    let broken = write_set(
        &dir.0,
        "[[plugin]]\ninstance = \"bad-config\"\npath = \"keyword-filter.wasm\"\n\
         config = { keywords = 5 }\n\n\
         [[plugin]]\ninstance = \"pinned\"\npath = \"scripted-a.wasm\"\nsha256 = \"00\"\n\n\
         [[plugin]]\ninstance = \"junk\"\npath = \"junk.wasm\"\n\n\
         [[plugin]]\ninstance = \"init-trap\"\npath = \"scripted-b.wasm\"\n\
         config = { init = \"panic\" }\n\n\
         [[plugin]]\ninstance = \"old-wit\"\npath = \"old.wasm\"\n",
    );
    let problems = t.host.apply(&broken).unwrap_err();
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(problems.len(), 5, "{text:#?}");
    let has = |needle: &str| text.iter().any(|t| t.contains(needle));
    assert!(has("set.toml: entry `pinned`: `sha256`"), "{text:#?}");
    assert!(has("entry `bad-config`: `config.keywords`"), "{text:#?}");
    assert!(has("entry `old-wit`"), "{text:#?}");
    assert!(has("mxpolicy:policy@0.1.0"), "{text:#?}");
    assert!(text.iter().any(|t| t.contains("entry `junk`")), "{text:#?}");
    assert!(
        text.iter().any(|t| t.contains("entry `init-trap`")),
        "{text:#?}"
    );
    assert_eq!(t.host.generation(), generation);
    assert_eq!(
        bodies(&t.host.on_send(&message("@a:hs.example", "hi")).actions),
        ["A1", "A2"]
    );
}

#[test]
fn rollback_puts_the_previous_set_back_and_allow_list_mode_needs_pins() {
    let dir = TempDir::new("set-rollback");
    let t = test_host();
    assert!(matches!(
        t.host.rollback(),
        Err(Error::NoPreviousGeneration)
    ));
    t.host
        .apply(&write_set(
            &dir.0,
            &two(("scripted-a", "A1"), ("scripted-b", "A2")),
        ))
        .unwrap();
    let applied = t
        .host
        .apply(&write_set(
            &dir.0,
            &two(("scripted-b", "B2"), ("scripted-a", "B1")),
        ))
        .unwrap();
    let changes: Vec<String> = applied.changes.iter().map(ToString::to_string).collect();
    assert_eq!(
        changes,
        [
            "scripted-b: reconfigured",
            "scripted-b: moved 1 -> 0",
            "scripted-a: reconfigured",
            "scripted-a: moved 0 -> 1"
        ]
    );
    let send = || bodies(&t.host.on_send(&message("@a:hs.example", "hi")).actions);
    assert_eq!(send(), ["B2", "B1"]);
    t.host.rollback().unwrap();
    assert_eq!(send(), ["A1", "A2"]);

    let pinned_only = format!(
        "[engine]\npinned_only = true\n{}",
        two(("scripted-a", "C1"), ("scripted-b", "C2"))
    );
    let problems = t.host.apply(&write_set(&dir.0, &pinned_only)).unwrap_err();
    assert_eq!(problems.len(), 2);
    assert!(
        problems[0].to_string().contains("allow-list mode"),
        "{}",
        problems[0]
    );
}

#[test]
fn calls_during_continuous_swaps_each_see_exactly_one_set() {
    let dir = TempDir::new("set-swaps");
    let t = Arc::new(test_host());
    let a = write_set(&dir.0, &two(("scripted-a", "A1"), ("scripted-b", "A2")));
    let b_dir = TempDir::new("set-swaps-b");
    let b = write_set(&b_dir.0, &two(("scripted-b", "B2"), ("scripted-a", "B1")));
    // The same instance names on the other builds: every instance is rebuilt.
    let c_dir = TempDir::new("set-swaps-c");
    let c_text = two(("scripted-a", "C1"), ("scripted-b", "C2"))
        .replace("path = \"scripted-a.wasm\"", "path = \"other-b.wasm\"")
        .replace("path = \"scripted-b.wasm\"", "path = \"scripted-a.wasm\"")
        .replace("path = \"other-b.wasm\"", "path = \"scripted-b.wasm\"");
    let c = write_set(&c_dir.0, &c_text);
    t.host.apply(&a).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let (t, stop) = (t.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut calls = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let d = t.host.on_send(&message("@a:hs.example", "hi"));
                    assert!(d.failures.is_empty(), "{:?}", d.failures);
                    let seen = bodies(&d.actions);
                    assert!(
                        seen == ["A1", "A2"] || seen == ["B2", "B1"] || seen == ["C1", "C2"],
                        "a call saw half a set: {seen:?}"
                    );
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    // Each swap re-initialises both plugins (compiled once, kept in memory by their hash),
    // changing their order (a, b), their configs (all three) or their builds (c).
    let swaps = 1_002;
    for i in 0..swaps {
        let applied = t.host.apply([&b, &c, &a][i % 3]).unwrap();
        assert!(!applied.changes.is_empty());
    }
    stop.store(true, Ordering::Relaxed);
    let calls: u64 = callers.into_iter().map(|c| c.join().unwrap()).sum();
    assert!(calls > 0);
    eprintln!("{swaps} swaps, {calls} calls, none saw half a set");
}

#[test]
fn metrics_report_the_chain_calls_denials_and_failures() {
    let dir = TempDir::new("set-metrics");
    let t = test_host();
    let set = write_set(
        &dir.0,
        "[[plugin]]\ninstance = \"spam\"\npath = \"keyword-filter.wasm\"\n\
         deadline_ms = 2000\nconfig = { keywords = [\"spam\"] }\n\n\
         [[plugin]]\ninstance = \"fragile\"\npath = \"scripted-a.wasm\"\ndeadline_ms = 2000\n\
         failure = { on-send = \"open\" }\n\
         config = { misbehave = { hook = \"on-send\", how = \"panic\" } }\n",
    );
    t.host.apply(&set).unwrap();
    t.host.on_send(&message("@a:hs.example", "spam"));
    t.host.on_send(&message("@a:hs.example", "hello"));
    let text = t.host.metrics();
    let has = |line: &str| text.lines().any(|l| l.starts_with(line));
    assert!(has("mxpolicy_generation 1"), "{text}");
    assert!(
        has("mxpolicy_plugin_info{instance=\"spam\",component=\"keyword-filter\""),
        "{text}"
    );
    assert!(
        has("mxpolicy_calls_total{instance=\"spam\",hook=\"on-send\",outcome=\"deny\"} 1"),
        "{text}"
    );
    assert!(
        has("mxpolicy_calls_total{instance=\"spam\",hook=\"on-send\",outcome=\"ok\"} 1"),
        "{text}"
    );
    assert!(
        has(
            "mxpolicy_failures_total{instance=\"fragile\",hook=\"on-send\",cause=\"trap\",applied=\"open\"} 1"
        ),
        "{text}"
    );
    assert!(
        has("mxpolicy_call_seconds_count{hook=\"on-send\"} 2"),
        "{text}"
    );
}

#[test]
fn an_unchanged_entry_is_kept_as_it_runs_and_only_the_changed_one_is_reloaded() {
    let dir = TempDir::new("set-keep");
    let t = test_host();
    let first = t
        .host
        .apply(&write_set(
            &dir.0,
            &two(("scripted-a", "A1"), ("scripted-b", "A2")),
        ))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let same = t
        .host
        .apply(&write_set(
            &dir.0,
            &two(("scripted-a", "A1"), ("scripted-b", "A2")),
        ))
        .unwrap();
    assert!(same.changes.is_empty(), "{:?}", same.changes);
    assert_eq!(same.generation, first.generation + 1);
    assert_eq!(
        same.plugins, first.plugins,
        "both entries kept, load times included"
    );
    std::thread::sleep(std::time::Duration::from_millis(20));
    let edited = t
        .host
        .apply(&write_set(
            &dir.0,
            &two(("scripted-a", "A1"), ("scripted-b", "B2")),
        ))
        .unwrap();
    assert_eq!(
        edited.changes,
        [mxpolicy_host::Change::Reconfigured {
            instance: "scripted-b".into()
        }]
    );
    assert_eq!(edited.plugins[0], first.plugins[0], "scripted-a kept");
    assert!(edited.plugins[1].loaded_at_ms > first.plugins[1].loaded_at_ms);
    assert_eq!(
        bodies(&t.host.on_send(&message("@a:hs.example", "hi")).actions),
        ["A1", "B2"]
    );
}

#[test]
fn an_entry_can_reuse_warm_instances_and_changing_that_rebuilds_only_it() {
    let dir = TempDir::new("set-instance-mode");
    let t = test_host();
    let set = |mode: &str| {
        format!(
            "[[plugin]]\ninstance = \"scripted-a\"\npath = \"scripted-a.wasm\"\n\
             deadline_ms = 2000\n{mode}\n\n\
             [[plugin]]\ninstance = \"scripted-b\"\npath = \"scripted-b.wasm\"\n\
             deadline_ms = 2000\n"
        )
    };
    let memory_calls = |instance: &str| {
        t.host
            .admin(instance, "memory-calls", &serde_json::json!({}))
            .unwrap()
    };
    assert!(
        !t.host.wants(mxpolicy_host::Hook::OnSend),
        "an empty chain wants nothing"
    );
    t.host
        .apply(&write_set(&dir.0, &set("instance_mode = \"reuse\"")))
        .unwrap();
    assert!(t.host.wants(mxpolicy_host::Hook::OnSend));
    for _ in 0..3 {
        t.host.on_send(&message("@a:hs.example", "hi"));
    }
    // The reused instance remembers the calls before (in its memory, not its state); a fresh
    // one has run only the admin call itself. Calls may land on any warm instance, so: more
    // than one.
    assert!(memory_calls("scripted-a").as_u64().unwrap() > 1);
    assert_eq!(memory_calls("scripted-b"), 1);

    let fresh = t
        .host
        .apply(&write_set(&dir.0, &set("instance_mode = \"fresh\"")))
        .unwrap();
    assert_eq!(
        fresh.changes,
        [mxpolicy_host::Change::Reconfigured {
            instance: "scripted-a".into()
        }]
    );
    t.host.on_send(&message("@a:hs.example", "hi"));
    assert_eq!(memory_calls("scripted-a"), 1);

    let err = PolicySet::from_file(&{
        let path = dir.0.join("bad.toml");
        std::fs::write(&path, set("instance_mode = \"shared\"")).unwrap();
        path
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("instance_mode"), "{err}");
}
