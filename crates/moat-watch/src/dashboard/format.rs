//! Short human forms of the dashboard's numbers (rates, bytes, ages), so each value fits
//! in a few columns whatever its size.

use std::time::Duration;

/// A rate or count: one decimal under 10, whole numbers under ten thousand, then `k`/`M`/`G`.
pub fn number(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".to_owned();
    }
    let a = v.abs();
    if a < 10.0 {
        format!("{v:.1}")
    } else if a < 10_000.0 {
        format!("{v:.0}")
    } else if a < 10_000_000.0 {
        format!("{:.1}k", v / 1e3)
    } else if a < 10_000_000_000.0 {
        format!("{:.1}M", v / 1e6)
    } else {
        format!("{:.1}G", v / 1e9)
    }
}

/// A count (clients, connections): whole numbers, `k`/`M` past ten thousand.
pub fn count(v: f64) -> String {
    if v.is_finite() && v.abs() < 10_000.0 {
        format!("{v:.0}")
    } else {
        number(v)
    }
}

/// Bytes in binary units (`512 B`, `17.6 KiB`, `1.2 GiB`).
pub fn bytes(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".to_owned();
    }
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = v;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A duration in its two largest units (`5s`, `1m 3s`, `2h 5m`, `3d 4h`).
pub fn age(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins, secs) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {mins}m")
    } else if mins > 0 {
        format!("{mins}m {secs}s")
    } else {
        format!("{secs}s")
    }
}

/// An optional value in `form`, or `n/a` when the signal is missing.
pub fn or_na(v: Option<f64>, form: fn(f64) -> String) -> String {
    v.map_or_else(|| "n/a".to_owned(), form)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_bytes_and_ages_stay_short() {
        assert_eq!(number(0.0), "0.0");
        assert_eq!(number(3.25), "3.2");
        assert_eq!(number(812.0), "812");
        assert_eq!(number(28_000.0), "28.0k");
        assert_eq!(number(f64::NAN), "n/a");
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(18_022.0), "17.6 KiB");
        assert_eq!(bytes(2.0 * 1024.0 * 1024.0 * 1024.0), "2.0 GiB");
        assert_eq!(age(Duration::from_secs(5)), "5s");
        assert_eq!(age(Duration::from_secs(63)), "1m 3s");
        assert_eq!(age(Duration::from_secs(7500)), "2h 5m");
        assert_eq!(age(Duration::from_secs(3 * 86_400 + 4 * 3600)), "3d 4h");
        assert_eq!(or_na(None, number), "n/a");
        assert_eq!(count(5.0), "5");
        assert_eq!(count(12_345.0), "12.3k");
    }
}
