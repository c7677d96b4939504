//! Conversions between JSON ([`serde_json::Value`]) and the protobuf well-known
//! `google.protobuf.Value` / `Struct` used for DPS custom payloads in the gRPC API.
//!
//! Protobuf numbers are `f64`: integers beyond ±2^53 lose precision, exactly as they would
//! in JavaScript. Integral numbers within that range come back from protobuf as JSON integers
//! (`30`, not `30.0`), so a payload survives a JSON → protobuf → JSON round trip unchanged.

use prost_types::{ListValue, Struct, Value, value::Kind};

/// Largest integer an `f64` represents exactly (2^53).
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_992.0;

/// A protobuf value that has no JSON representation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConvertError {
    /// NaN or an infinity: JSON numbers are finite.
    #[error("number is not finite (NaN or infinity) and has no JSON representation")]
    NonFiniteNumber,
}

/// Converts any JSON value into a `google.protobuf.Value`. Never fails.
pub fn json_to_value(json: serde_json::Value) -> Value {
    let kind = match json {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        // `as_f64` only returns None for arbitrary-precision numbers, which we do not enable.
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => Kind::ListValue(ListValue {
            values: items.into_iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(map) => Kind::StructValue(json_object_to_struct(map)),
    };
    Value { kind: Some(kind) }
}

/// Converts a JSON object into a `google.protobuf.Struct`. Never fails.
pub fn json_object_to_struct(map: serde_json::Map<String, serde_json::Value>) -> Struct {
    Struct {
        fields: map
            .into_iter()
            .map(|(k, v)| (k, json_to_value(v)))
            .collect(),
    }
}

/// Converts a `google.protobuf.Value` into JSON. A value without a kind is JSON `null`
/// (that is how protobuf JSON mapping treats it).
pub fn value_to_json(value: Value) -> Result<serde_json::Value, ConvertError> {
    Ok(match value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(b),
        Some(Kind::NumberValue(n)) => number_to_json(n)?,
        Some(Kind::StringValue(s)) => serde_json::Value::String(s),
        Some(Kind::ListValue(list)) => serde_json::Value::Array(
            list.values
                .into_iter()
                .map(value_to_json)
                .collect::<Result<_, _>>()?,
        ),
        Some(Kind::StructValue(s)) => serde_json::Value::Object(struct_to_json_object(s)?),
    })
}

/// Converts a `google.protobuf.Struct` into a JSON object.
pub fn struct_to_json_object(
    s: Struct,
) -> Result<serde_json::Map<String, serde_json::Value>, ConvertError> {
    s.fields
        .into_iter()
        .map(|(k, v)| Ok((k, value_to_json(v)?)))
        .collect()
}

fn number_to_json(n: f64) -> Result<serde_json::Value, ConvertError> {
    if !n.is_finite() {
        return Err(ConvertError::NonFiniteNumber);
    }
    if n.fract() == 0.0 && n.abs() <= MAX_SAFE_INTEGER {
        // Exact: the value is integral and within the range f64 represents exactly.
        #[allow(clippy::cast_possible_truncation)]
        return Ok(serde_json::Value::from(n as i64));
    }
    serde_json::Number::from_f64(n)
        .map(serde_json::Value::Number)
        .ok_or(ConvertError::NonFiniteNumber)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_round_trip_is_lossless_for_typical_payloads() {
        let payload = json!({
            "site": "lab",
            "interval": 30,
            "ratio": 0.25,
            "negative": -7,
            "enabled": true,
            "nothing": null,
            "tags": ["a", "b", {"nested": [1, 2.5]}],
            "empty": {}
        });
        let back = value_to_json(json_to_value(payload.clone())).unwrap();
        assert_eq!(back, payload);
        // Integers stay integers.
        assert!(back["interval"].is_i64());
    }

    #[test]
    fn scalars_round_trip() {
        for v in [json!(null), json!(5), json!("x"), json!([]), json!(false)] {
            assert_eq!(value_to_json(json_to_value(v.clone())).unwrap(), v);
        }
    }

    #[test]
    fn non_finite_numbers_are_rejected() {
        for n in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let v = Value {
                kind: Some(Kind::NumberValue(n)),
            };
            assert_eq!(value_to_json(v), Err(ConvertError::NonFiniteNumber));
        }
        let nested = Value {
            kind: Some(Kind::ListValue(ListValue {
                values: vec![Value {
                    kind: Some(Kind::NumberValue(f64::NAN)),
                }],
            })),
        };
        assert!(value_to_json(nested).is_err());
    }

    #[test]
    fn missing_kind_is_null_and_large_numbers_stay_floats() {
        assert_eq!(
            value_to_json(Value { kind: None }).unwrap(),
            serde_json::Value::Null
        );
        let big = 1e300;
        let v = value_to_json(Value {
            kind: Some(Kind::NumberValue(big)),
        })
        .unwrap();
        assert_eq!(v.as_f64(), Some(big));
    }
}
