//! Duration strings (`"10m"`, `"1h30m"`, `"250ms"`), read at compile time.

/// Milliseconds of `text`: one or more `<number><unit>` groups, units `ms`, `s`, `m`, `h`,
/// `d`, largest first or not, summed. `Err` says what is wrong.
pub(crate) fn parse_millis(text: &str) -> Result<u64, String> {
    let hint =
        "write a number and a unit (ms, s, m, h, d), e.g. \"30s\", \"10m\", \"1h30m\", \"250ms\"";
    if text.is_empty() {
        return Err(format!("empty duration: {hint}"));
    }
    let bytes = text.as_bytes();
    let mut total: u64 = 0;
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(format!(
                "bad duration \"{text}\": expected a number at `{}`; {hint}",
                &text[start..]
            ));
        }
        let number: u64 = text[start..i]
            .parse()
            .map_err(|_| format!("duration \"{text}\" is too long"))?;
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = match &text[unit_start..i] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => {
                return Err(format!(
                    "bad duration \"{text}\": `{}` has no unit; {hint}",
                    &text[start..i]
                ));
            }
            other => {
                return Err(format!(
                    "bad duration \"{text}\": unknown unit `{other}`; {hint}"
                ));
            }
        };
        total = number
            .checked_mul(unit)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(|| format!("duration \"{text}\" is too long"))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::parse_millis;

    #[test]
    fn reads_units_and_sums_groups() {
        assert_eq!(parse_millis("250ms"), Ok(250));
        assert_eq!(parse_millis("30s"), Ok(30_000));
        assert_eq!(parse_millis("10m"), Ok(600_000));
        assert_eq!(parse_millis("1h30m"), Ok(5_400_000));
        assert_eq!(parse_millis("2d"), Ok(172_800_000));
        assert_eq!(parse_millis("1m500ms"), Ok(60_500));
    }

    #[test]
    fn refuses_what_is_not_a_duration() {
        for bad in [
            "",
            "10",
            "m",
            "10 m",
            "10min",
            "1.5h",
            "-1s",
            "99999999999999999999s",
        ] {
            assert!(parse_millis(bad).is_err(), "{bad:?}");
        }
        assert!(parse_millis("10").unwrap_err().contains("has no unit"));
        assert!(
            parse_millis("10min")
                .unwrap_err()
                .contains("unknown unit `min`")
        );
    }
}
