//! Ban durations as admins write them (`90s`, `10m`, `1h`, `7d`, `1h30m`), parsed by humantime.

use std::time::Duration;

/// Parses a ban duration; zero is refused (a ban that never starts).
pub fn parse(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text.trim())
        .map_err(|e| format!("\"{text}\" is not a duration like 90s, 10m, 1h or 7d: {e}"))?;
    if duration.as_secs() == 0 {
        return Err(format!("\"{text}\": a ban lasts at least one second"));
    }
    Ok(duration)
}

/// `1h 30m`, `6d 23h 59m 59s`: whole seconds.
pub fn format(duration: Duration) -> String {
    humantime::format_duration(Duration::from_secs(duration.as_secs())).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_durations() {
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse("0s").is_err());
        assert!(parse("soon").expect_err("bad").contains("not a duration"));
        assert_eq!(format(Duration::from_millis(5_400_700)), "1h 30m");
    }
}
