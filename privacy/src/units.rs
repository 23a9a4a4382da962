//! Quantities written for humans: byte sizes, rates and the exposure budget.
//!
//! Each accepts either a plain TOML number or a string with a unit, so that
//! an operator can write `max_size = "10 GiB"` instead of counting digits,
//! and each prints back in the same form, so that `policy show` output
//! parses to the same policy.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Units accepted after a number, with their size in bytes. Binary units
/// come first because [`ByteSize`]'s `Display` prefers them.
const UNITS: [(&str, u64); 9] = [
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("TB", 1_000_000_000_000),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("kB", 1_000),
    ("B", 1),
];

/// Parse `"10 GiB"`, `"1.5 MiB"`, `"4096"` or `"500MB"` into bytes.
///
/// Fractions are allowed because "1.5 GiB" is how people talk; the result is
/// rounded down to a whole byte.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let unit = unit.trim();
    let number = number.replace('_', "");
    let (whole, frac) = number.split_once('.').unwrap_or((&number, ""));
    if whole.is_empty() || frac.contains('.') || (number.contains('.') && frac.is_empty()) {
        return Err(format!(
            "`{s}` is not a size: expected a number and a unit, like \"10 GiB\""
        ));
    }
    let multiplier = if unit.is_empty() {
        1
    } else {
        // Case-insensitive: "kb", "KB" and "kB" all mean 1000 bytes.
        UNITS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(unit))
            .map(|(_, m)| *m)
            .ok_or_else(|| {
                format!(
                    "unknown unit `{unit}` in `{s}`: expected one of B, KiB, MiB, GiB, TiB, kB, MB, GB, TB"
                )
            })?
    };
    let overflow = || format!("`{s}` is too large");
    let whole: u128 = whole.parse().map_err(|_| overflow())?;
    let mut total = whole
        .checked_mul(u128::from(multiplier))
        .ok_or_else(overflow)?;
    if !frac.is_empty() {
        // Only as many fraction digits as can matter: beyond 20 digits the
        // contribution is below one byte even for TiB.
        let frac = &frac[..frac.len().min(20)];
        let scale = 10u128.pow(u32::try_from(frac.len()).map_err(|_| overflow())?);
        let digits: u128 = frac.parse().map_err(|_| overflow())?;
        total += digits * u128::from(multiplier) / scale;
    }
    u64::try_from(total).map_err(|_| overflow())
}

/// Print bytes in the largest binary unit that divides them exactly.
fn format_bytes(bytes: u64) -> String {
    for (name, size) in UNITS.iter().filter(|(n, _)| n.ends_with("iB")) {
        if bytes >= *size && bytes.is_multiple_of(*size) {
            return format!("{} {name}", bytes / size);
        }
    }
    format!("{bytes} B")
}

/// A number of bytes, written as an integer or as a string with a unit
/// (`"10 GiB"`, `"500 MiB"`, `"1.5 GB"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// `n` kibibytes.
    pub const fn kib(n: u64) -> ByteSize {
        ByteSize(n << 10)
    }
    /// `n` mebibytes.
    pub const fn mib(n: u64) -> ByteSize {
        ByteSize(n << 20)
    }
    /// `n` gibibytes.
    pub const fn gib(n: u64) -> ByteSize {
        ByteSize(n << 30)
    }
    /// The number of bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_bytes(self.0))
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_bytes(s).map(ByteSize)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// Visits an integer or a unit string, for both sizes and rates.
struct BytesVisitor {
    /// Whether a trailing `/s` is accepted (rates).
    per_second: bool,
}

impl Visitor<'_> for BytesVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.per_second {
            f.write_str("bytes per second as an integer or a string like \"2 MiB/s\"")
        } else {
            f.write_str("a size in bytes as an integer or a string like \"10 GiB\"")
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        let trimmed = v.trim();
        let body = if self.per_second {
            trimmed.strip_suffix("/s").unwrap_or(trimmed)
        } else {
            trimmed
        };
        parse_bytes(body).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(BytesVisitor { per_second: false })
            .map(ByteSize)
    }
}

/// A rate in bytes per second, written as an integer or as a string like
/// `"2 MiB/s"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rate(pub u64);

impl Rate {
    /// `n` mebibytes per second.
    pub const fn mib_per_sec(n: u64) -> Rate {
        Rate(n << 20)
    }
    /// Bytes per second.
    pub const fn bytes_per_sec(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s", format_bytes(self.0))
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(BytesVisitor { per_second: true })
            .map(Rate)
    }
}

/// How many bits about its holdings a serving node may reveal per epoch
/// before it stops announcing (see the audit crate).
///
/// Written as a non-negative number of bits, or `"unlimited"`. Ordered
/// from tightest to loosest: `Bits(0.0) < Bits(4.0) < Unlimited`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ExposureBudget {
    /// No limit: the node announces whatever it holds (level `open`).
    Unlimited,
    /// At most this many bits.
    Bits(f64),
}

impl ExposureBudget {
    /// The word that stands for [`ExposureBudget::Unlimited`] in the policy.
    pub const UNLIMITED: &'static str = "unlimited";

    /// Whether `bits` of exposure are within this budget.
    pub fn allows(self, bits: f64) -> bool {
        match self {
            ExposureBudget::Unlimited => true,
            ExposureBudget::Bits(budget) => bits <= budget,
        }
    }
}

impl PartialOrd for ExposureBudget {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        use std::cmp::Ordering;
        match (self, other) {
            (ExposureBudget::Unlimited, ExposureBudget::Unlimited) => Some(Ordering::Equal),
            (ExposureBudget::Unlimited, ExposureBudget::Bits(_)) => Some(Ordering::Greater),
            (ExposureBudget::Bits(_), ExposureBudget::Unlimited) => Some(Ordering::Less),
            (ExposureBudget::Bits(a), ExposureBudget::Bits(b)) => a.partial_cmp(b),
        }
    }
}

impl fmt::Display for ExposureBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExposureBudget::Unlimited => f.write_str(Self::UNLIMITED),
            ExposureBudget::Bits(b) => write!(f, "{b} bits"),
        }
    }
}

impl Serialize for ExposureBudget {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ExposureBudget::Unlimited => s.serialize_str(Self::UNLIMITED),
            ExposureBudget::Bits(b) => s.serialize_f64(*b),
        }
    }
}

impl<'de> Deserialize<'de> for ExposureBudget {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct BudgetVisitor;
        impl Visitor<'_> for BudgetVisitor {
            type Value = ExposureBudget;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of bits or \"unlimited\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ExposureBudget, E> {
                // Bits are small numbers; the cast is exact far beyond any
                // meaningful budget, and range is checked by validation.
                Ok(ExposureBudget::Bits(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ExposureBudget, E> {
                Ok(ExposureBudget::Bits(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ExposureBudget, E> {
                Ok(ExposureBudget::Bits(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ExposureBudget, E> {
                if v == ExposureBudget::UNLIMITED {
                    Ok(ExposureBudget::Unlimited)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(v), &self))
                }
            }
        }
        d.deserialize_any(BudgetVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!("10 GiB".parse(), Ok(ByteSize::gib(10)));
        assert_eq!("500MiB".parse(), Ok(ByteSize::mib(500)));
        assert_eq!("4096".parse(), Ok(ByteSize(4096)));
        assert_eq!("1.5 KiB".parse(), Ok(ByteSize(1536)));
        assert_eq!("2 GB".parse(), Ok(ByteSize(2_000_000_000)));
        assert_eq!("3 kB".parse(), Ok(ByteSize(3_000)));
        assert_eq!("3 KB".parse(), Ok(ByteSize(3_000)));
        assert_eq!("1_000 B".parse(), Ok(ByteSize(1_000)));
        assert_eq!("7 gib".parse(), Ok(ByteSize::gib(7)));
    }

    #[test]
    fn bad_sizes_are_explained() {
        let unit = "10 GiBs".parse::<ByteSize>().expect_err("bad unit");
        assert!(unit.contains("unknown unit `GiBs`"), "{unit}");
        for bad in ["", "GiB", "1.2.3 MiB", "1. MiB", "-1 MiB"] {
            let err = bad.parse::<ByteSize>().expect_err(bad);
            assert!(err.contains("not a size"), "{bad}: {err}");
        }
        let big = "20000000 TiB".parse::<ByteSize>().expect_err("overflow");
        assert!(big.contains("too large"), "{big}");
    }

    #[test]
    fn sizes_and_rates_print_in_the_largest_exact_unit() {
        assert_eq!(ByteSize::gib(10).to_string(), "10 GiB");
        assert_eq!(ByteSize(1536).to_string(), "1536 B");
        assert_eq!(ByteSize(0).to_string(), "0 B");
        assert_eq!(Rate::mib_per_sec(2).to_string(), "2 MiB/s");
        for n in [0, 1, 1023, 1024, 5 << 20, (3 << 30) + 1] {
            let printed = ByteSize(n).to_string();
            assert_eq!(printed.parse(), Ok(ByteSize(n)), "{printed}");
        }
    }

    #[test]
    fn budget_accepts_numbers_and_unlimited() {
        assert!(ExposureBudget::Unlimited.allows(1e9));
        assert!(ExposureBudget::Bits(4.0).allows(4.0));
        assert!(!ExposureBudget::Bits(4.0).allows(4.5));
        assert!(ExposureBudget::Bits(4.0) < ExposureBudget::Bits(12.0));
        assert!(ExposureBudget::Bits(1e9) < ExposureBudget::Unlimited);
        assert!(ExposureBudget::Unlimited > ExposureBudget::Bits(0.0));
    }
}
