//! Writes GGUF files: what the reader reads, for models and adapters Arny
//! makes itself (the generated test models, patched copies of real files).
//!
//! Metadata keeps the order it was set in; tensors are laid out in the order
//! they were added, each at an offset aligned to `general.alignment` (32
//! unless set), as llama.cpp expects.

use std::io::{self, Write};

use crate::{DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS, Value, ggml_type_layout};

/// A GGUF file being put together.
#[derive(Debug, Clone, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<Tensor>,
}

#[derive(Debug, Clone)]
struct Tensor {
    name: String,
    dims: Vec<u64>,
    ggml_type: u32,
    data: Vec<u8>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key`, replacing an earlier value of that key in place.
    pub fn set(&mut self, key: impl Into<String>, value: Value) -> &mut Self {
        let key = key.into();
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key, value)),
        }
        self
    }

    /// Adds a tensor of `ggml_type` with `dims` (innermost first) and its
    /// stored bytes. Panics when the bytes do not match the shape: that is
    /// a bug in the caller, not bad input.
    pub fn tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ggml_type: u32,
        data: Vec<u8>,
    ) -> &mut Self {
        let name = name.into();
        let (_, block, block_bytes) = ggml_type_layout(ggml_type)
            .unwrap_or_else(|| panic!("tensor {name}: unknown ggml type {ggml_type}"));
        let elements: u64 = dims.iter().product();
        assert!(
            !dims.is_empty() && dims.len() <= MAX_DIMS as usize,
            "tensor {name}: {} dimensions",
            dims.len()
        );
        assert!(
            elements.is_multiple_of(block) && elements / block * block_bytes == data.len() as u64,
            "tensor {name}: {} bytes for {dims:?} of type {ggml_type}",
            data.len()
        );
        self.tensors.push(Tensor {
            name,
            dims: dims.to_vec(),
            ggml_type,
            data,
        });
        self
    }

    /// An F32 tensor.
    pub fn tensor_f32(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        values: &[f32],
    ) -> &mut Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, dims, crate::dequant::F32, data)
    }

    /// An F16 tensor, rounded from `values`.
    pub fn tensor_f16(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        values: &[f32],
    ) -> &mut Self {
        let data = values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        self.tensor(name, dims, crate::dequant::F16, data)
    }

    /// A Q8_0 tensor quantized from `values` as ggml's reference
    /// quantizer does (`quantize_row_q8_0_ref`): per 32 values, an f16
    /// scale `max|x| / 127` and values rounded half away from zero.
    pub fn tensor_q8_0(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        values: &[f32],
    ) -> &mut Self {
        let mut data = Vec::with_capacity(values.len() / 32 * 34);
        for b in values.chunks(32) {
            let amax = b.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            data.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
            data.extend(b.iter().map(|v| (v * id).round() as i8 as u8));
        }
        self.tensor(name, dims, crate::dequant::Q8_0, data)
    }

    /// A Q4_1 tensor quantized from `values` as ggml's reference
    /// quantizer does (`quantize_row_q4_1_ref`): per 32 values, f16 step
    /// `(max - min) / 15` and minimum, 4-bit values truncated from
    /// `x + 0.5`, the first 16 in the low nibbles.
    pub fn tensor_q4_1(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        values: &[f32],
    ) -> &mut Self {
        let mut data = Vec::with_capacity(values.len() / 32 * 20);
        for b in values.chunks(32) {
            let min = b.iter().copied().fold(f32::MAX, f32::min);
            let max = b.iter().copied().fold(f32::MIN, f32::max);
            let d = (max - min) / 15.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            data.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
            data.extend_from_slice(&half::f16::from_f32(min).to_le_bytes());
            let q = |v: f32| (((v - min) * id + 0.5) as i8).min(15) as u8;
            data.extend((0..16).map(|j| q(b[j]) | (q(b[j + 16]) << 4)));
        }
        self.tensor(name, dims, crate::dequant::Q4_1, data)
    }

    fn alignment(&self) -> u64 {
        self.metadata
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .filter(|a| *a > 0)
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    /// The whole file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out).expect("writing to a Vec cannot fail");
        out
    }

    pub fn write(&self, mut w: impl Write) -> io::Result<()> {
        let mut out = Counter { w: &mut w, n: 0 };
        out.put(&MAGIC)?;
        out.put(&3u32.to_le_bytes())?;
        out.put(&(self.tensors.len() as u64).to_le_bytes())?;
        out.put(&(self.metadata.len() as u64).to_le_bytes())?;
        for (k, v) in &self.metadata {
            write_string(&mut out, k)?;
            out.put(&value_type(v)?.to_le_bytes())?;
            write_value(&mut out, v)?;
        }
        let align = self.alignment();
        let mut offset = 0u64;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            write_string(&mut out, &t.name)?;
            out.put(&(t.dims.len() as u32).to_le_bytes())?;
            for d in &t.dims {
                out.put(&d.to_le_bytes())?;
            }
            out.put(&t.ggml_type.to_le_bytes())?;
            out.put(&offset.to_le_bytes())?;
            offsets.push(offset);
            offset = (offset + t.data.len() as u64).next_multiple_of(align);
        }
        out.pad_to(align)?;
        let data_start = out.n;
        for (t, off) in self.tensors.iter().zip(offsets) {
            out.pad_to_absolute(data_start + off)?;
            out.put(&t.data)?;
        }
        out.pad_to(align)?;
        Ok(())
    }
}

struct Counter<'a, W: Write> {
    w: &'a mut W,
    n: u64,
}

impl<W: Write> Counter<'_, W> {
    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.w.write_all(b)?;
        self.n += b.len() as u64;
        Ok(())
    }

    fn pad_to(&mut self, align: u64) -> io::Result<()> {
        self.pad_to_absolute(self.n.next_multiple_of(align))
    }

    fn pad_to_absolute(&mut self, at: u64) -> io::Result<()> {
        let zeros = vec![0u8; (at - self.n) as usize];
        self.put(&zeros)
    }
}

fn write_string(out: &mut Counter<'_, impl Write>, s: &str) -> io::Result<()> {
    out.put(&(s.len() as u64).to_le_bytes())?;
    out.put(s.as_bytes())
}

fn value_type(v: &Value) -> io::Result<u32> {
    Ok(match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
        Value::SkippedArray { .. } => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a skipped array has no values to write",
            ));
        }
    })
}

fn write_value(out: &mut Counter<'_, impl Write>, v: &Value) -> io::Result<()> {
    match v {
        Value::U8(x) => out.put(&[*x]),
        Value::I8(x) => out.put(&x.to_le_bytes()),
        Value::U16(x) => out.put(&x.to_le_bytes()),
        Value::I16(x) => out.put(&x.to_le_bytes()),
        Value::U32(x) => out.put(&x.to_le_bytes()),
        Value::I32(x) => out.put(&x.to_le_bytes()),
        Value::F32(x) => out.put(&x.to_le_bytes()),
        Value::Bool(x) => out.put(&[u8::from(*x)]),
        Value::String(s) => write_string(out, s),
        Value::U64(x) => out.put(&x.to_le_bytes()),
        Value::I64(x) => out.put(&x.to_le_bytes()),
        Value::F64(x) => out.put(&x.to_le_bytes()),
        Value::Array(items) => {
            // An empty array needs some element type; u8 is as good as any.
            let elem = items.first().map(value_type).transpose()?.unwrap_or(0);
            if items.iter().any(|i| value_type(i).ok() != Some(elem)) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "GGUF arrays hold one type of value",
                ));
            }
            out.put(&elem.to_le_bytes())?;
            out.put(&(items.len() as u64).to_le_bytes())?;
            items.iter().try_for_each(|i| write_value(out, i))
        }
        Value::SkippedArray { .. } => value_type(v).map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GgufFile;

    #[test]
    fn what_is_written_reads_back() {
        let mut w = GgufWriter::new();
        w.set("general.architecture", Value::String("llama".into()))
            .set("llama.block_count", Value::U32(2))
            .set("x.f", Value::F32(0.5))
            .set(
                "x.list",
                Value::Array(vec![Value::String("a".into()), Value::String("b c".into())]),
            )
            .set("x.empty", Value::Array(vec![]))
            .tensor_f32("a", &[3], &[1.0, -2.0, 3.5])
            .tensor_f16("b", &[2, 2], &[0.5, 1.0, -1.5, 2.0]);
        let bytes = w.to_bytes();
        let f = GgufFile::from_bytes(&bytes).unwrap();
        assert_eq!(f.architecture(), Some("llama"));
        assert_eq!(f.get_u64("llama.block_count"), Some(2));
        assert_eq!(f.get("x.f"), Some(&Value::F32(0.5)));
        assert_eq!(f.get("x.list").and_then(Value::array_len), Some(2));
        let a = f.tensor("a").unwrap();
        assert_eq!(f.dequantize(&bytes, a).unwrap(), vec![1.0, -2.0, 3.5]);
        let b = f.tensor("b").unwrap();
        assert_eq!(b.start % 32, 0);
        assert_eq!(f.dequantize(&bytes, b).unwrap(), vec![0.5, 1.0, -1.5, 2.0]);
        assert_eq!(bytes.len() % 32, 0);
    }
}
