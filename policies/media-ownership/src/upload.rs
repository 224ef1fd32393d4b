//! `on-media-upload`: the upload limits (size, content types, quota) and the record of who
//! uploaded what.

use mime::Mime;
use mxpolicy_guest::{MediaUploadContext, Outcome, log, state, state::DecodeError};

use crate::{
    MediaOwnership,
    records::{
        MAX_KEY_BYTES, MediaRecord, by_user_prefix, media_key, media_of, ref_prefix, usage_key,
    },
};

/// The errcode of an upload refused because a record it would change does not decode (the
/// host's errcode for a policy that is unavailable).
pub const UNREADABLE_ERRCODE: &str = "M_UNKNOWN";

impl MediaOwnership {
    /// `on-media-upload`: apply the limits, then record the upload.
    pub(crate) fn upload(&self, ctx: &MediaUploadContext) -> Outcome {
        if let Some(refusal) = self.check_upload(ctx) {
            return refusal;
        }
        match Self::record_upload(ctx) {
            Ok(()) => Outcome::allow(),
            Err(e) => refuse_unreadable(&e),
        }
    }

    /// Record the upload: who, how big, what type, when; the uploader's index and usage.
    /// Every record it changes is decoded before anything is written, so one that does not
    /// decode refuses the upload and nothing is overwritten.
    fn record_upload(ctx: &MediaUploadContext) -> Result<(), DecodeError> {
        let mxc = ctx.mxc.as_str();
        let user = ctx.uploader.as_str();
        let old = media_of(mxc)?;
        state::get::<u64>(&usage_key(user))?;
        if let Some(old) = &old {
            state::get::<u64>(&usage_key(&old.uploader))?;
            // Content uploaded again for the same URI: replace the old record's accounting.
            Self::forget_usage_and_index(mxc, old)?;
        }
        state::set(
            &media_key(mxc),
            &MediaRecord {
                uploader: user.to_owned(),
                size: ctx.size,
                content_type: ctx.content_type.clone(),
                uploaded_at_ms: ctx.now_ms,
            },
        );
        state::set_raw(&format!("{}{mxc}", by_user_prefix(user)), &[]);
        let key = usage_key(user);
        let usage = state::get::<u64>(&key)?
            .unwrap_or(0)
            .saturating_add(ctx.size);
        state::set(&key, &usage);
        Ok(())
    }

    /// Refuse an upload, or `None` to accept it.
    fn check_upload(&self, ctx: &MediaUploadContext) -> Option<Outcome> {
        if let Some(max) = self.config.max_upload_bytes
            && ctx.size > max
        {
            return Some(Outcome::deny(
                "M_TOO_LARGE",
                format!(
                    "This upload is {} bytes; the largest upload allowed is {max} bytes",
                    ctx.size
                ),
            ));
        }
        if let Some(allowed) = &self.allowed {
            let content_type = upload_type(ctx.content_type.as_deref());
            if !allowed
                .iter()
                .any(|p| content_type_matches(p, content_type.as_ref().ok()))
            {
                let named = match &content_type {
                    Ok(t) => t.essence_str(),
                    Err(unparsable) => unparsable,
                };
                let allowed: Vec<&str> = allowed.iter().map(Mime::essence_str).collect();
                return Some(Outcome::deny(
                    "M_FORBIDDEN",
                    format!(
                        "Media of type {named} may not be uploaded here; allowed types: {}",
                        allowed.join(", ")
                    ),
                ));
            }
        }
        let mxc = ctx.mxc.as_str();
        let user = ctx.uploader.as_str();
        let longest = format!("{}{mxc}", by_user_prefix(user))
            .len()
            .max(ref_prefix(mxc).len() + 16);
        if longest > MAX_KEY_BYTES {
            return Some(Outcome::deny(
                "M_FORBIDDEN",
                "This media id is too long for the media policy to track",
            ));
        }
        if let Some(quota) = self.config.quota_bytes {
            // What the user stores is unknown: the quota cannot be checked.
            let mut used = match state::get::<u64>(&usage_key(user)) {
                Ok(used) => used.unwrap_or(0),
                Err(e) => return Some(refuse_unreadable(&e)),
            };
            // Re-uploading content for the same URI (asynchronous uploads) replaces it.
            match media_of(mxc) {
                Ok(Some(old)) if old.uploader == user => used = used.saturating_sub(old.size),
                Ok(_) => {}
                Err(e) => return Some(refuse_unreadable(&e)),
            }
            if used.saturating_add(ctx.size) > quota {
                return Some(Outcome::deny(
                    &self.config.quota_errcode,
                    format!(
                        "Media upload quota exceeded: you store {used} of {quota} bytes, and \
                         this upload is {} bytes",
                        ctx.size
                    ),
                ));
            }
        }
        None
    }

    /// Remove a media's index entry and its share of its uploader's usage (before the record
    /// is replaced by a new upload for the same URI).
    fn forget_usage_and_index(mxc: &str, old: &MediaRecord) -> Result<(), DecodeError> {
        let key = usage_key(&old.uploader);
        let usage = state::get::<u64>(&key)?
            .unwrap_or(0)
            .saturating_sub(old.size);
        state::delete(&format!("{}{mxc}", by_user_prefix(&old.uploader)));
        state::set(&key, &usage);
        Ok(())
    }
}

/// Refuse an upload over a record that does not decode (kept as it is).
fn refuse_unreadable(e: &DecodeError) -> Outcome {
    log::error(&format!("{e}; the upload is refused"));
    Outcome::deny(
        UNREADABLE_ERRCODE,
        "The media policy cannot read its records for this upload; please try again later",
    )
}

/// The type an upload declares, as the limits see it: `type/subtype` without parameters,
/// lowercase, parsed by `mime`. Uploads without a type count as `application/octet-stream`
/// (as Synapse assumes). `Err` holds a type that does not parse, trimmed and lowercased, to
/// name it in the refusal: only `*/*` lets such an upload through.
///
/// Only the part before the first `;` is parsed: parameters never matter to the limits, and
/// `mime` refuses the optional whitespace before `;` that HTTP allows (`text/plain ; a=b`).
pub(crate) fn upload_type(content_type: Option<&str>) -> Result<Mime, String> {
    let essence = content_type
        .and_then(|t| t.split(';').next())
        .map(str::trim)
        .unwrap_or_default();
    if essence.is_empty() {
        return Ok(mime::APPLICATION_OCTET_STREAM);
    }
    essence
        .parse::<Mime>()
        .map_err(|_| essence.to_ascii_lowercase())
}

/// Whether an upload's type (`None`: it does not parse) matches an allowed pattern: `*/*`
/// matches every upload, `type/*` a whole family, any other pattern exactly that type.
pub(crate) fn content_type_matches(pattern: &Mime, content_type: Option<&Mime>) -> bool {
    if *pattern == mime::STAR_STAR {
        return true;
    }
    let Some(content_type) = content_type else {
        return false;
    };
    if pattern.subtype() == mime::STAR {
        pattern.type_() == content_type.type_()
    } else {
        pattern.essence_str() == content_type.essence_str()
    }
}
