//! Tests: replay (to be written).
