//! The plugin's configuration and how the policy is built from it.

use hmac::{Hmac, Mac};
use mxpolicy_guest::{
    ConfigError,
    gdpr::{DAY_MS, DEFAULT_GRACE_PERIOD_MS},
};
use serde::Deserialize;
use sha2::Sha256;
use strum::{EnumString, VariantNames};

use crate::{Erasure, one_of};

/// The shortest pseudonym secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// The plugin's configuration. Every key is optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Grace period between the request and the irreversible steps, in milliseconds.
    #[serde(default)]
    pub grace_period_ms: Option<u64>,
    /// The same in days (give one of the two; default 30 days, the SDK's
    /// [`DEFAULT_GRACE_PERIOD_MS`], which the media-ownership plugin uses too).
    #[serde(default)]
    pub grace_period_days: Option<u64>,
    /// Veto erasure requests that did not pass a second factor (admins are exempt).
    #[serde(default)]
    pub require_second_factor: bool,
    /// Serve erased users' events to later client viewers with a per-room pseudonym as sender.
    #[serde(default)]
    pub pseudonymize_clients: bool,
    /// The HMAC key of the pseudonyms (required with `pseudonymize_clients`).
    #[serde(default)]
    pub pseudonym_secret: Option<String>,
    /// `"spec"` (default) or `"strict"`: a [`FederationMode`], by its name.
    #[serde(default)]
    pub federation: Option<String>,
    /// Withhold, rather than redact, erased events for servers that had no user joined.
    #[serde(default)]
    pub federation_withhold_unjoined: bool,
}

/// How erased events are served over federation. The `federation` setting names it in
/// lowercase (`spec`, `strict`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumString, VariantNames)]
#[strum(serialize_all = "lowercase")]
pub enum FederationMode {
    /// The spec's text (MSC4025): a server that had a user joined at the event gets it whole.
    Spec,
    /// Synapse's behaviour: every server gets it redacted.
    Strict,
}

impl Erasure {
    /// Build the policy from its configuration.
    pub(crate) fn from_config(config: Config) -> Result<Self, ConfigError> {
        let grace_period_ms = match (config.grace_period_ms, config.grace_period_days) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "grace_period_days",
                    "give either `grace_period_ms` or `grace_period_days`, not both",
                ));
            }
            (Some(ms), None) => ms,
            (None, Some(days)) => days.checked_mul(DAY_MS).ok_or_else(|| {
                ConfigError::new("grace_period_days", "the grace period is too long")
            })?,
            (None, None) => DEFAULT_GRACE_PERIOD_MS,
        };
        let federation = match config.federation.as_deref() {
            None => FederationMode::Spec,
            Some(name) => name.parse().map_err(|_| {
                ConfigError::new(
                    "federation",
                    format!(
                        "unknown mode `{name}`: expected {}",
                        one_of(FederationMode::VARIANTS)
                    ),
                )
            })?,
        };
        let pseudonym_key = if config.pseudonymize_clients {
            let secret = config.pseudonym_secret.as_deref().unwrap_or_default();
            if secret.len() < MIN_SECRET_LEN {
                return Err(ConfigError::new(
                    "pseudonym_secret",
                    format!(
                        "`pseudonymize_clients` needs a secret of at least {MIN_SECRET_LEN} bytes"
                    ),
                ));
            }
            Some(
                Hmac::<Sha256>::new_from_slice(secret.as_bytes())
                    .map_err(|e| ConfigError::new("pseudonym_secret", e.to_string()))?,
            )
        } else {
            None
        };
        Ok(Self {
            grace_period_ms,
            require_second_factor: config.require_second_factor,
            pseudonym_key,
            federation,
            withhold_unjoined: config.federation_withhold_unjoined,
        })
    }
}
