//! Host implementations of the world's imports, one file per WIT interface.

mod homeserver;
mod log;
mod state;
mod timers;

impl crate::bindings::mxpolicy::policy::types::Host for crate::context::CallCtx {}
