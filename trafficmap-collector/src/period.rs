//! Time periods: the lengths of the stored grains, flooring to them, and conversions between
//! chrono times and the epoch numbers the stores keep.

use chrono::{DateTime, DurationRound as _, TimeDelta, Utc};

pub const MINUTE: i64 = 60;
pub const HOUR: i64 = 3600;
pub const DAY: i64 = 86_400;

/// Start of the period of `len` seconds containing `t` (seconds since the epoch).
pub fn floor(t: i64, len: i64) -> i64 {
    t.div_euclid(len) * len
}

pub fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub fn from_secs(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(s, 0).unwrap_or_default()
}

pub fn from_ms(v: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(v).unwrap_or_default()
}

/// Truncates to the minute (ranges are minute-granular: the whole window of a report is
/// attributed to the minute its window starts in).
pub fn minute_floor(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(TimeDelta::minutes(1)).unwrap_or(t)
}
