//! Test fixture: the scripted plugin (source shared with its twin), as the older build of the
//! `note` record.

/// The record under the key `note`, as the older build knows it: text only.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Note {
    /// The note.
    pub text: String,
}

include!("../../scripted.rs");
