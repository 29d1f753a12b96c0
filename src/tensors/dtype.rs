//! Element types of the safetensors format, with their header spelling and sizes.
//!
//! Kept separate from header parsing because writers, converters and merges all need it. The
//! sub-byte formats of newer safetensors versions (F4, F6) are deliberately absent: files using
//! them are reported as having an unknown dtype instead of being misread.

/// Element types of the safetensors format (sub-byte formats are not supported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dtype {
    Bool,
    U8,
    I8,
    F8E5M2,
    F8E4M3,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
}

impl Dtype {
    /// The spelling used in safetensors headers (`"F16"`, `"BF16"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::F8E5M2 => "F8_E5M2",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
        }
    }

    pub fn parse(s: &str) -> Option<Dtype> {
        Some(match s {
            "BOOL" => Dtype::Bool,
            "U8" => Dtype::U8,
            "I8" => Dtype::I8,
            "F8_E5M2" => Dtype::F8E5M2,
            "F8_E4M3" => Dtype::F8E4M3,
            "I16" => Dtype::I16,
            "U16" => Dtype::U16,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            "I32" => Dtype::I32,
            "U32" => Dtype::U32,
            "F32" => Dtype::F32,
            "F64" => Dtype::F64,
            "I64" => Dtype::I64,
            "U64" => Dtype::U64,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 | Dtype::F8E5M2 | Dtype::F8E4M3 => 1,
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::BF16 => 2,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 4,
            Dtype::F64 | Dtype::I64 | Dtype::U64 => 8,
        }
    }

    /// Floating-point types (the ones a merge combines; everything else is copied).
    pub fn is_float(self) -> bool {
        matches!(
            self,
            Dtype::F8E5M2 | Dtype::F8E4M3 | Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64
        )
    }

    /// The `torch_dtype` spelling used in `config.json`, for the types a writer produces.
    pub fn torch_name(self) -> Option<&'static str> {
        match self {
            Dtype::F16 => Some("float16"),
            Dtype::BF16 => Some("bfloat16"),
            Dtype::F32 => Some("float32"),
            Dtype::F64 => Some("float64"),
            _ => None,
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_names_round_trip() {
        for d in [
            Dtype::Bool,
            Dtype::F8E4M3,
            Dtype::BF16,
            Dtype::F16,
            Dtype::I64,
            Dtype::U64,
        ] {
            assert_eq!(Dtype::parse(d.as_str()), Some(d));
        }
        assert_eq!(Dtype::parse("F4"), None);
    }
}
