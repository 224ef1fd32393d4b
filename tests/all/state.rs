//! Tests: state (to be written).
