//! Column types that keep what the host renders exactly, for typed rows
//! (`pgevents-host codegen --lang rust` writes structs that use them).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// A PostgreSQL `numeric`, with every digit: the decimal text the host
/// rendered (`12345678901234567890.000001`, or `NaN` / `Infinity`), which
/// an `f64` would round. Deserialize it from an event's row with
/// [`Event::new_row`](crate::Event::new_row) and friends.
///
/// ```
/// use pgevents_plugin_sdk::types::Decimal;
///
/// #[derive(serde::Deserialize)]
/// struct Order {
///     total: Decimal,
/// }
///
/// let order: Order = serde_json::from_str(r#"{"total": 12345678901234567890.000001}"#).unwrap();
/// assert_eq!(order.total.as_str(), "12345678901234567890.000001");
/// ```
///
/// Two `Decimal`s are equal when their text is (`1.0` and `1` are not):
/// compare numbers with a decimal library of your choice on [`Decimal::as_str`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Decimal(String);

impl Decimal {
    /// The decimal text, as PostgreSQL wrote it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The nearest `f64` (digits beyond its precision are lost).
    pub fn to_f64(&self) -> f64 {
        self.0.parse().unwrap_or(f64::NAN)
    }
}

impl std::fmt::Display for Decimal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Decimal {
    type Err = String;

    fn from_str(text: &str) -> Result<Decimal, String> {
        let number = text.strip_prefix('-').unwrap_or(text);
        let digits = number.replacen('.', "", 1);
        let ok = matches!(number, "NaN" | "Infinity")
            || (!digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit())
                && !number.starts_with('.')
                && !number.ends_with('.'));
        if ok {
            Ok(Decimal(text.to_owned()))
        } else {
            Err(format!("`{text}` is not a decimal number"))
        }
    }
}

impl<'de> Deserialize<'de> for Decimal {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
        // A JSON number's own text, through serde_json's raw value; `NaN`
        // and `Infinity` arrive as strings (JSON has no such numbers).
        let raw: Box<RawValue> = Deserialize::deserialize(deserializer)?;
        let text = raw.get().trim();
        let text = match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
            Some(inner) => inner,
            None => text,
        };
        let number = text.to_ascii_lowercase();
        let text = match number.split_once('e') {
            // to_jsonb never writes exponents; a hand-written row might.
            Some(_) => {
                return Err(serde::de::Error::custom(format!(
                    "numeric `{text}`: write it without an exponent"
                )));
            }
            None => text,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Decimal {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.as_str() {
            "NaN" | "Infinity" | "-Infinity" => serializer.serialize_str(&self.0),
            digits => RawValue::from_string(digits.to_owned())
                .map_err(serde::ser::Error::custom)?
                .serialize(serializer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decimal_keeps_every_digit_both_ways() {
        let d: Decimal = serde_json::from_str("-123456789012345678901234567890.123456789").unwrap();
        assert_eq!(d.as_str(), "-123456789012345678901234567890.123456789");
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            "-123456789012345678901234567890.123456789"
        );
        let nan: Decimal = serde_json::from_str("\"NaN\"").unwrap();
        assert_eq!(serde_json::to_string(&nan).unwrap(), "\"NaN\"");
        assert!(serde_json::from_str::<Decimal>("\"abc\"").is_err());
        assert!(serde_json::from_str::<Decimal>("true").is_err());
        assert!(serde_json::from_str::<Decimal>("1e5").is_err());
    }
}
