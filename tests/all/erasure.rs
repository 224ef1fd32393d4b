//! Tests: erasure (to be written).
