//! JSON form of values in the store (`value.json`).
//!
//! Scalars, lists and records map to JSON directly (with a tag where JSON is ambiguous:
//! floats vs ints, tuples vs lists); artifacts record their kind, key, payload and directory —
//! relative (`"."`) when the files live inside the object itself, so the store can be moved.

use super::key::Key;
use crate::diag::OpError;
use crate::value::{Artifact, Kind, Value};
use serde_json::{json, Value as J};
use std::path::Path;
use std::sync::Arc;

pub fn value_to_json(v: &Value, obj_dir: &Path) -> Result<J, OpError> {
    Ok(match v {
        Value::Int(i) => json!({ "int": i }),
        Value::Float(x) => {
            if x.is_finite() {
                json!({ "float": x })
            } else {
                json!({ "float_str": x.to_string() })
            }
        }
        Value::Bool(b) => json!(b),
        Value::Str(s) => json!(s.as_ref()),
        Value::None => J::Null,
        Value::List(xs) => J::Array(
            xs.iter()
                .map(|x| value_to_json(x, obj_dir))
                .collect::<Result<_, _>>()?,
        ),
        Value::Tuple(xs) => {
            json!({ "tuple": xs.iter().map(|x| value_to_json(x, obj_dir)).collect::<Result<Vec<_>, _>>()? })
        }
        Value::Record(r) => {
            let mut m = serde_json::Map::new();
            for (k, x) in r.iter() {
                m.insert(k.clone(), value_to_json(x, obj_dir)?);
            }
            json!({ "record": m })
        }
        Value::Artifact(a) => {
            let dir = match a.dir.strip_prefix(obj_dir) {
                Ok(rel) if rel.as_os_str().is_empty() => ".".to_string(),
                Ok(rel) => format!("./{}", rel.display()),
                Err(_) => a.dir.display().to_string(),
            };
            json!({ "artifact": { "kind": a.kind, "key": a.key.hex(), "dir": dir, "data": a.data } })
        }
        Value::Node(_) | Value::Unknown(_) => {
            return Err(OpError::new(
                "smelt::internal",
                "an unrealised value cannot be stored",
            ))
        }
    })
}

pub fn value_from_json(j: &J, obj_dir: &Path) -> Result<Value, OpError> {
    let bad = || OpError::new("smelt::cache::corrupt", "unreadable value in the store");
    Ok(match j {
        J::Null => Value::None,
        J::Bool(b) => Value::Bool(*b),
        J::String(s) => Value::str(s),
        J::Array(xs) => Value::list(
            xs.iter()
                .map(|x| value_from_json(x, obj_dir))
                .collect::<Result<_, _>>()?,
        ),
        J::Object(m) if m.len() == 1 => {
            let (tag, inner) = m.iter().next().ok_or_else(bad)?;
            match tag.as_str() {
                "int" => Value::Int(inner.as_i64().ok_or_else(bad)?),
                "float" => Value::Float(inner.as_f64().ok_or_else(bad)?),
                "float_str" => Value::Float(
                    inner
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(bad)?,
                ),
                "tuple" => Value::Tuple(Arc::new(
                    inner
                        .as_array()
                        .ok_or_else(bad)?
                        .iter()
                        .map(|x| value_from_json(x, obj_dir))
                        .collect::<Result<_, _>>()?,
                )),
                "record" => {
                    let mut r = crate::value::Record::new();
                    for (k, x) in inner.as_object().ok_or_else(bad)? {
                        r.insert(k.clone(), value_from_json(x, obj_dir)?);
                    }
                    Value::Record(Arc::new(r))
                }
                "artifact" => {
                    let kind: Kind =
                        serde_json::from_value(inner["kind"].clone()).map_err(|_| bad())?;
                    let key = inner["key"]
                        .as_str()
                        .and_then(Key::from_hex)
                        .ok_or_else(bad)?;
                    let dir = inner["dir"].as_str().ok_or_else(bad)?;
                    let dir = match dir.strip_prefix('.') {
                        Some("") => obj_dir.to_path_buf(),
                        Some(rest) if rest.starts_with('/') => obj_dir.join(&rest[1..]),
                        _ => dir.into(),
                    };
                    Value::Artifact(Arc::new(Artifact {
                        kind,
                        dir,
                        key,
                        data: inner["data"].clone(),
                    }))
                }
                _ => return Err(bad()),
            }
        }
        _ => return Err(bad()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_all_shapes() {
        let dir = Path::new("/store/objects/ab/abc");
        let mut rec = crate::value::Record::new();
        rec.insert("acc".to_string(), Value::Float(0.5));
        rec.insert("n".to_string(), Value::Int(3));
        let art = Artifact {
            kind: Kind::Model,
            dir: dir.join("model"),
            key: Key::of_bytes(b"m"),
            data: json!({"a": 1}),
        };
        let v = Value::list(vec![
            Value::Int(1),
            Value::Float(2.0),
            Value::Float(f64::NAN).clone(),
            Value::str("s"),
            Value::None,
            Value::Bool(true),
            Value::Tuple(Arc::new(vec![Value::Int(1), Value::str("x")])),
            Value::Record(Arc::new(rec)),
            Value::Artifact(Arc::new(art)),
        ]);
        let j = value_to_json(&v, dir).unwrap();
        let back = value_from_json(&j, dir).unwrap();
        // NaN != NaN, so compare the rendering.
        assert_eq!(format!("{back:?}"), format!("{v:?}"));
        assert!(j.to_string().contains("\"./model\""));
    }
}
