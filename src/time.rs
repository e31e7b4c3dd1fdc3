//! Timestamps are UTC microseconds since the Unix epoch.

use chrono::{DateTime, SecondsFormat, Utc};

pub fn now_us() -> i64 {
    Utc::now().timestamp_micros()
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
