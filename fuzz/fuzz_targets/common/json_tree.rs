//! JSON values that keep each number's text, for comparing FHIR JSON whose decimals must keep
//! their digits (`1.10` is not `1.1`), and that refuse duplicate keys.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Json {
    Null,
    Bool(bool),
    /// The number as written.
    Number(String),
    String(String),
    Array(Vec<Json>),
    Object(BTreeMap<String, Json>),
}

/// The members of an object in order, duplicates kept.
struct Members(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Members, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    members.push(entry);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(V)
    }
}

/// One JSON text (RFC 8259, serde_json's reading); Err for invalid JSON or a key twice in an
/// object.
pub fn parse(bytes: &[u8]) -> Result<Json, String> {
    let raw: Box<RawValue> = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    tree(&raw)
}

fn tree(raw: &RawValue) -> Result<Json, String> {
    let text = raw.get();
    let error = |e: serde_json::Error| e.to_string();
    Ok(match text.as_bytes()[0] {
        b'{' => {
            let Members(members) = serde_json::from_str(text).map_err(error)?;
            let mut map = BTreeMap::new();
            for (key, value) in members {
                let value = tree(&value)?;
                if map.insert(key.clone(), value).is_some() {
                    return Err(format!("duplicate key {key:?}"));
                }
            }
            Json::Object(map)
        }
        b'[' => {
            let items: Vec<Box<RawValue>> = serde_json::from_str(text).map_err(error)?;
            Json::Array(items.iter().map(|i| tree(i)).collect::<Result<_, _>>()?)
        }
        b'"' => Json::String(serde_json::from_str(text).map_err(error)?),
        b't' => Json::Bool(true),
        b'f' => Json::Bool(false),
        b'n' => Json::Null,
        _ => Json::Number(text.to_owned()),
    })
}

/// `json` with every narrative `div` string replaced by the same placeholder.
pub fn without_divs(json: Json) -> Json {
    match json {
        Json::Object(map) => Json::Object(
            map.into_iter()
                .map(|(key, value)| match (key.as_str(), value) {
                    ("div", Json::String(_)) => (key, Json::String("<div/>".into())),
                    (_, value) => (key, without_divs(value)),
                })
                .collect(),
        ),
        Json::Array(items) => Json::Array(items.into_iter().map(without_divs).collect()),
        other => other,
    }
}

/// A decimal's sign, digits (no leading zeros) and the power of ten of its last digit: the
/// same for `1.50E1` and `15.0`, different for `15` and `15.0`.
pub fn decimal_digits(text: &str) -> (bool, String, i64) {
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(at) => (
            &text[..at],
            text[at + 1..].parse::<i64>().unwrap_or(i64::MAX / 2),
        ),
        None => (text, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits: String = format!("{whole}{fraction}")
        .trim_start_matches('0')
        .to_owned();
    (negative, digits, exponent - fraction.len() as i64)
}

impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Json::Null => f.write_str("null"),
            Json::Bool(b) => write!(f, "{b}"),
            Json::Number(n) => f.write_str(n),
            Json::String(s) => write!(f, "{}", serde_json::Value::String(s.clone())),
            Json::Array(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            Json::Object(map) => {
                f.write_str("{")?;
                for (i, (key, value)) in map.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{}:{value}", serde_json::Value::String(key.clone()))?;
                }
                f.write_str("}")
            }
        }
    }
}
