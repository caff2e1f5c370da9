//! What a request may change about how a specialist answers, and the one
//! JSON form of it that the C ABI, the browser API and the server share.

use arny_engine_api::{Constraint, SamplingParams};
use serde::{Deserialize, Serialize};

use crate::AskRequest;

/// Sampling settings a request changes. Each field set replaces that one
/// setting of the specialist's; the others stay as the specialist has them,
/// so a request that sets only `seed` keeps the specialist's temperature
/// and repetition penalty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingOverrides {
    pub temperature: Option<f32>,
    pub top_k: Option<u32>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<u64>,
}

impl SamplingOverrides {
    /// `base` with the fields this sets replaced.
    pub fn applied_to(&self, base: &SamplingParams) -> SamplingParams {
        let mut p = base.clone();
        if let Some(t) = self.temperature {
            p.temperature = t;
        }
        if let Some(k) = self.top_k {
            p.top_k = k;
        }
        if let Some(v) = self.top_p {
            p.top_p = v;
        }
        if let Some(v) = self.min_p {
            p.min_p = v;
        }
        if let Some(v) = self.repetition_penalty {
            p.repetition_penalty = v;
        }
        if let Some(v) = self.presence_penalty {
            p.presence_penalty = v;
        }
        if let Some(v) = self.frequency_penalty {
            p.frequency_penalty = v;
        }
        if self.seed.is_some() {
            p.seed = self.seed;
        }
        p
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A request's options as JSON: `{"specialist", "max_tokens",
/// "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
/// "presence_penalty", "frequency_penalty", "seed", "stop": [...],
/// "json_schema": {...}, "json_object": true, "regex": "...",
/// "grammar": "..." (Lark), "logprobs": true, "top_logprobs": n}`, every key
/// optional and at most one of the four constraint keys. JavaScript's
/// camelCase spellings (`maxTokens`, `jsonSchema`, ...) are accepted too.
/// An unknown key is an error, never ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AskOptions {
    /// Skip the gateway and ask this specialist.
    pub specialist: Option<String>,
    #[serde(alias = "maxTokens")]
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    #[serde(alias = "topK")]
    pub top_k: Option<u32>,
    #[serde(alias = "topP")]
    pub top_p: Option<f32>,
    #[serde(alias = "minP")]
    pub min_p: Option<f32>,
    #[serde(alias = "repetitionPenalty")]
    pub repetition_penalty: Option<f32>,
    #[serde(alias = "presencePenalty")]
    pub presence_penalty: Option<f32>,
    #[serde(alias = "frequencyPenalty")]
    pub frequency_penalty: Option<f32>,
    pub seed: Option<u64>,
    #[serde(default)]
    pub stop: Vec<String>,
    /// The answer is JSON valid under this schema.
    #[serde(alias = "jsonSchema")]
    pub json_schema: Option<serde_json::Value>,
    /// The answer is a JSON object.
    #[serde(default, alias = "jsonObject")]
    pub json_object: bool,
    /// The answer matches this regular expression.
    pub regex: Option<String>,
    /// The answer follows this Lark grammar.
    pub grammar: Option<String>,
    #[serde(default)]
    pub logprobs: bool,
    #[serde(default, alias = "topLogprobs")]
    pub top_logprobs: u32,
}

impl AskOptions {
    /// Parses options JSON (the C ABI's `options_json`, the fuzz target's);
    /// blank text is the defaults.
    pub fn from_json(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    /// The constraint these options ask for; more than one is an error.
    pub fn constraint(&self) -> Result<Option<Constraint>, String> {
        let mut set = Vec::new();
        if let Some(s) = &self.json_schema {
            set.push(("json_schema", Constraint::JsonSchema(s.clone())));
        }
        if self.json_object {
            set.push(("json_object", Constraint::JsonObject));
        }
        if let Some(r) = &self.regex {
            set.push(("regex", Constraint::Regex(r.clone())));
        }
        if let Some(g) = &self.grammar {
            set.push(("grammar", Constraint::Lark(g.clone())));
        }
        if set.len() > 1 {
            let names: Vec<_> = set.iter().map(|(n, _)| *n).collect();
            return Err(format!(
                "at most one constraint per request, got {}",
                names.join(" and ")
            ));
        }
        Ok(set.pop().map(|(_, c)| c))
    }

    /// Puts these options on `request`; fails on conflicting constraints.
    pub fn apply(self, request: &mut AskRequest) -> Result<(), String> {
        request.constraint = self.constraint()?;
        request.specialist = self.specialist;
        request.max_tokens = self.max_tokens;
        request.stop = self.stop;
        request.logprobs = self.logprobs;
        request.top_logprobs = self.top_logprobs;
        request.sampling = SamplingOverrides {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed: self.seed,
        };
        Ok(())
    }

    /// A request for `text` with these options.
    pub fn request(self, text: impl Into<String>) -> Result<AskRequest, String> {
        let mut r = AskRequest::new(text);
        self.apply(&mut r)?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_fields_set_change() {
        let base = SamplingParams {
            temperature: 0.0,
            repetition_penalty: 1.1,
            ..SamplingParams::default()
        };
        let seed_only = SamplingOverrides {
            seed: Some(7),
            ..SamplingOverrides::default()
        };
        let p = seed_only.applied_to(&base);
        assert_eq!(p.temperature, 0.0);
        assert_eq!(p.repetition_penalty, 1.1);
        assert_eq!(p.seed, Some(7));
        assert_eq!(SamplingOverrides::default().applied_to(&base), base);
    }

    #[test]
    fn json_in_either_spelling_and_unknown_keys_refused() {
        let o: AskOptions =
            serde_json::from_str(r#"{"maxTokens": 5, "topP": 0.5, "stop": ["x"]}"#).unwrap();
        assert_eq!(o.max_tokens, Some(5));
        assert_eq!(o.top_p, Some(0.5));
        let r = o.request("hi").unwrap();
        assert_eq!(r.max_tokens, Some(5));
        assert_eq!(r.sampling.top_p, Some(0.5));
        assert_eq!(r.stop, vec!["x".to_string()]);
        let err = serde_json::from_str::<AskOptions>(r#"{"temprature": 1}"#).unwrap_err();
        assert!(err.to_string().contains("temprature"), "{err}");
    }

    #[test]
    fn one_constraint_at_most() {
        let o: AskOptions =
            serde_json::from_str(r#"{"jsonSchema": {"type": "integer"}, "maxTokens": 4}"#).unwrap();
        let r = o.request("hi").unwrap();
        assert_eq!(
            r.constraint,
            Some(Constraint::JsonSchema(
                serde_json::json!({"type": "integer"})
            ))
        );
        let two: AskOptions =
            serde_json::from_str(r#"{"regex": "a+", "json_object": true}"#).unwrap();
        let Err(err) = two.request("hi") else {
            panic!("two constraints accepted")
        };
        assert!(err.contains("json_object and regex"), "{err}");
    }
}
