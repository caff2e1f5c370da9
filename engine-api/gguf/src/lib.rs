//! # arny-gguf
//!
//! Reads the header of a GGUF file (metadata and tensor directory) without
//! trusting it. Every length, count, offset and shape is checked against
//! the bytes actually there before anything is allocated or indexed, so a
//! hostile or damaged file gives a [`GgufError`] instead of a huge
//! allocation, a panic or, further down, an abort inside llama.cpp.
//!
//! Tensor data is not read: [`GgufFile::tensors`] gives each tensor's
//! absolute byte range, checked to lie inside the file. The reader is pure
//! Rust with no dependencies beyond `thiserror` and `half`, so it also
//! serves the Burn engine and the browser. [`GgufWriter`] writes the same
//! format, for the files Arny makes itself.

pub mod dequant;
pub mod llama;
pub mod lora;
mod writer;

pub use writer::GgufWriter;

use std::collections::BTreeMap;
use std::io::Read;

/// The four bytes every GGUF file starts with.
pub const MAGIC: [u8; 4] = *b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// llama.cpp's GGML_MAX_DIMS.
pub const MAX_DIMS: u32 = 4;

/// Why a file is not a readable GGUF file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GgufError {
    #[error("not a GGUF file (starts with {0:02x?})")]
    BadMagic(Vec<u8>),
    #[error("unsupported GGUF version {0}")]
    UnsupportedVersion(u32),
    #[error("file ends at byte {len} while reading {what} at byte {at}")]
    Truncated { what: String, at: u64, len: u64 },
    #[error("{0}")]
    Invalid(String),
}

type Result<T> = std::result::Result<T, GgufError>;

impl GgufError {
    /// What an engine reports for a file it cannot read: another format is
    /// `WrongFormat`, a damaged GGUF file is `Corrupt`.
    pub fn into_engine_error(self, source_name: &str) -> arny_engine_api::EngineError {
        use arny_engine_api::EngineError;
        match self {
            Self::BadMagic(_) | Self::UnsupportedVersion(_) => EngineError::WrongFormat {
                source_name: source_name.to_string(),
                expected: "GGUF",
                reason: self.to_string(),
            },
            Self::Truncated { .. } | Self::Invalid(_) => EngineError::Corrupt {
                source_name: source_name.to_string(),
                reason: self.to_string(),
            },
        }
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    /// An array longer than [`ReadOptions::max_array_len`]: checked and
    /// stepped over, not kept.
    SkippedArray {
        elem_type: u32,
        len: u64,
    },
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value of a boolean key (GGUF's own type, as llama.cpp reads
    /// `add_bos_token` and the like).
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// The value as a signed integer, if it is an integer.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::I8(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }

    /// Length of an array, kept or skipped.
    pub fn array_len(&self) -> Option<u64> {
        match self {
            Self::Array(a) => Some(a.len() as u64),
            Self::SkippedArray { len, .. } => Some(*len),
            _ => None,
        }
    }
}

/// ggml tensor types whose storage size this reader knows:
/// (name, elements per block, bytes per block).
pub fn ggml_type_layout(ty: u32) -> Option<(&'static str, u64, u64)> {
    Some(match ty {
        0 => ("F32", 1, 4),
        1 => ("F16", 1, 2),
        2 => ("Q4_0", 32, 18),
        3 => ("Q4_1", 32, 20),
        6 => ("Q5_0", 32, 22),
        7 => ("Q5_1", 32, 24),
        8 => ("Q8_0", 32, 34),
        9 => ("Q8_1", 32, 36),
        10 => ("Q2_K", 256, 84),
        11 => ("Q3_K", 256, 110),
        12 => ("Q4_K", 256, 144),
        13 => ("Q5_K", 256, 176),
        14 => ("Q6_K", 256, 210),
        15 => ("Q8_K", 256, 292),
        24 => ("I8", 1, 1),
        25 => ("I16", 1, 2),
        26 => ("I32", 1, 4),
        27 => ("I64", 1, 8),
        28 => ("F64", 1, 8),
        30 => ("BF16", 1, 2),
        _ => return None,
    })
}

/// One entry of the tensor directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions, innermost first (ggml order).
    pub dims: Vec<u64>,
    /// ggml type id; see [`ggml_type_layout`].
    pub ggml_type: u32,
    /// Absolute offset of the first byte in the file.
    pub start: u64,
    /// Byte length, when the type's layout is known.
    pub bytes: Option<u64>,
}

impl TensorInfo {
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    pub fn type_name(&self) -> Option<&'static str> {
        ggml_type_layout(self.ggml_type).map(|l| l.0)
    }
}

/// How much of the header to keep.
#[derive(Debug, Clone, Copy)]
pub struct ReadOptions {
    /// Arrays longer than this (the vocabulary, the merges) are checked and
    /// skipped instead of materialised; see [`Value::SkippedArray`].
    pub max_array_len: u64,
    /// Keys whose arrays are always kept, whatever their length.
    pub keep: &'static [&'static str],
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            max_array_len: u64::MAX,
            keep: &[],
        }
    }
}

/// A parsed GGUF header.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufFile {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute offset where tensor data begins.
    pub data_start: u64,
    /// Total file length the header was checked against.
    pub file_len: u64,
}

impl GgufFile {
    /// Parses the header from `reader`, which yields the file from byte 0;
    /// `file_len` is the file's total size. Reads only the header.
    pub fn read(reader: impl Read, file_len: u64) -> Result<Self> {
        Self::read_with(reader, file_len, ReadOptions::default())
    }

    /// [`GgufFile::read`] with options.
    pub fn read_with(reader: impl Read, file_len: u64, options: ReadOptions) -> Result<Self> {
        Parser {
            r: reader,
            pos: 0,
            len: file_len,
            max_array_len: options.max_array_len,
            keep: options.keep,
        }
        .file()
    }

    /// Parses from a complete in-memory file.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::read(bytes, bytes.len() as u64)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }

    /// `general.architecture`, e.g. `llama`.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    /// Only what a LoRA adapter is checked against
    /// ([`lora::LoraFile::check_against`]): the architecture and the tensor
    /// directory, without the vocabulary and the rest of the metadata.
    pub fn into_directory(mut self) -> Self {
        self.metadata.retain(|k, _| k == "general.architecture");
        self
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The bytes of tensor `t` inside `file` (the whole file, e.g. a
    /// memory map). Checked again here, so a `file` shorter than the one the
    /// header was read from gives an error, not a panic.
    pub fn tensor_data<'a>(&self, file: &'a [u8], t: &TensorInfo) -> Result<&'a [u8]> {
        let len = t.bytes.ok_or_else(|| {
            GgufError::Invalid(format!(
                "tensor {} has an unknown type {}",
                t.name, t.ggml_type
            ))
        })?;
        let end = t
            .start
            .checked_add(len)
            .filter(|&e| e <= file.len() as u64)
            .ok_or_else(|| GgufError::Truncated {
                what: format!("data of tensor {}", t.name),
                at: t.start.saturating_add(len),
                len: file.len() as u64,
            })?;
        Ok(&file[t.start as usize..end as usize])
    }

    /// Tensor `t` as f32 values (innermost dimension first, as stored).
    pub fn dequantize(&self, file: &[u8], t: &TensorInfo) -> Result<Vec<f32>> {
        let data = self.tensor_data(file, t)?;
        let n = usize::try_from(t.elements())
            .map_err(|_| GgufError::Invalid(format!("tensor {} is too large", t.name)))?;
        dequant::dequantize(t.ggml_type, data, n)
    }
}

struct Parser<R> {
    r: R,
    pos: u64,
    len: u64,
    max_array_len: u64,
    keep: &'static [&'static str],
}

impl<R: Read> Parser<R> {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn bytes(&mut self, n: u64, what: &str) -> Result<Vec<u8>> {
        if n > self.remaining() {
            return Err(self.truncated(what));
        }
        let mut buf = vec![0u8; n as usize];
        self.r
            .read_exact(&mut buf)
            .map_err(|_| self.truncated(what))?;
        self.pos += n;
        Ok(buf)
    }

    fn truncated(&self, what: &str) -> GgufError {
        GgufError::Truncated {
            what: what.to_string(),
            at: self.pos,
            len: self.len,
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        if N as u64 > self.remaining() {
            return Err(self.truncated(what));
        }
        let mut a = [0u8; N];
        self.r
            .read_exact(&mut a)
            .map_err(|_| self.truncated(what))?;
        self.pos += N as u64;
        Ok(a)
    }

    /// Advances over `n` bytes without keeping them.
    fn skip(&mut self, n: u64, what: &str) -> Result<()> {
        if n > self.remaining() {
            return Err(self.truncated(what));
        }
        let copied = std::io::copy(&mut (&mut self.r).take(n), &mut std::io::sink())
            .map_err(|_| self.truncated(what))?;
        if copied != n {
            return Err(self.truncated(what));
        }
        self.pos += n;
        Ok(())
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64(what)?;
        let b = self.bytes(n, what)?;
        String::from_utf8(b).map_err(|_| GgufError::Invalid(format!("{what} is not UTF-8")))
    }

    fn value(&mut self, ty: u32, what: &str, depth: u32) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>(what)?[0]),
            1 => Value::I8(self.array::<1>(what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(GgufError::Invalid(format!("{what}: bool byte {b}"))),
            },
            8 => Value::String(self.string(what)?),
            9 => {
                if depth > 0 {
                    return Err(GgufError::Invalid(format!("{what}: nested arrays")));
                }
                let elem = self.u32(what)?;
                let n = self.u64(what)?;
                // Each element takes at least one byte (eight for strings'
                // length prefix): a count beyond that cannot be real.
                let min = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => return Err(GgufError::Invalid(format!("{what}: nested arrays"))),
                    t => return Err(GgufError::Invalid(format!("{what}: value type {t}"))),
                };
                if n.checked_mul(min).is_none_or(|b| b > self.remaining()) {
                    return Err(self.truncated(what));
                }
                if n > self.max_array_len && !self.keep.contains(&what) {
                    if elem == 8 {
                        for _ in 0..n {
                            let len = self.u64(what)?;
                            self.skip(len, what)?;
                        }
                    } else {
                        self.skip(n * min, what)?;
                    }
                    return Ok(Value::SkippedArray {
                        elem_type: elem,
                        len: n,
                    });
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(elem, what, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            t => {
                return Err(GgufError::Invalid(format!(
                    "{what}: unknown value type {t}"
                )));
            }
        })
    }

    fn file(mut self) -> Result<GgufFile> {
        let magic = self.bytes(4.min(self.len), "magic")?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic(magic));
        }
        let version = self.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = self.u64("tensor count")?;
        let n_kv = self.u64("metadata count")?;
        // A KV entry takes at least 8 + 4 + 1 bytes, a tensor entry 8 + 4 + 4 + 8.
        if n_kv.checked_mul(13).is_none_or(|b| b > self.remaining()) {
            return Err(GgufError::Invalid(format!(
                "metadata count {n_kv} cannot fit in the file"
            )));
        }
        if n_tensors
            .checked_mul(24)
            .is_none_or(|b| b > self.remaining())
        {
            return Err(GgufError::Invalid(format!(
                "tensor count {n_tensors} cannot fit in the file"
            )));
        }
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = self.string(&format!("metadata key #{i}"))?;
            let ty = self.u32(&format!("type of {key}"))?;
            let value = self.value(ty, &key, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(GgufError::Invalid(format!("duplicate metadata key {key}")));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => return Err(GgufError::Invalid(format!("bad general.alignment {v:?}"))),
            },
        };
        let mut raw = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = self.string(&format!("name of tensor #{i}"))?;
            let n_dims = self.u32(&name)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::Invalid(format!(
                    "tensor {name} has {n_dims} dimensions"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(self.u64(&name)?);
            }
            let ggml_type = self.u32(&name)?;
            let offset = self.u64(&name)?;
            raw.push((name, dims, ggml_type, offset));
        }
        let data_start = self.pos.div_ceil(alignment) * alignment;
        let mut tensors = Vec::with_capacity(raw.len());
        let mut names = std::collections::HashSet::new();
        for (name, dims, ggml_type, offset) in raw {
            if !names.insert(name.clone()) {
                return Err(GgufError::Invalid(format!("duplicate tensor {name}")));
            }
            let elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .filter(|&e| e > 0 && e < (1 << 50))
                .ok_or_else(|| GgufError::Invalid(format!("tensor {name} has shape {dims:?}")))?;
            if offset % alignment != 0 {
                return Err(GgufError::Invalid(format!(
                    "tensor {name} offset {offset} is not aligned to {alignment}"
                )));
            }
            let start = data_start
                .checked_add(offset)
                .ok_or_else(|| GgufError::Invalid(format!("tensor {name} offset overflows")))?;
            let bytes = match ggml_type_layout(ggml_type) {
                Some((tname, block, size)) => {
                    if dims[0] % block != 0 {
                        return Err(GgufError::Invalid(format!(
                            "tensor {name}: {tname} needs rows in multiples of {block}, got {}",
                            dims[0]
                        )));
                    }
                    Some(elements / block * size)
                }
                None => None,
            };
            let end = start.saturating_add(bytes.unwrap_or(0));
            if start > self.len || end > self.len {
                return Err(GgufError::Truncated {
                    what: format!("data of tensor {name}"),
                    at: end,
                    len: self.len,
                });
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                start,
                bytes,
            });
        }
        Ok(GgufFile {
            version,
            metadata,
            tensors,
            alignment,
            data_start,
            file_len: self.len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a small GGUF file by hand.
    struct Builder {
        kv: Vec<u8>,
        n_kv: u64,
        tensors: Vec<u8>,
        n_tensors: u64,
        data_len: u64,
    }

    impl Builder {
        fn new() -> Self {
            Self {
                kv: Vec::new(),
                n_kv: 0,
                tensors: Vec::new(),
                n_tensors: 0,
                data_len: 0,
            }
        }
        fn s(buf: &mut Vec<u8>, s: &str) {
            buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
            buf.extend_from_slice(s.as_bytes());
        }
        fn kv_str(mut self, k: &str, v: &str) -> Self {
            Self::s(&mut self.kv, k);
            self.kv.extend_from_slice(&8u32.to_le_bytes());
            Self::s(&mut self.kv, v);
            self.n_kv += 1;
            self
        }
        fn kv_u32(mut self, k: &str, v: u32) -> Self {
            Self::s(&mut self.kv, k);
            self.kv.extend_from_slice(&4u32.to_le_bytes());
            self.kv.extend_from_slice(&v.to_le_bytes());
            self.n_kv += 1;
            self
        }
        fn kv_str_array(mut self, k: &str, items: &[&str]) -> Self {
            Self::s(&mut self.kv, k);
            self.kv.extend_from_slice(&9u32.to_le_bytes());
            self.kv.extend_from_slice(&8u32.to_le_bytes());
            self.kv
                .extend_from_slice(&(items.len() as u64).to_le_bytes());
            for i in items {
                Self::s(&mut self.kv, i);
            }
            self.n_kv += 1;
            self
        }
        fn tensor(mut self, name: &str, dims: &[u64], ty: u32, bytes: u64) -> Self {
            Self::s(&mut self.tensors, name);
            self.tensors
                .extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                self.tensors.extend_from_slice(&d.to_le_bytes());
            }
            self.tensors.extend_from_slice(&ty.to_le_bytes());
            self.tensors.extend_from_slice(&self.data_len.to_le_bytes());
            self.data_len += bytes.div_ceil(32) * 32;
            self.n_tensors += 1;
            self
        }
        fn build(self) -> Vec<u8> {
            let mut f = b"GGUF".to_vec();
            f.extend_from_slice(&3u32.to_le_bytes());
            f.extend_from_slice(&self.n_tensors.to_le_bytes());
            f.extend_from_slice(&self.n_kv.to_le_bytes());
            f.extend_from_slice(&self.kv);
            f.extend_from_slice(&self.tensors);
            while !f.len().is_multiple_of(32) {
                f.push(0);
            }
            f.resize(f.len() + self.data_len as usize, 0xab);
            f
        }
    }

    fn sample() -> Vec<u8> {
        Builder::new()
            .kv_str("general.architecture", "llama")
            .kv_u32("llama.block_count", 2)
            .kv_str_array("tokenizer.ggml.tokens", &["a", "b", "c"])
            .tensor("token_embd.weight", &[32, 3], 2, 3 * 18)
            .tensor("output_norm.weight", &[32], 0, 128)
            .build()
    }

    #[test]
    fn reads_metadata_and_tensor_directory() {
        let bytes = sample();
        let f = GgufFile::from_bytes(&bytes).unwrap();
        assert_eq!(f.version, 3);
        assert_eq!(f.architecture(), Some("llama"));
        assert_eq!(f.get_u64("llama.block_count"), Some(2));
        assert_eq!(
            f.get("tokenizer.ggml.tokens")
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            3
        );
        let t = f.tensor("token_embd.weight").unwrap();
        assert_eq!(t.type_name(), Some("Q4_0"));
        assert_eq!(t.bytes, Some(54));
        assert_eq!(t.start, f.data_start);
        assert_eq!(
            f.tensor("output_norm.weight").unwrap().start,
            f.data_start + 64
        );
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = sample();
        for cut in 0..bytes.len() {
            let r = GgufFile::from_bytes(&bytes[..cut]);
            assert!(r.is_err(), "cut at {cut} parsed");
        }
    }

    #[test]
    fn every_single_byte_corruption_is_handled() {
        let bytes = sample();
        for i in 0..bytes.len() {
            for v in [0u8, 0x7f, 0xff] {
                let mut b = bytes.clone();
                b[i] = v;
                // Any outcome but a panic or a giant allocation is fine.
                let _ = GgufFile::from_bytes(&b);
            }
        }
    }

    #[test]
    fn hostile_counts_are_rejected_before_allocating() {
        let mut b = sample();
        // Tensor count 2^60.
        b[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(matches!(
            GgufFile::from_bytes(&b),
            Err(GgufError::Invalid(_))
        ));
        let mut b = sample();
        // First key's length 2^62.
        b[24..32].copy_from_slice(&(1u64 << 62).to_le_bytes());
        assert!(matches!(
            GgufFile::from_bytes(&b),
            Err(GgufError::Truncated { .. })
        ));
    }

    #[test]
    fn long_arrays_can_be_skipped() {
        let bytes = sample();
        let f = GgufFile::read_with(
            bytes.as_slice(),
            bytes.len() as u64,
            ReadOptions {
                max_array_len: 2,
                keep: &[],
            },
        )
        .unwrap();
        let tokens = f.get("tokenizer.ggml.tokens").unwrap();
        assert_eq!(tokens.array_len(), Some(3));
        assert!(tokens.as_array().is_none());
        // Skipping reaches the same tensor directory.
        assert_eq!(f.tensors, GgufFile::from_bytes(&bytes).unwrap().tensors);
    }

    #[test]
    fn bad_magic_and_version() {
        assert!(matches!(
            GgufFile::from_bytes(b"PK\x03\x04rest"),
            Err(GgufError::BadMagic(_))
        ));
        let mut b = sample();
        b[4] = 1;
        assert!(matches!(
            GgufFile::from_bytes(&b),
            Err(GgufError::UnsupportedVersion(1))
        ));
    }

    #[test]
    fn shapes_that_do_not_fit_the_type_are_rejected() {
        let b = Builder::new().tensor("w", &[33, 2], 2, 64).build();
        assert!(matches!(
            GgufFile::from_bytes(&b),
            Err(GgufError::Invalid(_))
        ));
        let b = Builder::new().tensor("w", &[0, 2], 0, 0).build();
        assert!(matches!(
            GgufFile::from_bytes(&b),
            Err(GgufError::Invalid(_))
        ));
    }
}
