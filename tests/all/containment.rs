//! Tests: containment (to be written).
