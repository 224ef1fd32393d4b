//! Hostile and broken plugins are contained: each failure is reported with plugin, hook and
//! cause, the plugin's failure policy applies, and the host keeps serving.
//!
//! Runtime misbehaviour (infinite loop, memory bomb, panic, multi-megabyte output, malformed
//! output) comes from the scripted fixture plugin built to wasm, told by its config to
//! misbehave; load-time refusals (forbidden import, core module, garbage, missing exports)
//! use tiny inline WAT.

use std::time::Duration;

use mxpolicy_host::{
    Deactivation, Error, FailureCause, FailurePolicy, Hook, HttpRequest, InstanceMode, MatrixError,
    MediaFetch, PluginSpec, Requester, ServeVerdict, Verdict, Viewer,
    ruma::{owned_mxc_uri, owned_user_id},
};
use serde_json::{Value, json};

use crate::{
    composition::serve_events,
    end_to_end::message,
    support::{spec, test_host},
};

fn misbehaving(plugin: &str, hook: &str, how: &str) -> PluginSpec {
    spec(plugin).config(json!({"misbehave": {"hook": hook, "how": how}, "label": "bad"}))
}

fn keyword_filter() -> PluginSpec {
    spec("keyword-filter").config(json!({"keywords": ["spam"]}))
}

#[test]
fn infinite_loop_times_out_fails_closed_and_host_keeps_serving() {
    let t = test_host();
    t.host
        .load(misbehaving("scripted-a", "on-send", "loop").deadline(Duration::from_millis(50)))
        .unwrap();
    let d = t.host.on_send(&message("@a:hs.example", "hi"));
    assert_eq!(d.failures.len(), 1);
    let f = &d.failures[0];
    assert_eq!(f.plugin, "scripted-a");
    assert_eq!(f.hook, Hook::OnSend);
    assert_eq!(f.cause, FailureCause::Timeout { deadline_ms: 50 });
    assert_eq!(f.applied, FailurePolicy::Closed);
    assert_eq!(
        f.to_string(),
        "plugin `scripted-a` failed in on-send: timed out after 50 ms (failing closed)"
    );
    let Verdict::Deny(err) = &d.outcome else {
        panic!("fail-closed must deny: {d:?}")
    };
    assert_eq!(err.errcode, "M_UNKNOWN");
    assert!(err.message.contains("scripted-a"));

    // The same plugin still answers its other hooks, and again and again.
    for _ in 0..3 {
        let ok = t.host.on_deactivate(&Deactivation {
            user: owned_user_id!("@a:hs.example"),
            erase: false,
            by_admin: false,
            second_factor: false,
        });
        assert_eq!(ok.outcome, Verdict::Allow, "{ok:?}");
        assert!(ok.failures.is_empty());
    }
}

#[test]
fn fail_open_skips_the_broken_plugin_but_not_the_rest_of_the_chain() {
    let t = test_host();
    t.host
        .load(
            misbehaving("scripted-a", "on-send", "loop")
                .deadline(Duration::from_millis(20))
                .failure_policy(Hook::OnSend, FailurePolicy::Open),
        )
        .unwrap();
    t.host.load(keyword_filter()).unwrap();
    let ok = t.host.on_send(&message("@a:hs.example", "hello"));
    assert_eq!(ok.outcome, Verdict::Allow);
    assert_eq!(ok.failures[0].applied, FailurePolicy::Open);
    let denied = t.host.on_send(&message("@a:hs.example", "spam"));
    assert_eq!(denied.decided_by.as_deref(), Some("keyword-filter"));
}

#[test]
fn memory_bomb_hits_the_cap_and_serving_fails_closed() {
    let t = test_host();
    t.host
        .load(misbehaving("scripted-a", "on-client-serve", "oom").memory_limit(8 << 20))
        .unwrap();
    let events = serve_events(&["@a:hs.example", "@b:hs.example"]);
    let d = t.host.on_client_serve(&Viewer::Anonymous, events).unwrap();
    assert_eq!(
        d.failures[0].cause,
        FailureCause::OutOfMemory {
            limit_bytes: 8 << 20
        }
    );
    assert!(
        d.outcome
            .iter()
            .all(|e| e.verdict == ServeVerdict::Withhold && e.event.is_none())
    );
    // Next call on a fresh instance works.
    let ok = t.host.on_send(&message("@a:hs.example", "hi"));
    assert!(ok.failures.is_empty(), "{ok:?}");
}

#[test]
fn panic_is_a_trap_that_quotes_the_panic_message() {
    let t = test_host();
    t.host
        .load(misbehaving("scripted-a", "on-media-fetch", "panic"))
        .unwrap();
    let d = t.host.on_media_fetch(&MediaFetch {
        mxc: owned_mxc_uri!("mxc://hs.example/abc"),
        requester: Requester::Anonymous,
    });
    let FailureCause::Trap(msg) = &d.failures[0].cause else {
        panic!("{d:?}")
    };
    assert!(msg.contains("unreachable"), "{msg}");
    assert!(msg.contains("scripted panic in on-media-fetch"), "{msg}");
    // Media fetches fail closed with the same answer as missing media: nothing leaks.
    assert_eq!(
        d.outcome,
        Verdict::Deny(MatrixError::new("M_NOT_FOUND", "Not found"))
    );
}

#[test]
fn multi_megabyte_output_is_refused() {
    let t = test_host();
    t.host
        .load(misbehaving("scripted-a", "on-send", "huge-output"))
        .unwrap();
    let d = t.host.on_send(&message("@a:hs.example", "hi"));
    match &d.failures[0].cause {
        FailureCause::OutputTooLarge { bytes, limit_bytes } => {
            assert!(*bytes >= 4 << 20);
            assert_eq!(*limit_bytes, 1 << 20);
        }
        other => panic!("{other:?}"),
    }
    assert!(!d.outcome.is_allow());

    t.host
        .load(misbehaving("scripted-b", "on-http", "huge-output"))
        .unwrap();
    let page = t
        .host
        .on_http("scripted-b", &HttpRequest::default())
        .unwrap();
    assert_eq!(page.outcome.status, 500);
    assert!(matches!(
        page.failures[0].cause,
        FailureCause::OutputTooLarge { .. }
    ));
}

#[test]
fn malformed_output_is_a_failure() {
    let t = test_host();
    t.host
        .load(misbehaving(
            "scripted-a",
            "on-federation-serve",
            "bad-count",
        ))
        .unwrap();
    let d = t
        .host
        .on_federation_serve(
            &Viewer::Server("other.example".try_into().unwrap()),
            serve_events(&["@a:hs.example"]),
        )
        .unwrap();
    assert_eq!(
        d.failures[0].cause,
        FailureCause::InvalidOutput("2 verdicts for 1 events".into())
    );
    assert_eq!(d.outcome[0].verdict, ServeVerdict::Withhold);

    let t = test_host();
    t.host
        .load(misbehaving("scripted-a", "none", "bad-action"))
        .unwrap();
    let d = t.host.on_send(&message("@a:hs.example", "hi"));
    let FailureCause::InvalidOutput(msg) = &d.failures[0].cause else {
        panic!("{d:?}")
    };
    assert!(msg.contains("invalid user id `not-a-user-id`"), "{msg}");
    assert!(d.actions.is_empty());
}

#[test]
fn a_trap_never_poisons_a_reused_instance() {
    let t = test_host();
    t.host
        .load(misbehaving("scripted-a", "on-send", "panic").instance_mode(InstanceMode::Reuse))
        .unwrap();
    let deactivation = Deactivation {
        user: owned_user_id!("@a:hs.example"),
        erase: false,
        by_admin: false,
        second_factor: false,
    };
    for _ in 0..3 {
        assert!(t.host.on_deactivate(&deactivation).failures.is_empty());
        assert!(matches!(
            t.host.on_send(&message("@a:hs.example", "x")).failures[0].cause,
            FailureCause::Trap(_)
        ));
    }
    assert!(t.host.on_deactivate(&deactivation).outcome.is_allow());
}

#[test]
fn hostile_init_is_refused_at_load() {
    let t = test_host();
    let err = t
        .host
        .load(
            spec("scripted-a")
                .config(json!({"init": "loop"}))
                .deadline(Duration::from_millis(30)),
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "plugin `scripted-a`: cannot load: `init` failed: timed out after 1000 ms"
    );
    let err = t
        .host
        .load(spec("scripted-a").config(json!({"init": "panic"})))
        .unwrap_err();
    assert!(err.to_string().contains("scripted panic in init"), "{err}");
    let err = t
        .host
        .load(spec("scripted-a").config(json!({"deny": "FORBIDDEN"})))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "plugin `scripted-a`: invalid config at `deny`: an errcode starts with M_"
    );
    assert!(t.host.plugins().is_empty());
}

fn wat(text: &str) -> Vec<u8> {
    wat::parse_str(text).expect("valid WAT")
}

#[test]
fn forbidden_import_is_refused_naming_it() {
    let t = test_host();
    let bytes = wat(r#"(component
        (import "wasi:io/poll@0.2.6" (instance (export "poll" (func (param "x" u32)))))
    )"#);
    let err = t
        .host
        .load(PluginSpec::bytes("wasi-user", bytes))
        .unwrap_err();
    let Error::ForbiddenImport { plugin, import, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(plugin, "wasi-user");
    assert_eq!(import, "wasi:io/poll@0.2.6");
    assert!(
        err.to_string().contains("imports `wasi:io/poll@0.2.6`"),
        "{err}"
    );
}

#[test]
fn non_components_are_refused_clearly() {
    let t = test_host();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "core",
            wat("(module)"),
            "core WebAssembly module, not a component",
        ),
        (
            "garbage",
            b"not wasm at all".to_vec(),
            "not a valid WebAssembly component",
        ),
        (
            "empty",
            wat("(component)"),
            "does not implement the mxpolicy:policy world",
        ),
        (
            "truncated",
            wat("(component)")[..6].to_vec(),
            "not a valid WebAssembly component",
        ),
    ];
    for (label, bytes, expected) in cases {
        let err = t.host.load(PluginSpec::bytes(label, bytes)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("plugin `{label}`: cannot load: ")),
            "{text}"
        );
        assert!(text.contains(expected), "{label}: {text}");
    }
    let err = t
        .host
        .load(PluginSpec::file("/nonexistent/plugin.wasm"))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot read /nonexistent/plugin.wasm"),
        "{err}"
    );
    assert!(t.host.plugins().is_empty());
}

#[test]
fn admin_failures_and_refusals_are_errors() {
    let t = test_host();
    t.host
        .load(misbehaving("scripted-a", "on-admin", "panic"))
        .unwrap();
    t.host.load(spec("scripted-b")).unwrap();
    let err = t
        .host
        .admin("scripted-a", "calls", &Value::Null)
        .unwrap_err();
    assert!(matches!(err, Error::PluginFailed(_)), "{err}");
    let err = t
        .host
        .admin("scripted-b", "nope", &Value::Null)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "plugin `scripted-b`: admin command `nope` refused: unknown command `nope`"
    );
    assert_eq!(
        t.host
            .admin("scripted-b", "echo", &json!({"a": 1}))
            .unwrap(),
        json!({"a": 1})
    );
}

#[test]
fn many_threads_call_while_one_plugin_loops() {
    let t = test_host();
    t.host
        .load(
            misbehaving("scripted-a", "on-send", "loop")
                .deadline(Duration::from_millis(20))
                .failure_policy(Hook::OnSend, FailurePolicy::Open),
        )
        .unwrap();
    t.host.load(keyword_filter()).unwrap();
    std::thread::scope(|s| {
        for i in 0..4 {
            let host = &t.host;
            s.spawn(move || {
                for j in 0..5 {
                    let body = if (i + j) % 2 == 0 { "spam" } else { "fine" };
                    let d = host.on_send(&message("@a:hs.example", body));
                    assert_eq!(d.outcome.is_allow(), body == "fine");
                    assert_eq!(d.failures.len(), 1);
                }
            });
        }
    });
}

#[test]
fn a_plugin_built_for_another_wit_version_is_refused_naming_both() {
    // A component of the 0.1.0 world that imports its `log` interface.
    let old_wit = concat!(env!("CARGO_MANIFEST_DIR"), "/all/policy-0.1.0.wit");
    let mut items =
        String::from("(import \"mxpolicy:policy/log@0.1.0\" \"log\" (func (param i32 i32 i32)))\n");
    items.push_str(&crate::raw::memory(1));
    let mut bodies = std::collections::BTreeMap::new();
    bodies.insert("describe", "i32.const 0".to_owned());
    let bytes = crate::raw::component_of(old_wit, &items, &bodies);
    let t = test_host();
    let err = t
        .host
        .load(PluginSpec::bytes("old-build", bytes))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("built for the WIT world mxpolicy:policy@0.1.0"),
        "{err}"
    );
    assert!(
        err.contains("this host runs mxpolicy:policy@0.2.0"),
        "{err}"
    );
    assert!(err.contains("cargo xtask build-plugins"), "{err}");
}
