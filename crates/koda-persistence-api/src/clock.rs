//! The injectable clock every timestamp comes from, and the timestamp text format.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

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
        Self { ms: Arc::new(AtomicI64::new(ms.clamp(MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS))) }
    }

    /// Sets the time (clamped to years 1970–9999).
    pub fn set(&self, ms: i64) {
        self.ms.store(ms.clamp(MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS), Ordering::SeqCst);
    }

    /// Moves the time by `delta_ms` (negative moves back), clamped to years 1970–9999.
    pub fn advance(&self, delta_ms: i64) {
        // A CAS loop keeps concurrent advances from losing one another.
        let _ = self.ms.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |cur| {
            Some(cur.saturating_add(delta_ms).clamp(MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS))
        });
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.ms.load(Ordering::SeqCst)
    }
}

/// `get_session_idle_secs`: whole seconds from `last_accessed_ms` to `now_ms`
/// (floor division), never negative; `None` if never accessed.
pub fn idle_secs(now_ms: i64, last_accessed_ms: Option<i64>) -> Option<i64> {
    last_accessed_ms.map(|at| now_ms.saturating_sub(at).div_euclid(1000).max(0))
}

/// Formats epoch milliseconds as UTC RFC 3339 with milliseconds:
/// `2026-11-26T05:07:04.123Z`. Values outside years 1970–9999 are clamped.
///
/// Written out by hand (days-to-civil conversion) because it runs for every
/// message a backend returns, and chrono's formatter parses its format
/// string on each call.
pub fn format_timestamp(ms: i64) -> String {
    let ms = ms.clamp(MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS);
    let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (year, month, day) = civil_from_days(days);
    let fields = [
        (year, 4, '-'),
        (month, 2, '-'),
        (day, 2, 'T'),
        (ms_of_day / 3_600_000, 2, ':'),
        (ms_of_day / 60_000 % 60, 2, ':'),
        (ms_of_day / 1000 % 60, 2, '.'),
        (ms_of_day % 1000, 3, 'Z'),
    ];
    let mut out = String::with_capacity(24);
    for (value, width, sep) in fields {
        // Every field is non-negative and fits its width after the clamp.
        let mut digits = [b'0'; 4];
        let mut v = value;
        for slot in digits[..width].iter_mut().rev() {
            *slot = b'0' + u8::try_from(v % 10).unwrap_or(0);
            v /= 10;
        }
        for d in &digits[..width] {
            out.push(char::from(*d));
        }
        out.push(sep);
    }
    out
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_milliseconds_in_utc() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_timestamp(1_795_669_624_123), "2026-11-26T05:07:04.123Z");
        assert_eq!(format_timestamp(MAX_TIMESTAMP_MS), "9999-12-31T23:59:59.999Z");
        assert_eq!(format_timestamp(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(format_timestamp(-5), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn hand_formatting_matches_chrono_across_the_range() {
        let mut ms = 0i64;
        let step = 7_919_993_337; // ~92 days plus odd hours, minutes, ms
        while ms <= MAX_TIMESTAMP_MS {
            let want = chrono::DateTime::from_timestamp_millis(ms)
                .map(|d| d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
                .unwrap_or_default();
            assert_eq!(format_timestamp(ms), want, "{ms}");
            ms += step;
        }
        for edge in [951_782_400_000, 951_868_799_999, 4_107_542_400_000, 1_709_164_800_123] {
            let want = chrono::DateTime::from_timestamp_millis(edge)
                .map(|d| d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
                .unwrap_or_default();
            assert_eq!(format_timestamp(edge), want, "{edge}");
        }
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
