//! The plugin's configuration and how the policy is built from it.

use mime::Mime;
use mxpolicy_guest::{ConfigError, gdpr::DEFAULT_GRACE_PERIOD_MS};
use serde::Deserialize;

use crate::MediaOwnership;

/// The default number of media (and references) cleaned up per timer firing.
pub const DEFAULT_DELETION_BATCH_SIZE: u32 = 500;
/// The largest batch: 5000 delete-media actions stay well under the host's output cap.
pub const MAX_DELETION_BATCH_SIZE: u32 = 5000;

/// The plugin's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Time between the erasure request and its becoming final (deletion), in ms. Must equal
    /// the erasure plugin's grace period. Default 30 days ([`DEFAULT_GRACE_PERIOD_MS`], the
    /// erasure plugin's default too).
    #[serde(default = "default_grace_period_ms")]
    pub grace_period_ms: u64,
    /// During the grace period only, let a user fetch an erased user's media if they were
    /// joined to a room where an event referencing it was sent, when it was sent (as an email
    /// stays in the recipients' mailboxes). Default `false`. Membership is only recorded while
    /// this is on.
    #[serde(default)]
    pub email_model_exception: bool,
    /// Largest upload accepted, in bytes (`M_TOO_LARGE` above). Default: no limit.
    #[serde(default)]
    pub max_upload_bytes: Option<u64>,
    /// Content types accepted: exact (`application/pdf`) or a whole family (`image/*`, `*/*`).
    /// Uploads without a type count as `application/octet-stream`. Default: any type.
    #[serde(default)]
    pub allowed_content_types: Option<Vec<String>>,
    /// Per-user quota: the most bytes of media a user may have stored. Default: no quota.
    #[serde(default)]
    pub quota_bytes: Option<u64>,
    /// The errcode for uploads over quota. Default `M_FORBIDDEN` (Synapse's own
    /// `media_upload_limits` uses `M_RESOURCE_LIMIT_EXCEEDED`; set that to match it).
    #[serde(default = "default_quota_errcode")]
    pub quota_errcode: String,
    /// Media (and references) cleaned up per timer firing; more are done at the next run.
    #[serde(default = "default_deletion_batch_size")]
    pub deletion_batch_size: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            grace_period_ms: DEFAULT_GRACE_PERIOD_MS,
            email_model_exception: false,
            max_upload_bytes: None,
            allowed_content_types: None,
            quota_bytes: None,
            quota_errcode: default_quota_errcode(),
            deletion_batch_size: DEFAULT_DELETION_BATCH_SIZE,
        }
    }
}

fn default_grace_period_ms() -> u64 {
    DEFAULT_GRACE_PERIOD_MS
}

fn default_quota_errcode() -> String {
    "M_FORBIDDEN".into()
}

fn default_deletion_batch_size() -> u32 {
    DEFAULT_DELETION_BATCH_SIZE
}

impl MediaOwnership {
    /// Build the policy from its configuration, checking it.
    pub(crate) fn from_config(config: Config) -> Result<Self, ConfigError> {
        if !config.quota_errcode.starts_with("M_") {
            return Err(ConfigError::new(
                "quota_errcode",
                "a Matrix errcode starts with `M_`",
            ));
        }
        if config.deletion_batch_size == 0 || config.deletion_batch_size > MAX_DELETION_BATCH_SIZE {
            return Err(ConfigError::new(
                "deletion_batch_size",
                format!("must be between 1 and {MAX_DELETION_BATCH_SIZE}"),
            ));
        }
        let allowed = match &config.allowed_content_types {
            None => None,
            Some(types) => Some(
                types
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        content_type_pattern(t).ok_or_else(|| {
                            ConfigError::new(
                                format!("allowed_content_types.{i}"),
                                "expected a content type like `image/png`, `image/*` or `*/*`",
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        Ok(Self { config, allowed })
    }
}

/// An `allowed_content_types` entry, parsed by `mime` (which lowercases it): a type without
/// parameters, with `*` as the subtype for a whole family and `*/*` for every type.
fn content_type_pattern(pattern: &str) -> Option<Mime> {
    let parsed: Mime = pattern.trim().parse().ok()?;
    let wildcard_family = parsed.type_() == mime::STAR && parsed.subtype() != mime::STAR;
    let complete = !parsed.subtype().as_str().is_empty() && parsed.params().next().is_none();
    (complete && !wildcard_family).then_some(parsed)
}
