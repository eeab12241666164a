//! Formatting helpers shared by the subcommands: sizes, times, addresses,
//! and the escaping of bytes that come from a file.

use memimg::{Prot, RegionInfo};

/// Bytes from a file (a region name, a process fact, a note name) made safe
/// for a terminal, as `ls` and ripgrep do: printable text is kept, a
/// backslash becomes `\\`, tab, newline and carriage return become `\t`, `\n`
/// and `\r`, other control and invisible formatting characters (ESC, DEL,
/// C1 controls, bidirectional overrides, zero-width characters) become
/// `\x1b` or `\u{202e}`, and bytes that are not UTF-8 become `\xNN`. An
/// escape sequence in an image therefore never reaches the terminal, and a
/// newline never splits a table row.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            escape_char(c, &mut out);
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// [`escape`], and a `"` becomes `\"`, for text shown between quotes.
pub fn escape_quoted(bytes: &[u8]) -> String {
    escape(bytes).replace('"', "\\\"")
}

/// [`escape`] of a string (which may still hold control characters).
pub fn escape_str(text: &str) -> String {
    escape(text.as_bytes())
}

fn escape_char(c: char, out: &mut String) {
    match c {
        '\\' => out.push_str("\\\\"),
        '\t' => out.push_str("\\t"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        c if (c as u32) < 0x80 && c.is_ascii_control() => {
            out.push_str(&format!("\\x{:02x}", c as u32));
        }
        c if invisible(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        c => out.push(c),
    }
}

/// Characters that print nothing or change how the rest of a line prints:
/// C1 controls, and the format characters (Unicode category Cf) and
/// separators that terminals honour.
fn invisible(c: char) -> bool {
    matches!(
        c as u32,
        0x80..=0x9f             // C1 controls (CSI is 0x9b)
            | 0xad              // soft hyphen
            | 0x061c            // Arabic letter mark
            | 0x180e            // Mongolian vowel separator
            | 0x200b..=0x200f   // zero-width space, joiners, LRM, RLM
            | 0x2028..=0x202e   // line and paragraph separators, bidi embeddings and overrides
            | 0x2060..=0x206f   // word joiner, invisible operators, bidi isolates
            | 0xfeff            // zero-width no-break space
            | 0xfff9..=0xfffb   // interlinear annotations
    )
}

/// An address as `0x` and at least 12 hex digits, so columns line up.
pub fn addr(a: u64) -> String {
    format!("{a:#014x}")
}

/// A byte count in binary units with one decimal (`4.0 KiB`, `1.5 GiB`);
/// counts under 1 KiB are plain (`512 B`).
pub fn size(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut unit = 0;
    let mut scaled = n;
    while scaled >= 1024 * 1024 && unit + 1 < UNITS.len() {
        scaled /= 1024;
        unit += 1;
    }
    // Tenths of the unit, computed in integers so output is exact and stable.
    let div = 1u128 << (10 * (unit + 1));
    let tenths = (u128::from(n) * 10 + div / 2) / div;
    format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[unit])
}

/// A compression ratio `raw / stored` with two decimals (`3.52x`), or `-`.
pub fn ratio(raw: u64, stored: u64) -> String {
    if stored == 0 || raw == 0 {
        return "-".into();
    }
    let hundredths = (u128::from(raw) * 100 + u128::from(stored) / 2) / u128::from(stored);
    format!("{}.{:02}x", hundredths / 100, hundredths % 100)
}

/// The ratio as a number for JSON (`None` when there is no data).
pub fn ratio_f64(raw: u64, stored: u64) -> Option<f64> {
    #[allow(clippy::cast_precision_loss, reason = "a display ratio")]
    (stored > 0 && raw > 0).then(|| ((raw as f64 / stored as f64) * 100.0).round() / 100.0)
}

/// Permissions as `/proc/PID/maps` shows them: `rw-p`, `r-xs`.
pub fn perms(info: &RegionInfo) -> String {
    format!("{}{}", info.prot, if info.shared { 's' } else { 'p' })
}

/// Permissions without the sharing flag.
pub fn prot(p: Prot) -> String {
    p.to_string()
}

/// A Unix time as RFC 3339 in UTC, with nanoseconds when there are any:
/// `2024-05-01T12:00:00Z`, `2024-05-01T12:00:00.250000000Z`.
pub fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (rem / 3600, rem / 60 % 60, rem % 60);
    if nanos == 0 {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
    } else {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{nanos:09}Z")
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    // d is 1..=31 and m is 1..=12 by construction.
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "small by construction"
    )]
    (y + i64::from(m <= 2), m as u32, d as u32)
}

/// Parses a number: decimal, or hex with `0x`; with `size` also a K, M or G
/// suffix (binary units).
///
/// # Errors
/// When the text is not such a number or overflows 64 bits.
pub fn parse_u64(text: &str, size: bool) -> Result<u64, String> {
    let t = text.trim().replace('_', "");
    let (digits, mult) = match t.chars().last() {
        Some(c @ ('k' | 'K' | 'm' | 'M' | 'g' | 'G')) if size && !t.starts_with("0x") => {
            let shift = match c.to_ascii_lowercase() {
                'k' => 10,
                'm' => 20,
                _ => 30,
            };
            (&t[..t.len() - 1], 1u64 << shift)
        }
        _ => (&t[..], 1),
    };
    let v = if let Some(h) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        u64::from_str_radix(h, 16)
    } else {
        digits.parse::<u64>()
    }
    .map_err(|_| format!("{text:?} is not a number (decimal, or hex with 0x)"))?;
    v.checked_mul(mult)
        .ok_or_else(|| format!("{text:?} does not fit in 64 bits"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(4096), "4.0 KiB");
        assert_eq!(size(1536 * 1024), "1.5 MiB");
        assert_eq!(size(1 << 30), "1.0 GiB");
    }

    #[test]
    fn times() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400, 0), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000, 5), "2023-11-14T22:13:20.000000005Z");
        assert_eq!(rfc3339(-1, 0), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64("0x1000", false), Ok(4096));
        assert_eq!(parse_u64("4096", false), Ok(4096));
        assert_eq!(parse_u64("4K", true), Ok(4096));
        assert_eq!(parse_u64("2M", true), Ok(2 << 20));
        assert!(parse_u64("4K", false).is_err());
        assert!(parse_u64("0xfffffffffffffffff", false).is_err());
        assert!(parse_u64("17G", true).is_ok());
        assert!(parse_u64("99999999999999999G", true).is_err());
    }

    #[test]
    fn escapes() {
        assert_eq!(escape(b"[heap]"), "[heap]");
        assert_eq!(escape("/tmp/é ü".as_bytes()), "/tmp/é ü");
        assert_eq!(escape(b"a\x1b[31mred\x1b[0m"), "a\\x1b[31mred\\x1b[0m");
        assert_eq!(escape(b"a\nb\tc\r"), "a\\nb\\tc\\r");
        assert_eq!(escape(b"\x7f\x00"), "\\x7f\\x00");
        assert_eq!(escape(b"bad\xff\xfe"), "bad\\xff\\xfe");
        assert_eq!(escape(b"back\\slash"), "back\\\\slash");
        assert_eq!(escape("\u{202e}txt.exe".as_bytes()), "\\u{202e}txt.exe");
        assert_eq!(escape("\u{9b}".as_bytes()), "\\u{9b}");
        assert_eq!(escape_quoted(b"say \"hi\""), "say \\\"hi\\\"");
        // An escaped name holds no control byte at all.
        let all: Vec<u8> = (0..=255).collect();
        assert!(escape(&all).bytes().all(|b| (0x20..0x7f).contains(&b)));
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(100, 0), "-");
        assert_eq!(ratio(352, 100), "3.52x");
        assert_eq!(ratio(1, 3), "0.33x");
    }
}
