//! GGUF LoRA adapters, as llama.cpp reads them: `general.type = adapter`,
//! `adapter.type = lora`, an optional `adapter.lora.alpha`, and for each
//! adapted weight `W` (ggml dims `[n_in, n_out]`) a pair of tensors
//! `<W>.lora_a` (`[n_in, r]`) and `<W>.lora_b` (`[r, n_out]`).
//!
//! [`LoraFile::parse`] checks all of that, and [`LoraFile::check_against`]
//! checks the pairs against a base model's tensor directory, so an adapter
//! for another model is refused with a precise reason before any engine
//! (llama.cpp included) sees it.

use arny_engine_api::EngineError;

use crate::{GgufFile, TensorInfo, Value};

/// ggml types an adapter's tensors may use (f32, f16, bf16).
const TYPES: [u32; 3] = [0, 1, 30];

/// One adapted weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoraPair {
    /// The base tensor it adapts, e.g. `blk.0.attn_q.weight`.
    pub base: String,
    pub a: TensorInfo,
    pub b: TensorInfo,
}

impl LoraPair {
    /// Rows of A (= columns of B): the pair's rank.
    pub fn rank(&self) -> u64 {
        self.a.dims[1]
    }
}

/// A checked LoRA adapter header.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraFile {
    pub architecture: String,
    pub alpha: Option<f32>,
    /// Sorted by base tensor name.
    pub pairs: Vec<LoraPair>,
}

impl LoraFile {
    /// Checks that `gguf` (named `name` in errors) is a LoRA adapter whose
    /// tensors pair up with consistent shapes.
    pub fn parse(gguf: &GgufFile, name: &str) -> Result<Self, EngineError> {
        let wrong = |reason: String| EngineError::WrongFormat {
            source_name: name.to_string(),
            expected: "GGUF LoRA adapter",
            reason,
        };
        let corrupt = |reason: String| EngineError::Corrupt {
            source_name: name.to_string(),
            reason,
        };
        match gguf.get_str("general.type") {
            Some("adapter") => {}
            Some(other) => {
                return Err(wrong(format!(
                    "general.type is `{other}`, not `adapter` (a model file?)"
                )));
            }
            None => return Err(wrong("no general.type (a model file?)".into())),
        }
        match gguf.get_str("adapter.type") {
            Some("lora") => {}
            other => {
                return Err(wrong(format!(
                    "adapter.type is {other:?}, only `lora` is supported"
                )));
            }
        }
        if gguf.get("adapter.alora.invocation_tokens").is_some() {
            return Err(wrong(
                "activated LoRA (aLoRA) adapters are not supported".into(),
            ));
        }
        let architecture = gguf
            .architecture()
            .ok_or_else(|| corrupt("no general.architecture".into()))?
            .to_string();
        let alpha = match gguf.get("adapter.lora.alpha") {
            None => None,
            Some(v @ (Value::F32(_) | Value::F64(_))) => {
                let a = v.as_f64().unwrap_or(f64::NAN) as f32;
                if !a.is_finite() || a <= 0.0 {
                    return Err(corrupt(format!("adapter.lora.alpha = {a} is not positive")));
                }
                Some(a)
            }
            Some(v) => {
                return Err(corrupt(format!(
                    "adapter.lora.alpha = {v:?} is not a float"
                )));
            }
        };

        let mut halves: std::collections::BTreeMap<
            &str,
            (Option<&TensorInfo>, Option<&TensorInfo>),
        > = Default::default();
        for t in &gguf.tensors {
            let (base, is_a) = if let Some(b) = t.name.strip_suffix(".lora_a") {
                (b, true)
            } else if let Some(b) = t.name.strip_suffix(".lora_b") {
                (b, false)
            } else {
                return Err(corrupt(format!(
                    "tensor {} is neither a lora_a nor a lora_b",
                    t.name
                )));
            };
            if !TYPES.contains(&t.ggml_type) {
                return Err(corrupt(format!(
                    "tensor {} has type {}; adapters must be f32, f16 or bf16",
                    t.name,
                    t.type_name().unwrap_or("unknown")
                )));
            }
            if t.dims.len() != 2 || t.dims.contains(&0) {
                return Err(corrupt(format!("tensor {} has shape {:?}", t.name, t.dims)));
            }
            let slot = halves.entry(base).or_default();
            let half = if is_a { &mut slot.0 } else { &mut slot.1 };
            if half.replace(t).is_some() {
                return Err(corrupt(format!("tensor {} appears twice", t.name)));
            }
        }
        if halves.is_empty() {
            return Err(corrupt("the adapter has no tensors".into()));
        }
        let mut pairs = Vec::with_capacity(halves.len());
        for (base, (a, b)) in halves {
            let (Some(a), Some(b)) = (a, b) else {
                return Err(corrupt(format!("{base} has only one of lora_a, lora_b")));
            };
            // a: [n_in, r], b: [r, n_out] (ggml order).
            if a.dims[1] != b.dims[0] {
                return Err(corrupt(format!(
                    "{base}: lora_a {:?} and lora_b {:?} disagree on the rank",
                    a.dims, b.dims
                )));
            }
            pairs.push(LoraPair {
                base: base.to_string(),
                a: a.clone(),
                b: b.clone(),
            });
        }
        Ok(Self {
            architecture,
            alpha,
            pairs,
        })
    }

    /// The largest rank of its pairs.
    pub fn rank(&self) -> u64 {
        self.pairs.iter().map(LoraPair::rank).max().unwrap_or(0)
    }

    /// Checks every pair against the base model's header: same
    /// architecture, each adapted tensor present with a matching shape.
    pub fn check_against(&self, base: &GgufFile, name: &str) -> Result<(), EngineError> {
        let incompatible = |reason: String| EngineError::Incompatible {
            source_name: name.to_string(),
            reason,
        };
        let arch = base.architecture().unwrap_or("unknown");
        if arch != self.architecture {
            return Err(incompatible(format!(
                "the adapter is for `{}` models, the model is `{arch}`",
                self.architecture
            )));
        }
        for p in &self.pairs {
            let w = base.tensor(&p.base).ok_or_else(|| {
                incompatible(format!(
                    "the model has no tensor {} (another base model?)",
                    p.base
                ))
            })?;
            if w.dims.len() != 2 || w.dims[0] != p.a.dims[0] || w.dims[1] != p.b.dims[1] {
                return Err(incompatible(format!(
                    "{} is {:?} in the model, the adapter's pair makes {:?} (another base model?)",
                    p.base,
                    w.dims,
                    [p.a.dims[0], p.b.dims[1]]
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GgufWriter;

    fn adapter(pairs: &[(&str, [u64; 2], u64)]) -> GgufWriter {
        let mut w = GgufWriter::new();
        w.set("general.architecture", Value::String("llama".into()))
            .set("general.type", Value::String("adapter".into()))
            .set("adapter.type", Value::String("lora".into()))
            .set("adapter.lora.alpha", Value::F32(16.0));
        for &(name, [n_in, n_out], r) in pairs {
            w.tensor_f32(
                format!("{name}.lora_a"),
                &[n_in, r],
                &vec![0.0; (n_in * r) as usize],
            );
            w.tensor_f32(
                format!("{name}.lora_b"),
                &[r, n_out],
                &vec![0.0; (r * n_out) as usize],
            );
        }
        w
    }

    fn base() -> GgufFile {
        let mut w = GgufWriter::new();
        w.set("general.architecture", Value::String("llama".into()));
        w.tensor_f32("blk.0.attn_q.weight", &[8, 8], &[0.0; 64]);
        w.tensor_f32("blk.0.ffn_up.weight", &[8, 16], &[0.0; 128]);
        GgufFile::from_bytes(&w.to_bytes()).unwrap()
    }

    fn parse(w: &GgufWriter) -> Result<LoraFile, EngineError> {
        LoraFile::parse(&GgufFile::from_bytes(&w.to_bytes()).unwrap(), "a.gguf")
    }

    #[test]
    fn a_matching_adapter_parses_and_fits() {
        let f = parse(&adapter(&[
            ("blk.0.attn_q.weight", [8, 8], 2),
            ("blk.0.ffn_up.weight", [8, 16], 2),
        ]))
        .unwrap();
        assert_eq!(f.alpha, Some(16.0));
        assert_eq!(f.rank(), 2);
        assert_eq!(f.pairs.len(), 2);
        f.check_against(&base(), "a.gguf").unwrap();
    }

    #[test]
    fn foreign_shapes_and_names_are_incompatible() {
        let f = parse(&adapter(&[("blk.0.ffn_up.weight", [8, 32], 2)])).unwrap();
        let e = f.check_against(&base(), "a.gguf").unwrap_err();
        assert_eq!(e.code(), "incompatible", "{e}");
        let f = parse(&adapter(&[("blk.7.attn_q.weight", [8, 8], 2)])).unwrap();
        assert_eq!(
            f.check_against(&base(), "a.gguf").unwrap_err().code(),
            "incompatible"
        );
    }

    #[test]
    fn a_model_file_is_the_wrong_format() {
        let mut w = GgufWriter::new();
        w.set("general.architecture", Value::String("llama".into()));
        w.tensor_f32("blk.0.attn_q.weight", &[8, 8], &[0.0; 64]);
        assert_eq!(parse(&w).unwrap_err().code(), "wrong_format");
    }

    #[test]
    fn half_pairs_and_rank_mismatches_are_corrupt() {
        let mut w = adapter(&[]);
        w.tensor_f32("blk.0.attn_q.weight.lora_a", &[8, 2], &[0.0; 16]);
        assert_eq!(parse(&w).unwrap_err().code(), "corrupt");
        w.tensor_f32("blk.0.attn_q.weight.lora_b", &[3, 8], &[0.0; 24]);
        assert_eq!(parse(&w).unwrap_err().code(), "corrupt");
    }
}
