//! The integration-test binary: real plugins, built to wasm by `cargo xtask build-plugins`,
//! run through the real host. One module per topic.

// Test modules share helpers with `pub` items inside a private binary, and every function of
// this crate is test code: a panic is a test failure with its message.
#![allow(unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

mod raw;
mod support;

mod api;
mod cli_limits;
mod compile_cache;
mod composition;
mod consent;
mod containment;
mod crash;
mod encoding;
mod end_to_end;
mod erasure;
mod export;
mod hardening;
mod hot_swap;
mod media;
mod paging;
mod policy_set;
mod replay;
mod serve;
mod state;
mod stores;
mod watch;
