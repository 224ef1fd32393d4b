//! Test fixture: the scripted plugin (source shared with its twin).

include!("../../scripted.rs");
