//! Content keys: canonical, type-tagged encoding of values hashed with blake3.
//!
//! A node key is `blake3(CACHE_SCHEMA, op id, op version, [(param, canon(value))], dtype, seed)`.
//! The encoding writes a tag byte before every value (sisyphus-style), floats as their IEEE
//! bits (`1e-12` and `1.0e-12` agree), records in sorted key order, and a not-yet-realised
//! node by its own key — so keys are computable before anything runs and never depend on
//! source text, variable names or comments.

use crate::value::Value;
use std::fmt;

/// Bump when the key encoding changes; part of every key.
pub const CACHE_SCHEMA: &str = "smelt-cache-v1/blake3";

/// A 32-byte content key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub [u8; 32]);

impl Key {
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// First 10 hex digits, for display.
    pub fn short(&self) -> String {
        self.hex()[..10].to_string()
    }

    pub fn from_hex(s: &str) -> Option<Key> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
            let h = std::str::from_utf8(chunk).ok()?;
            out[i] = u8::from_str_radix(h, 16).ok()?;
        }
        Some(Key(out))
    }

    /// Hash arbitrary bytes (file contents, seeds).
    pub fn of_bytes(bytes: &[u8]) -> Key {
        Key(*blake3::hash(bytes).as_bytes())
    }

    /// A 64-bit seed derived from this key and the experiment seed.
    pub fn derive_seed(&self, experiment_seed: u64) -> u64 {
        let mut h = blake3::Hasher::new();
        h.update(b"seed");
        h.update(&self.0);
        h.update(&experiment_seed.to_le_bytes());
        let out = h.finalize();
        u64::from_le_bytes(out.as_bytes()[..8].try_into().expect("8 bytes"))
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.short())
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.hex())
    }
}

/// Incremental canonical encoder.
pub struct KeyBuilder {
    h: blake3::Hasher,
}

impl Default for KeyBuilder {
    fn default() -> Self {
        KeyBuilder::new()
    }
}

impl KeyBuilder {
    pub fn new() -> KeyBuilder {
        let mut h = blake3::Hasher::new();
        h.update(CACHE_SCHEMA.as_bytes());
        KeyBuilder { h }
    }

    fn tag(&mut self, t: u8) -> &mut Self {
        self.h.update(&[t]);
        self
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.tag(b's');
        self.h.update(&(s.len() as u64).to_le_bytes());
        self.h.update(s.as_bytes());
        self
    }

    pub fn u64(&mut self, x: u64) -> &mut Self {
        self.tag(b'u');
        self.h.update(&x.to_le_bytes());
        self
    }

    pub fn key(&mut self, k: &Key) -> &mut Self {
        self.tag(b'k');
        self.h.update(&k.0);
        self
    }

    /// Encode a value canonically. Artifacts and nodes are encoded by their content key.
    pub fn value(&mut self, v: &Value) -> &mut Self {
        match v {
            Value::Int(i) => {
                self.tag(b'i');
                self.h.update(&i.to_le_bytes());
            }
            Value::Float(x) => {
                self.tag(b'f');
                // Normalise -0.0 to 0.0 so equal numbers hash equally.
                let x = if *x == 0.0 { 0.0 } else { *x };
                self.h.update(&x.to_bits().to_le_bytes());
            }
            Value::Bool(b) => {
                self.tag(b'b');
                self.h.update(&[*b as u8]);
            }
            Value::Str(s) => {
                self.str(s);
            }
            Value::None => {
                self.tag(b'n');
            }
            Value::List(xs) | Value::Tuple(xs) => {
                self.tag(if matches!(v, Value::List(_)) {
                    b'l'
                } else {
                    b't'
                });
                self.h.update(&(xs.len() as u64).to_le_bytes());
                for x in xs.iter() {
                    self.value(x);
                }
            }
            Value::Record(r) => {
                self.tag(b'r');
                self.h.update(&(r.len() as u64).to_le_bytes());
                let mut fields: Vec<_> = r.iter().collect();
                fields.sort_by(|a, b| a.0.cmp(b.0));
                for (k, x) in fields {
                    self.str(k);
                    self.value(x);
                }
            }
            Value::Node(n) => {
                self.key(&n.key);
            }
            Value::Artifact(a) => {
                self.key(&a.key);
            }
            Value::Unknown(_) => {
                // Callers must not key unknown values; encode a poison tag so a mistake can
                // never collide with a real key.
                self.tag(b'?');
            }
        }
        self
    }

    pub fn finish(&self) -> Key {
        Key(*self.h.finalize().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn key_of(v: &Value) -> Key {
        KeyBuilder::new().value(v).finish()
    }

    #[test]
    fn floats_hash_by_value_not_spelling() {
        assert_eq!(key_of(&Value::Float(1e-12)), key_of(&Value::Float(1.0e-12)));
        assert_ne!(key_of(&Value::Float(1.0)), key_of(&Value::Int(1)));
        assert_eq!(key_of(&Value::Float(0.0)), key_of(&Value::Float(-0.0)));
    }

    #[test]
    fn records_are_order_independent_lists_are_not() {
        let mut a = crate::value::Record::new();
        a.insert("x".to_string(), Value::Int(1));
        a.insert("y".to_string(), Value::Int(2));
        let mut b = crate::value::Record::new();
        b.insert("y".to_string(), Value::Int(2));
        b.insert("x".to_string(), Value::Int(1));
        assert_eq!(
            key_of(&Value::Record(Arc::new(a))),
            key_of(&Value::Record(Arc::new(b)))
        );
        let l1 = Value::list(vec![Value::Int(1), Value::Int(2)]);
        let l2 = Value::list(vec![Value::Int(2), Value::Int(1)]);
        assert_ne!(key_of(&l1), key_of(&l2));
    }

    #[test]
    fn string_boundaries_are_unambiguous() {
        let a = Value::list(vec![Value::str("ab"), Value::str("c")]);
        let b = Value::list(vec![Value::str("a"), Value::str("bc")]);
        assert_ne!(key_of(&a), key_of(&b));
    }

    #[test]
    fn hex_round_trip_and_seed_derivation() {
        let k = key_of(&Value::Int(7));
        assert_eq!(Key::from_hex(&k.hex()), Some(k));
        assert_ne!(k.derive_seed(1), k.derive_seed(2));
        assert_eq!(k.derive_seed(42), k.derive_seed(42));
    }
}
