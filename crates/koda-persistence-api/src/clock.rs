//! The injectable clock every timestamp comes from, and the timestamp text format.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, NaiveDateTime};

/// Earliest instant a clock reports: 1970-01-01T00:00:00.000Z.
pub const MIN_TIMESTAMP_MS: i64 = 0;
/// Latest instant a clock reports: 9999-12-31T23:59:59.999Z.
pub const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_999;

/// A source of "now" in whole milliseconds since the Unix epoch, UTC.
///
/// Backends read it once per call and bind the value as a parameter; they
/// never use a database server's clock. Values are clamped to years 1970–9999.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now, in whole milliseconds since the epoch, within
    /// [`MIN_TIMESTAMP_MS`]`..=`[`MAX_TIMESTAMP_MS`].
    fn now_ms(&self) -> i64;
}

/// The operating system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        let ms = match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(MAX_TIMESTAMP_MS),
            Err(_) => MIN_TIMESTAMP_MS,
        };
        ms.clamp(MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS)
    }
}

/// A clock that only moves when told to; clones share the same time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    ms: Arc<AtomicI64>,
}

impl ManualClock {
    /// A clock standing at `ms` (clamped to years 1970–9999).
    pub fn new(ms: i64) -> Self {
        Self {
            ms: Arc::new(AtomicI64::new(ms.clamp(MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS))),
        }
    }

    /// Sets the time (clamped to years 1970–9999).
    pub fn set(&self, ms: i64) {
        self.ms.store(
            ms.clamp(MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS),
            Ordering::SeqCst,
        );
    }

    /// Moves the time by `delta_ms` (negative moves back), clamped to years 1970–9999.
    pub fn advance(&self, delta_ms: i64) {
        // A CAS loop keeps concurrent advances from losing one another.
        let _ = self
            .ms
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |cur| {
                Some(
                    cur.saturating_add(delta_ms)
                        .clamp(MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS),
                )
            });
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.ms.load(Ordering::SeqCst)
    }
}

/// Formats epoch milliseconds as UTC RFC 3339 with milliseconds:
/// `2026-11-26T05:07:04.123Z`. Values outside years 1970–9999 are clamped.
pub fn format_timestamp(ms: i64) -> String {
    let ms = ms.clamp(MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS);
    match DateTime::from_timestamp_millis(ms) {
        Some(dt) => dt.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        // Unreachable for the clamped range; keep the epoch rather than panic.
        None => "1970-01-01T00:00:00.000Z".to_owned(),
    }
}

/// Parses a stored timestamp into epoch milliseconds: the contract's
/// `2026-11-26T05:07:04.123Z`, any RFC 3339 instant, or koda's legacy SQLite
/// text `2026-11-26 05:07:04` (UTC, optionally with fractional seconds).
/// Returns `None` for anything else.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(text) {
        return Some(dt.timestamp_millis());
    }
    [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
    .map(|n| n.and_utc().timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_milliseconds_in_utc() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_timestamp(1_795_669_624_123),
            "2026-11-26T05:07:04.123Z"
        );
        assert_eq!(
            format_timestamp(MAX_TIMESTAMP_MS),
            "9999-12-31T23:59:59.999Z"
        );
        assert_eq!(format_timestamp(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(format_timestamp(-5), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn parses_contract_and_legacy_text() {
        assert_eq!(
            parse_timestamp("2026-11-26T05:07:04.123Z"),
            Some(1_795_669_624_123)
        );
        assert_eq!(
            parse_timestamp("2026-11-26 05:07:04"),
            Some(1_795_669_624_000)
        );
        assert_eq!(
            parse_timestamp("2026-11-26 05:07:04.5"),
            Some(1_795_669_624_500)
        );
        assert_eq!(parse_timestamp("not a time"), None);
    }

    #[test]
    fn manual_clock_moves_only_when_told_and_clamps() {
        let c = ManualClock::new(1_000);
        let shared = c.clone();
        c.advance(500);
        assert_eq!(shared.now_ms(), 1_500);
        c.advance(-10_000);
        assert_eq!(c.now_ms(), MIN_TIMESTAMP_MS);
        c.set(i64::MAX);
        assert_eq!(c.now_ms(), MAX_TIMESTAMP_MS);
        c.advance(i64::MAX);
        assert_eq!(c.now_ms(), MAX_TIMESTAMP_MS);
        assert_eq!(ManualClock::new(-1).now_ms(), MIN_TIMESTAMP_MS);
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now_ms() > 1_577_836_800_000);
    }
}
