//! `state.keys-page` (WIT 0.2.0): prefixes of any size are listed a page at a time, through
//! the real host and a real plugin, with the call's own writes merged in.

use serde_json::json;

use crate::support::{spec, test_host};

#[test]
fn a_prefix_too_large_for_keys_is_read_in_pages() {
    let t = test_host();
    // 2 sends x 6,000 keys: more than `keys` answers (10,000).
    t.host
        .load(spec("scripted-a").config(json!({"write_keys": 6000})))
        .unwrap();
    for _ in 0..2 {
        let d = t
            .host
            .on_send(&crate::end_to_end::message("@a:hs.example", "hi"));
        assert!(d.failures.is_empty(), "{:?}", d.failures);
    }
    assert!(
        t.host
            .admin("scripted-a", "count-keys", &json!(null))
            .is_err()
    );
    assert_eq!(
        t.host
            .admin("scripted-a", "iter-count", &json!(null))
            .unwrap(),
        json!(12_000)
    );
    let page = |after: Option<&str>, limit: u32| {
        t.host
            .admin(
                "scripted-a",
                "page",
                &json!({"prefix": "k/", "after": after, "limit": limit}),
            )
            .unwrap()
    };
    assert_eq!(page(None, 2), json!(["k/00000000", "k/00000001"]));
    assert_eq!(
        page(Some("k/00000001"), 2),
        json!(["k/00000002", "k/00000003"])
    );
    assert_eq!(page(Some("k/00011999"), 5), json!([]));
    // The host caps a page at 10,000 keys.
    assert_eq!(page(None, u32::MAX).as_array().map(Vec::len), Some(10_000));
}

#[test]
fn a_page_shows_the_calls_own_writes_and_deletes() {
    let t = test_host();
    t.host
        .load(spec("scripted-a").config(json!({"write_keys": 5})))
        .unwrap();
    t.host
        .on_send(&crate::end_to_end::message("@a:hs.example", "hi"));
    assert_eq!(
        t.host
            .admin("scripted-a", "write-then-page", &json!(null))
            .unwrap(),
        json!(["k/00000000", "k/00000000-new", "k/00000002"])
    );
}
