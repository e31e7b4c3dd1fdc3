//! Timestamps are UTC microseconds since the Unix epoch.

use chrono::{DateTime, SecondsFormat, Utc};

/// The system clock in microseconds since the Unix epoch. A clock set
/// before 1970 gives a negative time rather than a panic (chrono's
/// `Utc::now` panics there).
pub fn now_us() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_micros()).map_or(i64::MIN, |us| -us),
    }
}

pub fn format_us(us: i64) -> String {
    match DateTime::<Utc>::from_timestamp_micros(us) {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Micros, true),
        None => us.to_string(),
    }
}

/// Parses an RFC 3339 time (any offset) to UTC microseconds.
pub fn parse_rfc3339_us(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_micros())
}
