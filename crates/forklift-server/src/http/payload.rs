//! When two payloads say the same thing, and integers in any spelling.
//!
//! Numbers keep the digits they were sent with (serde_json's `arbitrary_precision`), so a
//! payload can carry integers past 2^64 and decimals past an f64's 17 digits. What a
//! payload may hold (no NUL, numbers finite and at most 100 characters) is the library's
//! one validation, `NewJob::validate`, the same for both stores and every caller.

use serde_json::Value;

/// Whether two payloads are the same JSON value. Numbers compare by value, not by how they
/// are written: PostgreSQL gives back `1e2` as `100` and `-0` as `0`, and a client that
/// sends the same request twice has sent the same payload. Object keys are unordered.
pub fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            Decimal::parse(x.as_str()).same_value(&Decimal::parse(y.as_str()))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// Reads an optional integer field. JSON does not tell `1` from `1.0`, and JSON Schema's
/// `integer` admits both, so an integral number in any spelling is that integer; a
/// fraction, or an integer out of `T`'s range, is refused.
pub fn integral<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64>,
{
    use serde::Deserialize;
    use serde::de::Error;
    let Some(n) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let whole = Decimal::parse(n.as_str())
        .to_i64()
        .ok_or_else(|| D::Error::custom(format!("{n} is not an integer")))?;
    T::try_from(whole)
        .map(Some)
        .map_err(|_| D::Error::custom(format!("{n} is out of range")))
}

/// A JSON number's text taken apart: `0.<significant> × 10^point`, and the digits after
/// the decimal point as written (what PostgreSQL keeps as the number's scale).
#[derive(Debug, PartialEq)]
struct Decimal {
    negative: bool,
    /// Without leading or trailing zeros; empty for zero.
    significant: String,
    point: i64,
    scale: i64,
}

impl Decimal {
    /// `text` is a number serde_json accepted: `-?int(.frac)?([eE][+-]?exp)?`.
    fn parse(text: &str) -> Decimal {
        let (negative, rest) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (mantissa, exponent) = match rest.split_once(['e', 'E']) {
            // An exponent too long for an i64 is far past any limit; saturate.
            Some((m, e)) => (
                m,
                e.parse::<i64>().unwrap_or(if e.starts_with('-') {
                    i64::MIN / 2
                } else {
                    i64::MAX / 2
                }),
            ),
            None => (rest, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let digits = format!("{int}{frac}");
        let leading = digits.len() - digits.trim_start_matches('0').len();
        Decimal {
            negative,
            significant: digits.trim_matches('0').to_string(),
            point: (int.len() as i64 - leading as i64).saturating_add(exponent),
            scale: (frac.len() as i64).saturating_sub(exponent).max(0),
        }
    }

    /// The integer this number is, if it is one that fits an i64: `3`, `3.0` and `30e-1`
    /// all are 3.
    fn to_i64(&self) -> Option<i64> {
        if self.significant.is_empty() {
            return Some(0);
        }
        let len = self.significant.len() as i64;
        if self.point < len || self.point > 19 {
            return None; // a fraction, or more digits than any i64
        }
        let zeros = "0".repeat((self.point - len) as usize);
        let sign = if self.negative { "-" } else { "" };
        format!("{sign}{}{zeros}", self.significant).parse().ok()
    }

    fn same_value(&self, other: &Decimal) -> bool {
        if self.significant.is_empty() || other.significant.is_empty() {
            return self.significant == other.significant; // 0 and -0 are one number
        }
        (self.negative, &self.significant, self.point)
            == (other.negative, &other.significant, other.point)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parsed(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn numbers_keep_their_digits() {
        let big = parsed(r#"{"n": 123456789012345678901234567890, "d": 0.1000000000000000000001}"#);
        assert_eq!(
            big.to_string(),
            r#"{"d":0.1000000000000000000001,"n":123456789012345678901234567890}"#
        );
    }

    #[test]
    fn numbers_compare_by_value_not_by_spelling() {
        for (a, b) in [
            ("1e2", "100"),
            ("1.50", "1.5"),
            ("-0", "0"),
            ("0.0", "0"),
            ("12.5e-1", "1.25"),
            ("100E-2", "1"),
        ] {
            assert!(same(&parsed(a), &parsed(b)), "{a} = {b}");
        }
        for (a, b) in [
            (
                "123456789012345678901234567890",
                "123456789012345678901234567891",
            ),
            ("1", "-1"),
            ("10", "1"),
            ("0.1", "0.01"),
        ] {
            assert!(!same(&parsed(a), &parsed(b)), "{a} != {b}");
        }
    }

    #[test]
    fn objects_compare_without_key_order_and_arrays_with_it() {
        assert!(same(
            &parsed(r#"{"a": 1, "b": [1, 2]}"#),
            &parsed(r#"{"b": [1.0, 2], "a": 1}"#)
        ));
        assert!(!same(&json!([1, 2]), &json!([2, 1])));
        assert!(!same(&json!({"a": 1}), &json!({"a": 1, "b": null})));
        assert!(!same(&json!({"a": "1"}), &json!({"a": 1})));
    }

    #[test]
    fn integral_numbers_in_any_spelling_are_integers() {
        #[derive(serde::Deserialize)]
        struct Field {
            #[serde(default, deserialize_with = "integral")]
            n: Option<i16>,
        }
        let read = |text: &str| serde_json::from_str::<Field>(text).map(|f| f.n);
        for (text, n) in [
            ("3", 3),
            ("3.0", 3),
            ("30e-1", 3),
            ("-2", -2),
            ("0.0", 0),
            ("1E2", 100),
            ("-0", 0),
        ] {
            assert_eq!(
                read(&format!(r#"{{"n": {text}}}"#)).unwrap(),
                Some(n),
                "{text}"
            );
        }
        assert_eq!(read(r#"{"n": null}"#).unwrap(), None);
        assert_eq!(read("{}").unwrap(), None);
        for bad in ["3.5", "1e-1", "40000", "1e400", "\"3\"", "true"] {
            assert!(read(&format!(r#"{{"n": {bad}}}"#)).is_err(), "{bad}");
        }
    }
}
