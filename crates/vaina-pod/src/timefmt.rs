//! RFC 3339 timestamps in UTC with nanoseconds, the format of CRI log lines and of the exit
//! times the supervisor reports. Hand-written (a date library would be the biggest dependency
//! of the supervisor for one function).
//!
//! The fraction always has nine digits (`2024-05-01T10:20:30.000001000Z`): Go's
//! `time.RFC3339Nano` parser, which kubelet uses, accepts it, and fixed-width stamps sort as
//! text.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// `t` formatted as `YYYY-MM-DDThh:mm:ss.nnnnnnnnnZ`. Times before 1970 are clamped to the
/// epoch (the supervisor only formats "now").
pub fn rfc3339_nano(t: SystemTime) -> String {
    let mut out = Vec::with_capacity(30);
    write_rfc3339_nano(&mut out, t);
    // Only ASCII digits and separators were written.
    String::from_utf8(out).unwrap_or_default()
}

/// Appends the timestamp of `t` to `out` (see [`rfc3339_nano`]).
pub fn write_rfc3339_nano(out: &mut Vec<u8>, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    );
}

/// Gregorian date of the day `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March-based
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, nanos: u32) -> String {
        rfc3339_nano(UNIX_EPOCH + Duration::new(secs, nanos))
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(
            at(1_709_251_199, 999_999_999),
            "2024-02-29T23:59:59.999999999Z"
        );
        assert_eq!(at(1_735_689_600, 0), "2025-01-01T00:00:00.000000000Z");
        assert_eq!(at(4_102_444_800, 123), "2100-01-01T00:00:00.000000123Z");
    }

    #[test]
    fn every_day_follows_the_previous_one() {
        // Walk 200 years day by day: dates must be strictly increasing and valid.
        let mut prev = civil_from_days(-1);
        for d in 0..73_000 {
            let cur = civil_from_days(d);
            assert!(cur > prev, "{cur:?} after {prev:?}");
            assert!((1..=12).contains(&cur.1) && (1..=31).contains(&cur.2));
            prev = cur;
        }
    }
}
