//! `on-media-fetch`: an erased user's media is refused to everyone, with the answer for
//! media that does not exist (except, during the grace period and when configured, to users
//! who were joined where it was shared).

use std::collections::BTreeSet;

use mxpolicy_guest::{MediaFetchContext, Outcome, Requester, log, state};

use crate::{
    MediaOwnership,
    records::{Reference, erasure_of, gone_key, media_of, reference_keys},
};

/// The errcode of a refused fetch: the host's answer for media that does not exist.
pub const NOT_FOUND_ERRCODE: &str = "M_NOT_FOUND";
/// The message of a refused fetch, identical to the host's answer for missing media.
pub const NOT_FOUND_MESSAGE: &str = "Not found";

impl MediaOwnership {
    /// `on-media-fetch`: refuse media covered by an erasure.
    pub(crate) fn fetch(&self, ctx: &MediaFetchContext) -> Outcome {
        let mxc = ctx.mxc.as_str();
        let record = match media_of(mxc) {
            Ok(Some(record)) => record,
            Ok(None) => {
                if state::get_raw(&gone_key(mxc)).is_some() {
                    // Deleted by an erasure: refused even if the homeserver still has a copy.
                    return not_found();
                }
                // Not uploaded here (remote media, or before the plugin was loaded): not ours.
                return Outcome::allow();
            }
            // Whose it is, and whether they are erased, is unknown.
            Err(e) => return refuse_unreadable(&e),
        };
        let erasure = match erasure_of(&record.uploader) {
            Ok(Some(erasure)) => erasure,
            Ok(None) => return Outcome::allow(),
            Err(e) => return refuse_unreadable(&e),
        };
        if !erasure.covers(record.uploaded_at_ms) {
            return Outcome::allow();
        }
        if !erasure.is_final(ctx.now_ms)
            && self.config.email_model_exception
            && let Requester::User(user) = &ctx.requester
            && Self::joined_at_a_reference(mxc, user.as_str())
        {
            return Outcome::allow();
        }
        not_found()
    }

    /// Whether `user` was joined to a room where an event referencing `mxc` was sent, when it
    /// was sent (as recorded).
    fn joined_at_a_reference(mxc: &str, user: &str) -> bool {
        let mut seen = BTreeSet::new();
        reference_keys(mxc).iter().any(|key| {
            // A reference or snapshot that does not decode proves nothing: no exception.
            let Ok(Some(Reference {
                members: Some(hash),
                ..
            })) = state::get::<Reference>(key)
            else {
                return false;
            };
            if !seen.insert(hash.clone()) {
                return false;
            }
            matches!(
                state::get::<Vec<String>>(&format!("members/{hash}")),
                Ok(Some(members)) if members.iter().any(|m| m == user)
            )
        })
    }
}

/// Refuse a fetch over a record that does not decode, as if the media did not exist.
fn refuse_unreadable(e: &mxpolicy_guest::state::DecodeError) -> Outcome {
    log::error(&format!("{e}; the media is refused"));
    not_found()
}

/// The answer for media that does not exist.
fn not_found() -> Outcome {
    Outcome::deny(NOT_FOUND_ERRCODE, NOT_FOUND_MESSAGE)
}
