//! Tests: media (to be written).
