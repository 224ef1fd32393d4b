//! GDPR media ownership: media uploaded by a user who asked for erasure stops being served at
//! once, to everyone, with the same answer as media that never existed, and is deleted when the
//! erasure becomes final (the grace period ends). Optional upload limits: size, content types,
//! per-user quota.
//!
//! The plugin keeps its own knowledge (plugin state is per plugin name):
//! - who uploaded each `mxc://` URI (`on-media-upload`);
//! - which events reference it, where, when, and, when the "email model" exception is on, who
//!   was joined to the room at that moment (`on-send`);
//! - which users asked for erasure, and when (`on-deactivate`, `on-reactivate`), with a durable
//!   timer at the end of the grace period (`on-timer`), which returns the delete-media actions.
//!
//! It returns no deactivation actions and never vetoes a deactivation or reactivation: the
//! erasure plugin decides those. Configure both with the same grace period.
//!
//! Config (every key optional):
//! ```json
//! {"grace_period_ms": 2592000000, "email_model_exception": false,
//!  "max_upload_bytes": 52428800, "allowed_content_types": ["image/*", "application/pdf"],
//!  "quota_bytes": 1073741824, "quota_errcode": "M_FORBIDDEN", "deletion_batch_size": 500}
//! ```
//!
//! The default grace period is the SDK's [`DEFAULT_GRACE_PERIOD_MS`], the one the erasure
//! plugin uses too.
//!
//! Parsing is left to crates made for it: content types to `mime` (the upload's type and the
//! `allowed_content_types` patterns), `mxc://` URIs to the SDK's [`MxcUri::is_valid`] (ruma's
//! rules), admin command names to `strum`. Two small pieces stay hand-written, on purpose:
//! - the upload's type is cut at its first `;` before `mime` parses it: the limits ignore
//!   parameters, and `mime` 0.3 refuses the whitespace HTTP allows before `;`;
//! - finding `mxc://` URIs inside HTML (`formatted_body`) scans for the `mxc://` prefix and
//!   takes the characters a URI can hold, then validates each candidate with the SDK. Only the
//!   `src` of images matters and a false positive is harmless (a reference is recorded only to
//!   media uploaded here), so an HTML parser (`html5ever`, `scraper`) would add a large
//!   dependency to every build of the plugin for no change in the result.
//!
//! [`DEFAULT_GRACE_PERIOD_MS`]: mxpolicy_guest::gdpr::DEFAULT_GRACE_PERIOD_MS
//! [`MxcUri::is_valid`]: mxpolicy_guest::MxcUri::is_valid

mod admin;
mod config;
mod extract;
mod fetch;
mod lifecycle;
mod records;
mod references;
mod upload;

use mxpolicy_guest::{
    Action, AdminRequest, ConfigError, DeactivateContext, MediaFetchContext, MediaUploadContext,
    Outcome, Policy, ReactivateContext, SendContext, TimerContext, export_policy, policy,
};
use serde_json::Value;

pub use crate::{
    config::{Config, DEFAULT_DELETION_BATCH_SIZE, MAX_DELETION_BATCH_SIZE},
    fetch::{NOT_FOUND_ERRCODE, NOT_FOUND_MESSAGE},
    lifecycle::UNREADABLE_RETRY_MS,
    records::{Erasure, MediaRecord, Reference},
    upload::UNREADABLE_ERRCODE,
};

/// The policy.
#[derive(Debug)]
pub struct MediaOwnership {
    config: Config,
    /// `allowed_content_types`, parsed.
    allowed: Option<Vec<mime::Mime>>,
}

#[policy]
impl Policy for MediaOwnership {
    const NAME: &'static str = "media-ownership";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Config = Config;

    fn new(config: Config) -> Result<Self, ConfigError> {
        Self::from_config(config)
    }

    fn on_send(&self, ctx: &SendContext) -> Outcome {
        self.record_references(ctx)
    }

    fn on_deactivate(&self, ctx: &DeactivateContext) -> Outcome {
        self.request_erasure(ctx)
    }

    fn on_reactivate(&self, ctx: &ReactivateContext) -> Outcome {
        self.reactivate(ctx)
    }

    fn on_media_upload(&self, ctx: &MediaUploadContext) -> Outcome {
        self.upload(ctx)
    }

    fn on_media_fetch(&self, ctx: &MediaFetchContext) -> Outcome {
        self.fetch(ctx)
    }

    fn on_timer(&self, ctx: &TimerContext) -> Vec<Action> {
        self.fire_timer(ctx)
    }

    fn on_admin(&self, req: &AdminRequest) -> Result<Value, String> {
        admin::handle(req)
    }
}

export_policy!(MediaOwnership);

#[cfg(test)]
mod tests;
