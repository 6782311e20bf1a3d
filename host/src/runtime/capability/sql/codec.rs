//! Values between a plugin and PostgreSQL: parameters go in text form, so
//! that the server parses them as whatever type the statement needs; results
//! come back in binary form and are decoded here, exactly.

use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use postgres_types::{Format, FromSql, IsNull, ToSql, Type, to_sql_checked};

use super::{SqlFailure, SqlValue};
use crate::db::sqlstate::{HOST_ERROR, REFUSED};

/// A parameter in PostgreSQL's text form, so that the server parses it as
/// whatever type the statement needs (uuid, numeric, timestamptz, ...).
#[derive(Debug)]
pub(super) struct TextParam(Option<String>);

impl From<&SqlValue> for TextParam {
    fn from(v: &SqlValue) -> TextParam {
        TextParam(match v {
            SqlValue::Null => None,
            SqlValue::Boolean(b) => Some(if *b { "true" } else { "false" }.into()),
            SqlValue::Int(i) => Some(i.to_string()),
            SqlValue::Float(f) if f.is_nan() => Some("NaN".into()),
            SqlValue::Float(f) if f.is_infinite() => {
                Some(if *f > 0.0 { "Infinity" } else { "-Infinity" }.into())
            }
            SqlValue::Float(f) => Some(f.to_string()),
            SqlValue::Text(s) | SqlValue::Json(s) => Some(s.clone()),
            SqlValue::Bytes(b) => {
                let mut s = String::with_capacity(2 + b.len() * 2);
                s.push_str("\\x");
                for byte in b {
                    s.push_str(&format!("{byte:02x}"));
                }
                Some(s)
            }
        })
    }
}

impl ToSql for TextParam {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match &self.0 {
            None => Ok(IsNull::Yes),
            Some(text) => {
                out.extend_from_slice(text.as_bytes());
                Ok(IsNull::No)
            }
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        Format::Text
    }

    to_sql_checked!();
}

/// A result column's binary value, decoded by `decode`.
pub(super) struct Raw<'a>(&'a [u8]);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(
        _ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw))
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }
}

pub(super) fn decode(column: &str, ty: &Type, raw: Option<Raw>) -> Result<SqlValue, SqlFailure> {
    let Some(Raw(b)) = raw else {
        return Ok(SqlValue::Null);
    };
    let bad = || SqlFailure {
        sqlstate: HOST_ERROR.code().into(),
        message: format!("column `{column}`: malformed {ty} value"),
    };
    let be = |n: usize| -> Result<&[u8], SqlFailure> { b.get(..n).ok_or_else(bad) };
    Ok(match *ty {
        Type::BOOL => SqlValue::Boolean(be(1)?[0] != 0),
        Type::INT2 => SqlValue::Int(i16::from_be_bytes(be(2)?.try_into().unwrap()).into()),
        Type::INT4 => SqlValue::Int(i32::from_be_bytes(be(4)?.try_into().unwrap()).into()),
        Type::OID => SqlValue::Int(u32::from_be_bytes(be(4)?.try_into().unwrap()).into()),
        Type::INT8 => SqlValue::Int(i64::from_be_bytes(be(8)?.try_into().unwrap())),
        Type::FLOAT4 => SqlValue::Float(f32::from_be_bytes(be(4)?.try_into().unwrap()).into()),
        Type::FLOAT8 => SqlValue::Float(f64::from_be_bytes(be(8)?.try_into().unwrap())),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
            SqlValue::Text(String::from_utf8(b.to_vec()).map_err(|_| bad())?)
        }
        Type::JSON => SqlValue::Json(String::from_utf8(b.to_vec()).map_err(|_| bad())?),
        // jsonb's binary form is a version byte, then the text.
        Type::JSONB => SqlValue::Json(
            String::from_utf8(b.get(1..).ok_or_else(bad)?.to_vec()).map_err(|_| bad())?,
        ),
        Type::BYTEA => SqlValue::Bytes(b.to_vec()),
        Type::UUID => SqlValue::Text(
            uuid::Uuid::from_slice(be(16)?)
                .map_err(|_| bad())?
                .to_string(),
        ),
        Type::NUMERIC => SqlValue::Text(numeric_text(b).ok_or_else(bad)?),
        Type::TIMESTAMPTZ | Type::TIMESTAMP => {
            let micros = i64::from_be_bytes(be(8)?.try_into().unwrap());
            let text = timestamp_text(micros).ok_or_else(|| unsupported(column, ty))?;
            SqlValue::Text(if *ty == Type::TIMESTAMP {
                text.trim_end_matches('Z').to_owned()
            } else {
                text
            })
        }
        _ => return Err(unsupported(column, ty)),
    })
}

fn unsupported(column: &str, ty: &Type) -> SqlFailure {
    SqlFailure {
        sqlstate: REFUSED.code().into(),
        message: format!(
            "column `{column}` has type {ty}, which the sql capability does not return; cast it to text in the query (`{column}::text`)"
        ),
    }
}

/// PostgreSQL's binary numeric as decimal text (exact).
fn numeric_text(b: &[u8]) -> Option<String> {
    let word =
        |i: usize| -> Option<u16> { Some(u16::from_be_bytes(b.get(i..i + 2)?.try_into().ok()?)) };
    let ndigits = word(0)? as usize;
    let weight = word(2)? as i16 as i32;
    let sign = word(4)?;
    let dscale = word(6)? as usize;
    match sign {
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        _ => {}
    }
    let digits: Vec<u16> = (0..ndigits)
        .map(|i| word(8 + 2 * i))
        .collect::<Option<_>>()?;
    let digit = |i: i32| -> u16 {
        if i < 0 {
            0
        } else {
            digits.get(i as usize).copied().unwrap_or(0)
        }
    };
    let mut text = String::new();
    if sign == 0x4000 {
        text.push('-');
    }
    if weight < 0 {
        text.push('0');
    } else {
        for i in 0..=weight {
            if i == 0 {
                text.push_str(&digit(i).to_string());
            } else {
                text.push_str(&format!("{:04}", digit(i)));
            }
        }
    }
    if dscale > 0 {
        let mut fraction = String::new();
        let mut i = weight + 1;
        while fraction.len() < dscale {
            fraction.push_str(&format!("{:04}", digit(i)));
            i += 1;
        }
        fraction.truncate(dscale);
        text.push('.');
        text.push_str(&fraction);
    }
    Some(text)
}

/// Microseconds since 2000-01-01 UTC as RFC 3339; `None` before 1970.
fn timestamp_text(micros: i64) -> Option<String> {
    match micros {
        i64::MAX => return Some("infinity".into()),
        i64::MIN => return Some("-infinity".into()),
        _ => {}
    }
    const Y2K_UNIX_MICROS: i64 = 946_684_800_000_000;
    let unix = micros.checked_add(Y2K_UNIX_MICROS)?;
    if unix < 0 {
        return None;
    }
    let at = SystemTime::UNIX_EPOCH + Duration::from_micros(unix as u64);
    Some(humantime::format_rfc3339_micros(at).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_decodes_exactly() {
        // 12345.678: weight 1, digits [1, 2345, 6780], dscale 3
        let mut b = Vec::new();
        for w in [3u16, 1, 0, 3, 1, 2345, 6780] {
            b.extend_from_slice(&w.to_be_bytes());
        }
        assert_eq!(numeric_text(&b).unwrap(), "12345.678");
        // -0.00001: weight -2, digits [1000], dscale 5
        let mut b = Vec::new();
        for w in [1u16, (-2i16) as u16, 0x4000, 5, 1000] {
            b.extend_from_slice(&w.to_be_bytes());
        }
        assert_eq!(numeric_text(&b).unwrap(), "-0.00001");
    }
}
