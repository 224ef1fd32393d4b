//! The mxpolicy guest SDK: write a Matrix homeserver policy in Rust, build it to a WebAssembly
//! component, and let any mxpolicy host run it.
//!
//! A complete policy: deny messages that mention a configured word, and count denials.
//!
//! ```
//! use mxpolicy_guest::{ConfigError, Outcome, Policy, SendContext, policy, state};
//!
//! #[derive(serde::Deserialize)]
//! pub struct Config { word: String }
//!
//! pub struct NoWord { word: String }
//!
//! #[policy] // the host calls `on-send`: the one hook method implemented below
//! impl Policy for NoWord {
//!     const NAME: &'static str = "no-word";
//!     const VERSION: &'static str = "1.0.0";
//!     type Config = Config;
//!
//!     fn new(config: Config) -> Result<Self, ConfigError> {
//!         if config.word.is_empty() {
//!             return Err(ConfigError::new("word", "must not be empty"));
//!         }
//!         Ok(Self { word: config.word.to_lowercase() })
//!     }
//!
//!     fn on_send(&self, ctx: &SendContext) -> Outcome {
//!         let body = ctx.content["body"].as_str().unwrap_or_default().to_lowercase();
//!         if !body.contains(&self.word) {
//!             return Outcome::allow();
//!         }
//!         // A count is no record to protect: one this build cannot decode starts again.
//!         let denied: u64 = state::get("denied").ok().flatten().unwrap_or(0);
//!         state::set("denied", &(denied + 1));
//!         Outcome::deny("M_FORBIDDEN", format!("messages may not mention {}", self.word))
//!     }
//! }
//!
//! mxpolicy_guest::export_policy!(NoWord);
//! # mxpolicy_guest::testing::reset("hs.example");
//! # let p = NoWord::new(Config { word: "x".into() }).unwrap();
//! # let ctx = SendContext::new("@a:hs.example", "!r:hs.example", "m.room.message",
//! #     serde_json::json!({"body": "an X"}));
//! # assert_eq!(p.on_send(&ctx).errcode(), Some("M_FORBIDDEN"));
//! # use mxpolicy_guest::{DeclaredHooks, Hook};
//! # assert_eq!(NoWord::HOOKS, &[Hook::OnSend]);
//! ```
//!
//! Build it with `crate-type = ["cdylib", "rlib"]` for `wasm32-unknown-unknown` and turn the
//! module into a component (the workspace's `cargo xtask build-plugins` does both). Natively
//! the same crate builds as an ordinary library: its unit tests call the hooks directly, with
//! the in-memory host of [`testing`].
//!
//! Every hook has a default (allow, serve everything, 404), so a policy implements only the
//! hooks it needs, and the host calls only those.
//!
//! # Hooks are declared once
//!
//! The host calls a plugin only for the hooks its `describe` lists. That list is not written
//! by hand: the [`macro@policy`] attribute on the `impl Policy for X` block reads the names of
//! the methods the block defines and lists the hook of each hook method ([`Policy::on_send`]
//! and [`Policy::on_unreadable_content`] give [`Hook::OnSend`], [`Policy::on_timer`] gives
//! [`Hook::OnTimer`], ...), in the order of [`Hook`]. So a hook cannot be implemented and
//! forgotten (its method would silently never run), nor listed and left at its default (the
//! host would pay a call for nothing). A method other than a hook method (`new`, helpers in
//! another `impl` block) declares nothing.
//!
//! The list is the constant of a hidden trait the attribute implements, not an item of
//! [`Policy`], and [`export_policy!`] requires it: a policy without the attribute does not
//! build, and the error says to add it. Listing the hooks by hand in the block is an error
//! too:
//!
//! ```compile_fail
//! use mxpolicy_guest::{ConfigError, Hook, Policy, policy};
//!
//! pub struct Listed;
//!
//! #[policy]
//! impl Policy for Listed {
//!     const NAME: &'static str = "listed";
//!     const VERSION: &'static str = "1.0.0";
//!     const HOOKS: &'static [Hook] = &[Hook::OnSend]; // error: hooks are derived
//!     type Config = serde_json::Value;
//!     fn new(_: serde_json::Value) -> Result<Self, ConfigError> { Ok(Self) }
//! }
//! ```
//!
//! ```compile_fail,E0277
//! use mxpolicy_guest::{ConfigError, Policy};
//!
//! pub struct Unmarked;
//!
//! impl Policy for Unmarked { // no #[policy]
//!     const NAME: &'static str = "unmarked";
//!     const VERSION: &'static str = "1.0.0";
//!     type Config = serde_json::Value;
//!     fn new(_: serde_json::Value) -> Result<Self, ConfigError> { Ok(Self) }
//! }
//!
//! mxpolicy_guest::export_policy!(Unmarked); // error: `Unmarked` does not declare its hooks
//! ```
//!
//! The attribute sees only the methods written in the block, so it refuses a macro call among
//! the block's items. A policy's unit tests read the derived list as
//! `<MyPolicy as mxpolicy_guest::DeclaredHooks>::HOOKS`.

#![deny(missing_docs)]

mod adapter;
pub mod gdpr;
mod host;
pub mod http;
mod ids;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
mod types;

/// The raw WIT bindings. Used by [`export_policy!`]; policies use the typed API instead.
#[doc(hidden)]
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod wit {
    wit_bindgen::generate!({
        path: "../wit",
        world: "policy",
        pub_export_macro: true,
        default_bindings_module: "mxpolicy_guest::wit",
    });
}

#[doc(hidden)]
pub use adapter::Adapter;
pub use host::{homeserver, log, state, timers};
pub use ids::{EventId, InvalidId, MxcUri, RoomId, ServerName, UserId};
pub use mxpolicy_guest_macros::policy;
pub use serde_json;
pub use types::{
    Action, AdminRequest, ConfigError, ContentError, DeactivateContext, HistoryVisibility, Hook,
    HttpRequest, HttpResponse, MatrixError, MediaFetchContext, MediaUploadContext, Outcome,
    ReactivateContext, Requester, SendContext, ServeContext, ServeEvent, ServeOutcome,
    ServeVerdict, TimerContext, UserKind, Verdict, Viewer,
};

/// A policy. Put [`#[policy]`](macro@policy) on the `impl Policy for X` block: the host then
/// calls exactly the hooks whose methods the block implements; every other hook keeps its
/// default and is never called.
///
/// The host creates the policy with [`new`](Policy::new) from its JSON configuration before
/// each call (instances are fresh by default), so `new` should only parse and check. Keep
/// anything that must outlive a call in [`state`].
pub trait Policy: Sized + 'static {
    /// The plugin's name: a-z, 0-9 and `-`. State and web endpoints are keyed by it.
    const NAME: &'static str;
    /// The plugin's version.
    const VERSION: &'static str;
    /// The configuration, deserialized from the JSON the admin gave the host.
    type Config: serde::de::DeserializeOwned;

    /// Check the configuration and build the policy. An error refuses the load, naming the key.
    fn new(config: Self::Config) -> Result<Self, ConfigError>;

    /// A local user's event before it is accepted. Default: allow.
    fn on_send(&self, _ctx: &SendContext) -> Outcome {
        Outcome::allow()
    }

    /// A local user's event whose content the SDK could not parse (see [`ContentError`]);
    /// `ctx.content` is `null` and [`on_send`](Policy::on_send) is not called. Part of
    /// [`Hook::OnSend`]: implementing it declares that hook, like `on_send`. Default: deny
    /// with `M_BAD_JSON`. Content a policy cannot read must never pass as if it were empty:
    /// a keyword hidden 127 levels deep would otherwise slip past every filter.
    fn on_unreadable_content(&self, _ctx: &SendContext, error: &ContentError) -> Outcome {
        Outcome::deny(
            "M_BAD_JSON",
            format!(
                "The policy `{}` cannot read this event's content: {error}",
                Self::NAME
            ),
        )
    }

    /// Events about to be served to a client. Default: serve all.
    fn on_client_serve(&self, ctx: &ServeContext) -> ServeOutcome {
        ServeOutcome::serve_all(ctx)
    }

    /// Events about to be served to a server. Default: serve all.
    fn on_federation_serve(&self, ctx: &ServeContext) -> ServeOutcome {
        ServeOutcome::serve_all(ctx)
    }

    /// An account deactivation. Default: allow.
    fn on_deactivate(&self, _ctx: &DeactivateContext) -> Outcome {
        Outcome::allow()
    }

    /// An account reactivation. Default: allow.
    fn on_reactivate(&self, _ctx: &ReactivateContext) -> Outcome {
        Outcome::allow()
    }

    /// A media upload. Default: allow.
    fn on_media_upload(&self, _ctx: &MediaUploadContext) -> Outcome {
        Outcome::allow()
    }

    /// A media fetch. Default: allow.
    fn on_media_fetch(&self, _ctx: &MediaFetchContext) -> Outcome {
        Outcome::allow()
    }

    /// A request to the plugin's web endpoints. Default: 404.
    fn on_http(&self, _req: &HttpRequest) -> HttpResponse {
        HttpResponse::not_found()
    }

    /// A timer fired. Default: no actions.
    fn on_timer(&self, _ctx: &TimerContext) -> Vec<Action> {
        Vec::new()
    }

    /// A command from the homeserver: answer with JSON, or refuse with a message.
    /// Default: refuse every command.
    fn on_admin(&self, req: &AdminRequest) -> Result<serde_json::Value, String> {
        Err(format!("unknown command `{}`", req.command))
    }
}

/// The hooks a policy declares, derived by [`#[policy]`](macro@policy) from the hook methods
/// of its `impl Policy` block, in the order of [`Hook`]. Implemented only by the attribute;
/// [`export_policy!`] requires it.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not declare its hooks: add #[mxpolicy_guest::policy] to your impl Policy block",
    label = "this policy's `impl Policy` block has no `#[mxpolicy_guest::policy]`",
    note = "the attribute derives the hooks the host calls from the methods the block implements"
)]
pub trait DeclaredHooks {
    /// The hooks the host calls, one per implemented hook method.
    const HOOKS: &'static [Hook];
}

/// Check, at compile time and in every build, that `P` can be exported. Used by
/// [`export_policy!`].
#[doc(hidden)]
pub const fn assert_exportable<P: Policy + DeclaredHooks>() {}

/// Export a [`Policy`] type as the component's implementation of the `mxpolicy:policy` world.
/// Use it once per plugin crate. The type's `impl Policy` block needs
/// [`#[policy]`](macro@policy); native builds check that and export nothing.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        const _: () = $crate::assert_exportable::<$policy>();
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type MxpolicyExport = $crate::Adapter<$policy>;
    $crate::wit::export!(MxpolicyExport with_types_in $crate::wit);
        };
    };
}
