//! Tests: hot_swap (to be written).
