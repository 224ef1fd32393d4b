//! Tests: consent (to be written).
