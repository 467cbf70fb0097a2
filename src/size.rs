//! Byte sizes as an operator writes them on the command line (`64MiB`, `512KiB`, `1G`, `4096`)
//! and as they are shown back (binary units, via humansize).

/// A size as written: a number with an optional binary or decimal unit.
///
/// `KiB/MiB/GiB/TiB` and the short forms `K/M/G/T` are powers of 1024; `KB/MB/GB/TB` are powers
/// of 1000; a bare number is bytes.
pub fn parse_size(input: &str) -> Result<u64, String> {
    let text = input.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{input}` is not a size; write e.g. 64MiB, 512KiB or 1GiB"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "`{input}` has an unknown unit `{other}`; use B, KiB, MiB, GiB or TiB"
            ));
        }
    };
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("`{input}` is out of range"));
    }
    Ok(bytes.round() as u64)
}

/// Formats bytes with binary units (`1.50 GiB`).
pub fn human(bytes: u64) -> String {
    humansize::format_size(bytes, humansize::BINARY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_and_decimal_units() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("2 MB"), Ok(2_000_000));
    }

    #[test]
    fn rejects_nonsense_with_a_hint() {
        assert!(parse_size("lots").expect_err("bad").contains("64MiB"));
        assert!(
            parse_size("3 parsecs")
                .expect_err("bad")
                .contains("unknown unit")
        );
    }
}
