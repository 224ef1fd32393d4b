//! The one `bindgen!` of the host: Rust bindings for the `mxpolicy:policy` world.
//!
//! Every import is `trappable`: a host function returns `wasmtime::Result`, and an `Err` traps
//! the guest (used for guest misuse such as oversized state values). Errors a guest should
//! handle would be WIT `result` values; the world has none today.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "policy",
    imports: { default: trappable },
});

pub(crate) use mxpolicy::policy::types as wit;
