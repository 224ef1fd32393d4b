//! Values the GDPR policies share, defined once so that the policies that must agree do.
//!
//! The erasure and media-ownership policies each run their own grace-period timer (plugin
//! state is per plugin), so an erasure becomes final for both at the same moment only if both
//! use the same period. Both default to [`DEFAULT_GRACE_PERIOD_MS`].

/// One day in milliseconds: the unit of day-valued settings such as `grace_period_days`.
pub const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// The default grace period between an erasure request and its becoming final (the
/// irreversible steps: purges, media deletion): 30 days, as the Matrix GDPR plan asks, in
/// milliseconds (`2592000000`). A reactivation inside it cancels the erasure.
pub const DEFAULT_GRACE_PERIOD_MS: u64 = 30 * DAY_MS;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_grace_period_is_30_days() {
        assert_eq!(DAY_MS, 86_400_000);
        assert_eq!(DEFAULT_GRACE_PERIOD_MS, 2_592_000_000);
    }
}
