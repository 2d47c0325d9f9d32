//! Kubernetes resource quantities (`1Gi`, `512Mi`, `1G`, `500m`, `1e9`) parsed with exact
//! integer arithmetic, our own implementation of the grammar in k8s.io/apimachinery's
//! `resource.Quantity`. Pure; errors are values.

use std::fmt;

/// A string that is not a Kubernetes quantity, or one out of range for its use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not the quantity grammar: `<sign><digits>[.<digits>]<suffix>`.
    #[error("{0:?} is not a quantity")]
    Syntax(String),
    /// Larger than 2^63-1 (the Kubernetes limit).
    #[error("{0:?} is too large")]
    TooLarge(String),
    /// A negative quantity where a size is needed.
    #[error("{0:?} is negative")]
    Negative(String),
}

/// A parsed quantity held exactly in thousandths of the unit (so `500m` is 500 and `1` is
/// 1000).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ParsedQuantity {
    milli: i128,
}

/// Kubernetes caps quantities at 2^63-1 units.
const MAX_UNITS: i128 = i64::MAX as i128;

impl ParsedQuantity {
    /// The value in thousandths of the unit.
    pub fn milli(self) -> i128 {
        self.milli
    }

    /// The value in whole units, rounded up (as Kubernetes' `Value()` does).
    pub fn ceil_units(self) -> i128 {
        self.milli.div_euclid(1000) + i128::from(self.milli.rem_euclid(1000) != 0)
    }
}

impl fmt::Display for ParsedQuantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.milli % 1000 == 0 {
            write!(f, "{}", self.milli / 1000)
        } else {
            write!(f, "{}m", self.milli)
        }
    }
}

/// Parse a quantity string exactly. Sub-milli precision is rounded up, as Kubernetes does.
pub fn parse_quantity(text: &str) -> Result<ParsedQuantity, QuantityError> {
    let syntax = || QuantityError::Syntax(text.to_string());
    let too_large = || QuantityError::TooLarge(text.to_string());
    let s = text.trim();
    if s.is_empty() || s.len() != text.len() {
        return Err(syntax());
    }
    let (negative, s) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    let (whole, frac) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if (whole.is_empty() && frac.is_empty()) || frac.contains('.') {
        return Err(syntax());
    }
    // The number as an integer mantissa and a count of decimal places.
    let mut mantissa: i128 = 0;
    for d in whole.bytes().chain(frac.bytes()) {
        mantissa = mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add(i128::from(d - b'0')))
            .ok_or_else(too_large)?;
    }
    let places = i32::try_from(frac.len()).map_err(|_| syntax())?;
    let scale = suffix_scale(suffix).ok_or_else(syntax)?;
    // milli = mantissa * 10^(-places) * scale * 1000
    let (num, mut exp10) = match scale {
        Scale::Binary(mult) => (mantissa.checked_mul(mult).ok_or_else(too_large)?, 0),
        Scale::Decimal(e) => (mantissa, e),
    };
    exp10 = exp10
        .checked_add(3)
        .and_then(|e| e.checked_sub(places))
        .ok_or_else(too_large)?;
    let milli = scale_pow10(num, exp10).ok_or_else(too_large)?;
    if milli / 1000 > MAX_UNITS {
        return Err(too_large());
    }
    Ok(ParsedQuantity {
        milli: if negative { -milli } else { milli },
    })
}

/// A quantity as a whole number of bytes (rounded up); negative quantities are errors.
pub fn quantity_bytes(text: &str) -> Result<u64, QuantityError> {
    let q = parse_quantity(text)?;
    if q.milli < 0 {
        return Err(QuantityError::Negative(text.to_string()));
    }
    u64::try_from(q.ceil_units()).map_err(|_| QuantityError::TooLarge(text.to_string()))
}

enum Scale {
    Binary(i128),
    Decimal(i32),
}

fn suffix_scale(suffix: &str) -> Option<Scale> {
    let binary = |p: u32| Some(Scale::Binary(1i128 << (10 * p)));
    match suffix {
        "Ki" => binary(1),
        "Mi" => binary(2),
        "Gi" => binary(3),
        "Ti" => binary(4),
        "Pi" => binary(5),
        "Ei" => binary(6),
        "n" => Some(Scale::Decimal(-9)),
        "u" => Some(Scale::Decimal(-6)),
        "m" => Some(Scale::Decimal(-3)),
        "" => Some(Scale::Decimal(0)),
        "k" => Some(Scale::Decimal(3)),
        "M" => Some(Scale::Decimal(6)),
        "G" => Some(Scale::Decimal(9)),
        "T" => Some(Scale::Decimal(12)),
        "P" => Some(Scale::Decimal(15)),
        "E" => Some(Scale::Decimal(18)),
        _ => {
            let exp = suffix.strip_prefix(['e', 'E'])?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            exp.parse::<i32>().ok().map(Scale::Decimal)
        }
    }
}

/// `num * 10^exp`, rounding a fractional result up; `None` on overflow.
fn scale_pow10(num: i128, exp: i32) -> Option<i128> {
    if exp >= 0 {
        if num == 0 {
            return Some(0);
        }
        let p = 10i128.checked_pow(u32::try_from(exp).ok()?)?;
        num.checked_mul(p)
    } else {
        let Some(p) = u32::try_from(-exp).ok().and_then(|e| 10i128.checked_pow(e)) else {
            // Dividing by more than 10^38: anything non-zero rounds up to one.
            return Some(i128::from(num != 0));
        };
        Some(num / p + i128::from(num % p != 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_of_common_sizes() {
        let cases = [
            ("1Gi", 1u64 << 30),
            ("512Mi", 512 << 20),
            ("1G", 1_000_000_000),
            ("1Ki", 1024),
            ("1k", 1000),
            ("100", 100),
            ("1.5Gi", 3 << 29),
            ("0.5Ki", 512),
            ("1e3", 1000),
            ("1E6", 1_000_000),
            ("2e+2", 200),
            ("+3M", 3_000_000),
            ("0", 0),
            ("1500m", 2),
            (".5k", 500),
            ("5.", 5),
        ];
        for (text, want) in cases {
            assert_eq!(quantity_bytes(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn milli_units_for_cpu() {
        assert_eq!(parse_quantity("500m").unwrap().milli(), 500);
        assert_eq!(parse_quantity("2").unwrap().milli(), 2000);
        assert_eq!(parse_quantity("0.1").unwrap().milli(), 100);
        assert_eq!(parse_quantity("1n").unwrap().milli(), 1, "rounded up");
        assert_eq!(parse_quantity("-250m").unwrap().milli(), -250);
        assert_eq!(parse_quantity("1e-3").unwrap().milli(), 1);
    }

    #[test]
    fn rejects_what_is_not_a_quantity() {
        for text in [
            "", "lots", "1 Gi", " 1Gi", "1GB", "1gi", "Gi", ".", "1.2.3", "--1", "1e", "1e+",
            "1Gi ", "0x10", "1ki",
        ] {
            assert_eq!(
                parse_quantity(text),
                Err(QuantityError::Syntax(text.to_string())),
                "{text:?}"
            );
        }
        assert_eq!(
            QuantityError::Syntax("lots".into()).to_string(),
            r#""lots" is not a quantity"#
        );
    }

    #[test]
    fn range_errors() {
        assert!(matches!(
            quantity_bytes("-1Gi"),
            Err(QuantityError::Negative(_))
        ));
        assert!(matches!(
            quantity_bytes("9Ei"),
            Err(QuantityError::TooLarge(_))
        ));
        assert!(matches!(
            parse_quantity("1e40"),
            Err(QuantityError::TooLarge(_))
        ));
        assert_eq!(quantity_bytes("7Ei"), Ok(7 << 60));
    }
}
