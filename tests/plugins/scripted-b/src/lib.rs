//! Test fixture: the scripted plugin (source shared with its twin), as the newer build of the
//! `note` record.

/// The record under the key `note`, as the newer build knows it: `tags` was added, with a
/// default so that records the older build wrote still read.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Note {
    /// The note.
    pub text: String,
    /// Added by this build.
    #[serde(default)]
    pub tags: Vec<String>,
}

include!("../../scripted.rs");
