//! Tests: composition (to be written).
