//! The manifest: models, specialists, gateway, plan, memory and cloud, in
//! TOML. Parsing is strict (unknown keys are errors) and every error names
//! the line and the field, because a manifest is edited by hand.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::SdkError;

/// The built-in manifest: SmolLM2 as gateway and every specialist.
pub const BUILTIN: &str = include_str!("../config/arny.toml");

pub use arny_engine_api::EngineKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Plan {
    /// One model, every role through its system prompt; always loaded.
    Universal,
    /// A resident gateway and specialists loaded on demand.
    #[default]
    Hybrid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Privacy {
    /// Requests the gateway sends to the cloud go there.
    #[default]
    CloudAllowed,
    /// Nothing ever leaves the device: no cloud client is even built.
    LocalOnly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    #[default]
    Examples,
    Model,
    Ensemble,
}

impl Strategy {
    /// The manifest's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Examples => "examples",
            Self::Model => "model",
            Self::Ensemble => "ensemble",
        }
    }
}

/// A byte count: an integer, or a string with a unit ("512 MiB", "2GB").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) if n > 0 => Ok(ByteSize(n as u64)),
            Raw::Int(n) => Err(serde::de::Error::custom(format!(
                "{n} is not a positive byte count"
            ))),
            Raw::Str(s) => parse_bytes(&s)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (try 1073741824, \"1 GiB\" or \"800 MB\")"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        u => {
            return Err(format!(
                "unknown unit `{u}` in `{s}` (B, KB, MB, GB, KiB, MiB, GiB)"
            ));
        }
    };
    let v = n * mult;
    if !(1.0..1e15).contains(&v) {
        return Err(format!("`{s}` is not a sensible memory size"));
    }
    Ok(v as u64)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub id: Spanned<String>,
    pub engine: EngineKind,
    /// A file, relative to the manifest.
    pub path: Option<PathBuf>,
    /// A model the store knows how to fetch (`arny models list`).
    pub known: Option<String>,
    /// Downloaded once into the models folder; needs `sha256`.
    pub url: Option<String>,
    pub sha256: Option<String>,
    /// `chatml`, `llama3`, `zephyr`, or Jinja source.
    pub chat_template: Option<String>,
    pub context_length: Option<u32>,
    pub threads: Option<u32>,
    /// `auto` (default: a GPU when the engine has a hardware one), `cpu` or
    /// `gpu` (fail rather than fall back).
    pub device: Option<arny_engine_api::DeviceRequest>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecialistSpec {
    pub name: Spanned<String>,
    pub model: Spanned<String>,
    pub system_prompt: String,
    /// One line for the model-based gateway: what belongs here.
    pub description: Option<String>,
    #[serde(default)]
    pub examples: Vec<String>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    /// Penalty on recently generated tokens (default 1.0, none).
    pub repetition_penalty: Option<f32>,
    /// A LoRA adapter over `model` that makes this specialist (`arny tune`
    /// makes them): the model stays loaded once, and the specialist's
    /// sessions run with the adapter.
    pub adapter: Option<AdapterSpec>,
    /// A JSON Schema file (relative to the manifest) every answer of this
    /// specialist must match, enforced while generating; a request's own
    /// constraint replaces it.
    pub output_schema: Option<PathBuf>,
}

/// Where a specialist's LoRA adapter comes from: exactly one of `path`,
/// `known` or `url` (with `sha256`), as for models.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterSpec {
    /// A GGUF LoRA file, relative to the manifest.
    pub path: Option<PathBuf>,
    /// An adapter Arny ships (`arny models list`).
    pub known: Option<String>,
    /// Downloaded once into the models folder; needs `sha256`.
    pub url: Option<String>,
    pub sha256: Option<String>,
    /// Multiplies the adapter's effect (default 1.0: as trained).
    pub scale: Option<f32>,
}

impl AdapterSpec {
    /// How the manifest names the adapter: its `url`, else its `known` id,
    /// else its `path` as written. Apps that hold the bytes key them so
    /// ([`crate::AssistantOptions::adapter_bytes`]).
    pub fn name(&self) -> Option<&str> {
        self.url
            .as_deref()
            .or(self.known.as_deref())
            .or_else(|| self.path.as_deref().and_then(|p| p.to_str()))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySpec {
    #[serde(default)]
    pub strategy: Strategy,
    #[serde(default = "default_threshold")]
    pub threshold: f32,
    pub model: Option<Spanned<String>>,
    #[serde(default = "default_model_weight")]
    pub model_weight: f32,
    #[serde(default)]
    pub cloud_examples: Vec<String>,
    /// Examples per label the model strategy is calibrated on at start-up.
    #[serde(default = "default_calibration")]
    pub calibration_per_label: usize,
    /// Worked examples per label the model strategy shows the model.
    #[serde(default = "default_few_shot")]
    pub few_shot: usize,
    /// A LoRA adapter over the gateway model, tuned on the examples
    /// (`arny route --tune-data`, then `arny tune`); the model strategy
    /// scores with it. Usually with `few_shot = 0`: it was trained without.
    pub adapter: Option<AdapterSpec>,
}

impl Default for GatewaySpec {
    fn default() -> Self {
        Self {
            strategy: Strategy::Examples,
            threshold: default_threshold(),
            model: None,
            model_weight: default_model_weight(),
            cloud_examples: Vec::new(),
            calibration_per_label: default_calibration(),
            few_shot: default_few_shot(),
            adapter: None,
        }
    }
}

fn default_threshold() -> f32 {
    arny_router::DEFAULT_THRESHOLD
}
fn default_model_weight() -> f32 {
    0.3
}
fn default_calibration() -> usize {
    4
}
fn default_few_shot() -> usize {
    5
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudSpec {
    /// An OpenAI-compatible API root, e.g. `https://api.example.com/v1`.
    pub base_url: String,
    pub model: String,
    /// The *name* of the environment variable that holds the API key.
    pub api_key_env: Option<String>,
    pub privacy: Option<Privacy>,
    #[serde(default = "default_timeout")]
    pub timeout_secs: f64,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: f64,
    /// When the cloud cannot be reached, answer locally instead of failing.
    #[serde(default = "yes")]
    pub local_when_unreachable: bool,
}

fn default_timeout() -> f64 {
    60.0
}
fn default_connect_timeout() -> f64 {
    5.0
}
fn yes() -> bool {
    true
}
fn default_idle() -> f64 {
    30.0
}
fn default_queue_timeout() -> f64 {
    crate::manager::DEFAULT_QUEUE_TIMEOUT.as_secs_f64()
}
fn default_budget() -> ByteSize {
    ByteSize(1 << 30)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(default)]
    pub plan: Plan,
    #[serde(default = "default_budget")]
    pub memory_budget: ByteSize,
    #[serde(default = "default_idle")]
    pub idle_unload_secs: f64,
    /// How long a request may wait for memory that running requests hold
    /// (and for a server slot) before it fails with `queue_timeout`.
    #[serde(default = "default_queue_timeout")]
    pub queue_timeout_secs: f64,
    pub privacy: Option<Privacy>,
    pub models: Vec<ModelSpec>,
    #[serde(default)]
    pub gateway: GatewaySpec,
    pub specialists: Vec<SpecialistSpec>,
    pub cloud: Option<CloudSpec>,
    /// Where relative paths start.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// Where the manifest came from, for messages.
    #[serde(skip)]
    pub origin: String,
    /// The TOML it was parsed from, so that errors name lines; `None` for
    /// a manifest built in code.
    #[serde(skip)]
    pub source: Option<String>,
}

impl Manifest {
    /// The built-in default.
    pub fn builtin() -> Self {
        Self::parse(BUILTIN, "<built-in manifest>", Path::new("."))
            .expect("the built-in manifest is valid (checked by a test)")
    }

    pub fn from_file(path: &Path) -> Result<Self, SdkError> {
        let text = std::fs::read_to_string(path).map_err(|e| SdkError::Manifest {
            origin: path.display().to_string(),
            line: None,
            message: format!("cannot read it: {e}"),
        })?;
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        Self::parse(&text, &path.display().to_string(), &base)
    }

    /// Parses and validates. `base_dir` anchors relative paths.
    pub fn parse(text: &str, origin: &str, base_dir: &Path) -> Result<Self, SdkError> {
        let mut m: Manifest = toml::from_str(text).map_err(|e| SdkError::Manifest {
            origin: origin.to_string(),
            line: e.span().map(|s| line_of(text, s.start)),
            message: describe_toml_error(text, &e),
        })?;
        m.base_dir = base_dir.to_path_buf();
        m.origin = origin.to_string();
        m.source = Some(text.to_string());
        m.validate()?;
        Ok(m)
    }

    /// Whether requests may leave the device.
    pub fn cloud_allowed(&self) -> bool {
        let local = self.privacy == Some(Privacy::LocalOnly)
            || self.cloud.as_ref().and_then(|c| c.privacy) == Some(Privacy::LocalOnly);
        !local && self.cloud.is_some()
    }

    pub fn model(&self, id: &str) -> Option<&ModelSpec> {
        self.models.iter().find(|m| *m.id.get_ref() == id)
    }

    pub fn specialist(&self, name: &str) -> Option<&SpecialistSpec> {
        self.specialists.iter().find(|s| *s.name.get_ref() == name)
    }

    /// Checks everything parsing cannot: references between sections,
    /// value ranges, what a plan and a strategy need. [`Manifest::parse`]
    /// calls it; so does `Assistant::new`, for manifests built in code.
    /// The constraint a specialist declares (`output_schema`), read from
    /// its file.
    pub fn output_constraint(
        &self,
        s: &SpecialistSpec,
    ) -> Result<Option<arny_engine_api::Constraint>, SdkError> {
        let Some(rel) = &s.output_schema else {
            return Ok(None);
        };
        let path = self.base_dir.join(rel);
        let fail = |message: String| SdkError::Manifest {
            origin: self.origin.clone(),
            line: None,
            message,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| {
            fail(format!(
                "specialist `{}`: output_schema {}: {e}",
                s.name.get_ref(),
                path.display()
            ))
        })?;
        let schema: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            fail(format!(
                "specialist `{}`: output_schema {} is not JSON: {e}",
                s.name.get_ref(),
                path.display()
            ))
        })?;
        Ok(Some(arny_engine_api::Constraint::JsonSchema(schema)))
    }

    pub fn validate(&self) -> Result<(), SdkError> {
        if self.models.is_empty() {
            return Err(self.error(
                None,
                "`models`: at least one [[models]] entry is needed".into(),
            ));
        }
        if self.specialists.is_empty() {
            return Err(self.error(
                None,
                "`specialists`: at least one [[specialists]] entry is needed".into(),
            ));
        }
        self.validate_models()?;
        self.validate_specialists()?;
        self.validate_gateway()?;
        self.validate_plan()?;
        self.validate_limits()
    }

    /// An error at `span` of the source (no line for a manifest built in
    /// code).
    fn error(&self, span: Option<std::ops::Range<usize>>, message: String) -> SdkError {
        SdkError::Manifest {
            origin: self.origin.clone(),
            line: span
                .zip(self.source.as_deref())
                .map(|(s, t)| line_of(t, s.start)),
            message,
        }
    }

    fn validate_models(&self) -> Result<(), SdkError> {
        let mut ids = HashSet::new();
        for (i, m) in self.models.iter().enumerate() {
            let id = m.id.get_ref();
            let at = Some(m.id.span());
            if id.trim().is_empty() || !ids.insert(id.clone()) {
                return Err(
                    self.error(at, format!("models[{i}].id: `{id}` is empty or used twice"))
                );
            }
            self.check_source(
                &format!("models[{i}] (`{id}`)"),
                &format!("models[{i}]"),
                [m.path.is_some(), m.known.is_some(), m.url.is_some()],
                m.sha256.as_deref(),
                at.clone(),
            )?;
            if let Some(k) = &m.known
                && arny_model_store::known(k).is_none()
            {
                let names: Vec<_> = arny_model_store::KNOWN_MODELS
                    .iter()
                    .map(|m| m.id)
                    .collect();
                return Err(self.error(
                    at,
                    format!(
                        "models[{i}].known: no known model `{k}` (known: {})",
                        names.join(", ")
                    ),
                ));
            }
            if m.context_length == Some(0) || m.threads == Some(0) {
                return Err(self.error(
                    at,
                    format!("models[{i}]: context_length and threads must be positive"),
                ));
            }
        }
        Ok(())
    }

    fn validate_specialists(&self) -> Result<(), SdkError> {
        let mut names = HashSet::new();
        for (i, s) in self.specialists.iter().enumerate() {
            let name = s.name.get_ref();
            let at = Some(s.name.span());
            if name == arny_router::CLOUD {
                return Err(self.error(
                    at,
                    format!("specialists[{i}].name: `cloud` is reserved for the cloud fallback"),
                ));
            }
            if name.trim().is_empty() || !names.insert(name.clone()) {
                return Err(self.error(
                    at,
                    format!("specialists[{i}].name: `{name}` is empty or used twice"),
                ));
            }
            if self.model(s.model.get_ref()).is_none() {
                return Err(self.error(
                    Some(s.model.span()),
                    format!(
                        "specialists[{i}].model: no model `{}` in [[models]] (ids: {})",
                        s.model.get_ref(),
                        self.model_ids()
                    ),
                ));
            }
            if let Some(p) = s.repetition_penalty
                && !(1.0..=2.0).contains(&p)
            {
                return Err(self.error(
                    at,
                    format!("specialists[{i}].repetition_penalty: {p} is not in [1, 2]"),
                ));
            }
            if let Some(t) = s.temperature
                && !(0.0..=5.0).contains(&t)
            {
                return Err(self.error(
                    at,
                    format!("specialists[{i}].temperature: {t} is not in [0, 5]"),
                ));
            }
            if s.max_tokens == Some(0) {
                return Err(
                    self.error(at, format!("specialists[{i}].max_tokens: must be positive"))
                );
            }
            if let Some(a) = &s.adapter {
                self.validate_adapter(&format!("specialists[{i}].adapter"), a, at.clone())?;
            }
        }
        Ok(())
    }

    /// Where a file comes from (a model, an adapter): exactly one of
    /// `path`, `known`, `url`; a `url` with the file's SHA-256. `what`
    /// names the entry, `field` prefixes `.sha256` in the message.
    fn check_source(
        &self,
        what: &str,
        field: &str,
        sources: [bool; 3],
        sha256: Option<&str>,
        at: Option<std::ops::Range<usize>>,
    ) -> Result<(), SdkError> {
        let given = sources.iter().filter(|b| **b).count();
        if given != 1 {
            return Err(self.error(
                at,
                format!("{what}: give exactly one of `path`, `known` or `url` (found {given})"),
            ));
        }
        let sha_ok =
            sha256.is_some_and(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()));
        if sources[2] && !sha_ok {
            return Err(self.error(
                at,
                format!("{field}.sha256: a `url` needs the file's SHA-256 (64 hex digits)"),
            ));
        }
        Ok(())
    }

    fn validate_adapter(
        &self,
        field: &str,
        a: &AdapterSpec,
        at: Option<std::ops::Range<usize>>,
    ) -> Result<(), SdkError> {
        self.check_source(
            field,
            field,
            [a.path.is_some(), a.known.is_some(), a.url.is_some()],
            a.sha256.as_deref(),
            at.clone(),
        )?;
        if let Some(k) = &a.known
            && arny_model_store::known_adapter(k).is_none()
        {
            let names: Vec<_> = arny_model_store::KNOWN_ADAPTERS
                .iter()
                .map(|a| a.id)
                .collect();
            return Err(self.error(
                at,
                format!(
                    "{field}.known: no known adapter `{k}` (known: {})",
                    names.join(", ")
                ),
            ));
        }
        if let Some(scale) = a.scale
            && !(scale.is_finite() && (0.0..=4.0).contains(&scale))
        {
            return Err(self.error(at, format!("{field}.scale: {scale} is not in [0, 4]")));
        }
        Ok(())
    }

    fn validate_gateway(&self) -> Result<(), SdkError> {
        let g = &self.gateway;
        if !(0.0..=1.0).contains(&g.threshold) {
            return Err(self.error(
                None,
                format!("gateway.threshold: {} is not in [0, 1]", g.threshold),
            ));
        }
        if !(0.0..=1.0).contains(&g.model_weight) {
            return Err(self.error(
                None,
                format!("gateway.model_weight: {} is not in [0, 1]", g.model_weight),
            ));
        }
        match (&g.model, g.strategy) {
            (None, Strategy::Model | Strategy::Ensemble) => {
                return Err(self.error(
                    None,
                    format!(
                        "gateway.model: strategy `{}` needs a gateway model",
                        g.strategy.name()
                    ),
                ));
            }
            (Some(m), _) if self.model(m.get_ref()).is_none() => {
                return Err(self.error(
                    Some(m.span()),
                    format!(
                        "gateway.model: no model `{}` in [[models]] (ids: {})",
                        m.get_ref(),
                        self.model_ids()
                    ),
                ));
            }
            _ => {}
        }
        if let Some(a) = &g.adapter {
            if g.strategy == Strategy::Examples {
                return Err(self.error(
                    None,
                    "gateway.adapter: the `examples` strategy uses no model; use `model` or `ensemble`".into(),
                ));
            }
            self.validate_adapter("gateway.adapter", a, None)?;
        }
        if matches!(g.strategy, Strategy::Examples | Strategy::Ensemble) {
            for (i, s) in self.specialists.iter().enumerate() {
                if s.examples.iter().filter(|e| !e.trim().is_empty()).count() < 2 {
                    return Err(self.error(
                        Some(s.name.span()),
                        format!(
                            "specialists[{i}].examples: the `{}` strategy needs at least 2 example utterances",
                            g.strategy.name()
                        ),
                    ));
                }
            }
            if g.cloud_examples.len() == 1 {
                return Err(self.error(
                    None,
                    "gateway.cloud_examples: give none or at least 2".into(),
                ));
            }
        }
        Ok(())
    }

    fn validate_plan(&self) -> Result<(), SdkError> {
        if self.plan != Plan::Universal {
            return Ok(());
        }
        let first = self.specialists[0].model.get_ref();
        for (i, s) in self.specialists.iter().enumerate() {
            if s.model.get_ref() != first {
                return Err(self.error(
                    Some(s.model.span()),
                    format!(
                        "specialists[{i}].model: plan `universal` serves every role from one model, but this names `{}` and specialists[0] names `{first}`",
                        s.model.get_ref()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), SdkError> {
        if !(self.idle_unload_secs > 0.0 && self.idle_unload_secs.is_finite()) {
            return Err(self.error(
                None,
                format!(
                    "idle_unload_secs: {} must be a positive number",
                    self.idle_unload_secs
                ),
            ));
        }
        if !(self.queue_timeout_secs >= 0.0 && self.queue_timeout_secs.is_finite()) {
            return Err(self.error(
                None,
                format!(
                    "queue_timeout_secs: {} must be a number of seconds, 0 or more",
                    self.queue_timeout_secs
                ),
            ));
        }
        if let Some(c) = &self.cloud {
            if !(c.base_url.starts_with("http://") || c.base_url.starts_with("https://")) {
                return Err(self.error(
                    None,
                    format!("cloud.base_url: `{}` is not an http(s) URL", c.base_url),
                ));
            }
            if !(c.timeout_secs > 0.0 && c.connect_timeout_secs > 0.0) {
                return Err(self.error(
                    None,
                    "cloud.timeout_secs and cloud.connect_timeout_secs must be positive".into(),
                ));
            }
        }
        Ok(())
    }

    fn model_ids(&self) -> String {
        self.models
            .iter()
            .map(|m| m.id.get_ref().as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

/// toml's own message, with the offending line quoted so the field is named
/// even where the message only talks about the value.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let line = line_of(text, span.start);
            let src = text.lines().nth(line - 1).unwrap_or("").trim();
            if src.is_empty() {
                msg
            } else {
                format!("{msg} (in `{src}`)")
            }
        }
        None => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Manifest, SdkError> {
        Manifest::parse(s, "test.toml", Path::new("/tmp"))
    }

    const MINI: &str = r#"
[[models]]
id = "m"
engine = "gguf"
path = "m.gguf"

[[specialists]]
name = "math"
model = "m"
system_prompt = "You do math."
examples = ["2+2", "3*3"]

[[specialists]]
name = "chat"
model = "m"
system_prompt = "You chat."
examples = ["hello", "how are you"]
"#;

    #[test]
    fn builtin_manifest_is_valid() {
        let m = Manifest::builtin();
        assert_eq!(m.plan, Plan::Hybrid);
        assert_eq!(m.gateway.threshold, 0.7);
        assert_eq!(m.idle_unload_secs, 30.0);
        assert_eq!(m.specialists.len(), 3);
        assert!(!m.cloud_allowed());
    }

    #[test]
    fn defaults_and_sizes() {
        let m = parse(MINI).unwrap();
        assert_eq!(m.memory_budget, ByteSize(1 << 30));
        assert_eq!(parse_bytes("512 MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("2GB").unwrap(), 2_000_000_000);
        assert!(parse_bytes("12 parsecs").is_err());
    }

    fn err_of(s: &str) -> (Option<usize>, String) {
        match parse(s) {
            Err(SdkError::Manifest { line, message, .. }) => (line, message),
            other => panic!("expected a manifest error, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field_and_line() {
        let (line, msg) = err_of(&MINI.replace(
            "model = \"m\"\nsystem_prompt = \"You chat.\"",
            "model = \"nope\"\nsystem_prompt = \"You chat.\"",
        ));
        assert_eq!(line, Some(15), "{msg}");
        assert!(
            msg.contains("specialists[1].model") && msg.contains("nope"),
            "{msg}"
        );

        let (line, msg) = err_of(&format!("plan = \"hybridd\"\n{MINI}"));
        assert_eq!(line, Some(1));
        assert!(msg.contains("plan = \"hybridd\""), "{msg}");

        let (line, msg) =
            err_of(&MINI.replace("path = \"m.gguf\"", "path = \"m.gguf\"\ncontxt_length = 5"));
        assert_eq!(line, Some(6), "{msg}");
        assert!(msg.contains("contxt_length"), "{msg}");

        let (_, msg) = err_of(&format!("memory_budget = \"12 parsecs\"\n{MINI}"));
        assert!(msg.contains("parsecs"), "{msg}");

        let (line, msg) = err_of(&MINI.replace("name = \"chat\"", "name = \"cloud\""));
        assert_eq!(line, Some(14));
        assert!(msg.contains("reserved"), "{msg}");

        let (_, msg) = err_of(&format!("[gateway]\nstrategy = \"model\"\n{MINI}"));
        assert!(msg.contains("gateway.model"), "{msg}");

        let (_, msg) =
            err_of(&MINI.replace("path = \"m.gguf\"", "path = \"m.gguf\"\nknown = \"x\""));
        assert!(msg.contains("exactly one of"), "{msg}");
    }

    #[test]
    fn adapters_are_checked_like_models() {
        let with = |adapter: &str| {
            MINI.replace(
                "system_prompt = \"You do math.\"",
                &format!("system_prompt = \"You do math.\"\nadapter = {adapter}"),
            )
        };
        let m = parse(&with("{ known = \"math-smollm2-135m\", scale = 0.5 }")).unwrap();
        let a = m.specialists[0].adapter.as_ref().unwrap();
        assert_eq!(
            (a.known.as_deref(), a.scale),
            (Some("math-smollm2-135m"), Some(0.5))
        );
        for (adapter, needle) in [
            ("{ known = \"nope\" }", "no known adapter `nope`"),
            (
                "{ path = \"a.gguf\", known = \"math-smollm2-135m\" }",
                "exactly one of",
            ),
            ("{ url = \"https://x/a.gguf\" }", "adapter.sha256"),
            ("{ path = \"a.gguf\", scale = -1.0 }", "adapter.scale"),
            ("{ path = \"a.gguf\", rank = 4 }", "rank"),
        ] {
            let (line, msg) = err_of(&with(adapter));
            assert!(msg.contains(needle), "{adapter}: {msg}");
            assert!(line.is_some(), "{adapter}: no line in {msg}");
        }
        assert!(
            Manifest::builtin()
                .specialist("math")
                .is_some_and(|s| s.adapter.is_some()),
            "the built-in math specialist is the shipped adapter"
        );
    }

    #[test]
    fn a_gateway_adapter_needs_the_model_strategy() {
        let with = |gateway: &str| format!("{MINI}\n[gateway]\n{gateway}\n");
        let m = parse(&with(
            "strategy = \"model\"\nmodel = \"m\"\nfew_shot = 0\nadapter = { path = \"gw.gguf\" }",
        ))
        .unwrap();
        assert_eq!(
            m.gateway.adapter.as_ref().and_then(|a| a.name()),
            Some("gw.gguf")
        );
        let (_, msg) = err_of(&with("adapter = { path = \"gw.gguf\" }"));
        assert!(msg.contains("gateway.adapter"), "{msg}");
        let (_, msg) = err_of(&with(
            "strategy = \"model\"\nmodel = \"m\"\nadapter = { known = \"nope\" }",
        ));
        assert!(msg.contains("gateway.adapter.known"), "{msg}");
    }

    #[test]
    fn manifests_built_in_code_are_validated() {
        let mut m = parse(MINI).unwrap();
        m.source = None;
        m.specialists[1].model = Spanned::new(0..0, "nope".to_string());
        match m.validate() {
            Err(SdkError::Manifest { line, message, .. }) => {
                assert_eq!(line, None);
                assert!(message.contains("nope"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        m.specialists.clear();
        assert!(matches!(m.validate(), Err(SdkError::Manifest { .. })));
        m.models.clear();
        assert!(matches!(m.validate(), Err(SdkError::Manifest { .. })));
    }

    #[test]
    fn universal_plan_needs_one_model() {
        let two = MINI.replace("[[specialists]]\nname = \"chat\"\nmodel = \"m\"", "[[models]]\nid = \"n\"\nengine = \"gguf\"\npath = \"n.gguf\"\n\n[[specialists]]\nname = \"chat\"\nmodel = \"n\"");
        assert!(parse(&two).is_ok());
        let (_, msg) = err_of(&format!("plan = \"universal\"\n{two}"));
        assert!(msg.contains("universal"), "{msg}");
    }

    #[test]
    fn privacy_local_only_in_either_place() {
        let cloud = "\n[cloud]\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"x\"\n";
        assert!(parse(&format!("{MINI}{cloud}")).unwrap().cloud_allowed());
        assert!(
            !parse(&format!("privacy = \"local_only\"\n{MINI}{cloud}"))
                .unwrap()
                .cloud_allowed()
        );
        assert!(
            !parse(&format!("{MINI}{cloud}privacy = \"local_only\"\n"))
                .unwrap()
                .cloud_allowed()
        );
    }
}
