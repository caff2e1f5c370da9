//! Constrained decoding: output that must match a JSON Schema, a regular
//! expression or a Lark grammar, enforced token by token.
//!
//! The constraint is compiled by `llguidance` against the model's own token
//! bytes, so it works the same on every engine: at each step the matcher
//! computes the set of tokens that keep the output on track, the sampler
//! only ever picks among them, and the picked token advances the matcher.
//! Nothing here trusts the model to comply: a constraint is enforced or the
//! request fails with a typed error.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, SimpleVob, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde::{Deserialize, Serialize};

use crate::{EngineError, Model, Result, TokenId};

/// What generated text must match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum Constraint {
    /// A JSON document valid under this JSON Schema (draft 2020-12 and
    /// earlier). Keywords the compiler cannot enforce are refused, never
    /// dropped.
    JsonSchema(serde_json::Value),
    /// Any JSON object (OpenAI's `json_object` response format).
    JsonObject,
    /// Text matching this regular expression in full.
    Regex(String),
    /// Text derived from this Lark grammar's `start` rule (llguidance's
    /// Lark dialect; it may embed `%json { ... }` schemas).
    Lark(String),
}

impl Constraint {
    /// Short name for logs and error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::JsonSchema(_) => "JSON Schema",
            Self::JsonObject => "JSON object",
            Self::Regex(_) => "regex",
            Self::Lark(_) => "Lark grammar",
        }
    }

    fn grammar(&self) -> TopLevelGrammar {
        match self {
            Self::JsonSchema(schema) => TopLevelGrammar::from_json_schema(compact_json(schema)),
            Self::JsonObject => {
                TopLevelGrammar::from_json_schema(compact_json(&serde_json::json!({
                    "type": "object"
                })))
            }
            Self::Regex(rx) => TopLevelGrammar::from_regex(rx),
            Self::Lark(src) => TopLevelGrammar::from_lark(src.clone()),
        }
    }
}

/// JSON without free whitespace between tokens. With flexible whitespace a
/// small model can emit newlines forever and never close the object; the
/// compact form keeps every step meaningful. A schema that sets its own
/// `x-guidance` options keeps them.
fn compact_json(schema: &serde_json::Value) -> serde_json::Value {
    let mut schema = schema.clone();
    if let Some(obj) = schema.as_object_mut() {
        obj.entry("x-guidance").or_insert_with(|| {
            serde_json::json!({
                "whitespace_flexible": false,
                "item_separator": ", ",
                "key_separator": ": ",
            })
        });
    }
    schema
}

/// A compiled constraint following one generation.
pub struct ConstraintState {
    matcher: Matcher,
    eog: Vec<TokenId>,
    trie_eos: TokenId,
    vocab: usize,
    /// Tokens generated under the constraint.
    consumed: usize,
}

impl ConstraintState {
    /// Compiles `constraint` for `model`'s vocabulary. An unsupported
    /// schema keyword, a bad regex or grammar is
    /// [`EngineError::InvalidConstraint`] naming the problem; nothing has
    /// been generated yet.
    pub fn new(model: &dyn Model, constraint: &Constraint) -> Result<Self> {
        let vocab = Vocab::of(model)?;
        let parser = vocab.factory.create_parser(constraint.grammar());
        let matcher = Matcher::new(parser);
        if let Some(e) = matcher.get_error() {
            return Err(EngineError::InvalidConstraint(format!(
                "{}: {}",
                constraint.kind(),
                clean_error(&e)
            )));
        }
        Ok(Self {
            matcher,
            eog: vocab.eog.clone(),
            trie_eos: vocab.trie_eos,
            vocab: vocab.size,
            consumed: 0,
        })
    }

    /// The tokens allowed next. When the constraint may end here, every
    /// end-of-generation token is allowed, not only the one the matcher
    /// knows as EOS.
    pub fn mask(&mut self) -> Result<TokenMask> {
        let mut vob = self.matcher.compute_mask().map_err(|e| failed(&e))?;
        if vob.is_allowed(self.trie_eos) {
            for &t in &self.eog {
                vob.allow_token(t);
            }
        }
        if vob.is_zero() {
            return Err(EngineError::ConstraintFailed(
                "no token can continue the output".into(),
            ));
        }
        Ok(TokenMask {
            vob,
            vocab: self.vocab,
        })
    }

    /// Advances past a sampled, allowed token.
    pub fn consume(&mut self, token: TokenId) -> Result<()> {
        self.matcher.consume_token(token).map_err(|e| failed(&e))?;
        self.consumed += 1;
        Ok(())
    }

    /// Whether the output so far is a complete match.
    pub fn is_accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }

    /// Whether nothing but end-of-generation may follow.
    pub fn is_stopped(&self) -> bool {
        self.matcher.is_stopped()
    }
}

fn failed(e: &anyhow::Error) -> EngineError {
    EngineError::ConstraintFailed(clean_error(&e.to_string()))
}

/// llguidance prefixes messages with its own context lines; keep them on
/// one line so they read as one error.
fn clean_error(e: &str) -> String {
    e.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The set of tokens a constraint allows at one step.
pub struct TokenMask {
    vob: SimpleVob,
    vocab: usize,
}

impl TokenMask {
    pub fn allows(&self, token: TokenId) -> bool {
        (token as usize) < self.vocab && self.vob.is_allowed(token)
    }

    /// Calls `f` with each allowed token, in increasing order.
    pub fn for_each_allowed(&self, mut f: impl FnMut(TokenId)) {
        let vocab = self.vocab;
        self.vob.iter_set_entries(|i| {
            if i < vocab {
                f(i as TokenId)
            }
        });
    }

    /// How many tokens are allowed.
    pub fn count(&self) -> usize {
        self.vob.num_set()
    }

    /// The one allowed token, when there is exactly one.
    pub fn only(&self) -> Option<TokenId> {
        if self.count() != 1 {
            return None;
        }
        let mut found = None;
        self.vob.iter_set_entries(|i| found = Some(i as TokenId));
        found
    }
}

/// A model's vocabulary as llguidance sees it, with the compiled lexer
/// tables that every constraint on it shares. Building it walks the whole
/// vocabulary (tens of milliseconds for 49k tokens), so it is kept per
/// distinct vocabulary.
struct Vocab {
    factory: ParserFactory,
    eog: Vec<TokenId>,
    trie_eos: TokenId,
    size: usize,
}

/// Vocabularies in use, most recent last. Keyed by a hash of every token's
/// bytes, so two models share an entry only when their tokens are identical.
static VOCABS: Mutex<Vec<(u64, Arc<Vocab>)>> = Mutex::new(Vec::new());
const KEEP_VOCABS: usize = 4;

impl Vocab {
    fn of(model: &dyn Model) -> Result<Arc<Self>> {
        let size = model.info().vocab_size as usize;
        let special = model.special_tokens();
        // The key covers everything the tables are built from; the
        // control-token marks follow from the bytes and the tokenizer, so
        // they are only worked out on a miss.
        let mut hasher = DefaultHasher::new();
        (size, &special.end_of_generation, special.eos, special.bos).hash(&mut hasher);
        for id in 0..size as TokenId {
            model.token_bytes(id)?.hash(&mut hasher);
        }
        let key = hasher.finish();
        {
            let mut cache = VOCABS.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(i) = cache.iter().position(|(k, _)| *k == key) {
                let entry = cache.remove(i);
                let vocab = entry.1.clone();
                cache.push(entry);
                return Ok(vocab);
            }
        }
        let mut words = Vec::with_capacity(size);
        for id in 0..size as TokenId {
            let bytes = model.token_bytes(id)?;
            words.push(
                if special.is_end_of_generation(id) || is_control(model, id, bytes) {
                    // llguidance's marker for tokens that are never text.
                    let mut w = Vec::with_capacity(bytes.len() + 1);
                    w.push(TokTrie::SPECIAL_TOKEN_MARKER);
                    w.extend_from_slice(bytes);
                    w
                } else {
                    bytes.to_vec()
                },
            );
        }
        let eog = special.end_of_generation.clone();
        let trie_eos = special
            .eos
            .filter(|e| eog.contains(e))
            .or_else(|| eog.first().copied())
            .ok_or_else(|| {
                EngineError::Unsupported(
                    "constrained output on a model without an end-of-generation token".into(),
                )
            })?;
        let info = TokRxInfo {
            tok_eos: trie_eos,
            tok_bos: special.bos,
            ..TokRxInfo::new(size as u32, trie_eos)
        };
        let trie = TokTrie::from(&info, &words);
        let env = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new_simple(&(env as llguidance::toktrie::TokEnv))
            .map_err(|e| EngineError::ConstraintFailed(format!("vocabulary: {e}")))?;
        // Errors come back as values; llguidance must not write to stderr
        // from inside an app.
        factory.quiet();
        let vocab = Arc::new(Self {
            factory,
            eog,
            trie_eos,
            size,
        });
        let mut cache = VOCABS.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= KEEP_VOCABS {
            cache.remove(0);
        }
        cache.push((key, vocab.clone()));
        Ok(vocab)
    }
}

/// A control token (`<|im_start|>`, `<tool_call>`) is one whose text only
/// becomes that token when special texts are parsed. Only texts shaped like
/// markup are tried, so this costs a few hundred tokenizer calls.
fn is_control(model: &dyn Model, id: TokenId, bytes: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    if !(text.len() >= 3 && text.starts_with('<') && text.ends_with('>')) {
        return false;
    }
    let as_special = model.tokenize(text, false, true);
    let as_text = model.tokenize(text, false, false);
    matches!((as_special, as_text), (Ok(s), Ok(t)) if s == [id] && t != [id])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::MockModel;
    use crate::{GenerateRequest, Prompt, SamplingParams, generate};

    fn run(constraint: Constraint, max_tokens: u32) -> Result<crate::Completion> {
        let model = MockModel::new();
        futures::executor::block_on(async {
            let mut session = model.new_session(Default::default()).await?;
            let req = GenerateRequest {
                max_tokens,
                constraint: Some(constraint),
                ..GenerateRequest::new(Prompt::Text("hi".into()))
            };
            generate(model.as_ref(), session.as_mut(), req, |_| {}).await
        })
    }

    #[test]
    fn regex_overrides_what_the_model_wants() {
        // The mock model wants "Hello, ..."; the mask leaves it digits.
        let done = run(Constraint::Regex("[0-9]{3}".into()), 16).unwrap();
        assert_eq!(done.text.len(), 3, "{done:?}");
        assert!(done.text.bytes().all(|b| b.is_ascii_digit()), "{done:?}");
        assert_eq!(done.finish_reason, crate::FinishReason::Eos);
        assert!(!done.incomplete);
    }

    #[test]
    fn the_model_keeps_its_choice_where_the_constraint_allows_it() {
        let done = run(Constraint::Regex("Hello, w.{0,12}".into()), 64).unwrap();
        assert!(done.text.starts_with("Hello, wörld"), "{done:?}");
        assert!(!done.incomplete);
    }

    #[test]
    fn running_out_of_tokens_is_reported_incomplete() {
        let done = run(Constraint::Regex("[0-9]{30}".into()), 5).unwrap();
        assert_eq!(done.finish_reason, crate::FinishReason::MaxTokens);
        assert!(done.incomplete);
        assert_eq!(done.text.len(), 5);
    }

    #[test]
    fn json_schema_output_parses() {
        let schema = serde_json::json!({
            "type": "object",
            "properties": {"n": {"type": "integer", "minimum": 3, "maximum": 7}},
            "required": ["n"],
            "additionalProperties": false
        });
        let done = run(Constraint::JsonSchema(schema), 64).unwrap();
        let v: serde_json::Value = serde_json::from_str(&done.text).unwrap();
        let n = v["n"].as_i64().unwrap();
        assert!((3..=7).contains(&n), "{v}");
    }

    #[test]
    fn unsupported_and_malformed_constraints_are_refused_by_name() {
        let err = run(
            Constraint::JsonSchema(serde_json::json!({"type": "string", "contentEncoding": "base64", "if": {"minLength": 2}, "then": {"maxLength": 3}})),
            8,
        )
        .unwrap_err();
        match &err {
            EngineError::InvalidConstraint(m) => assert!(m.contains("if"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            run(Constraint::Regex("(unclosed".into()), 8),
            Err(EngineError::InvalidConstraint(_))
        ));
        assert!(matches!(
            run(Constraint::Lark("start: undefined_rule".into()), 8),
            Err(EngineError::InvalidConstraint(_))
        ));
    }

    #[test]
    fn ignore_eos_and_a_constraint_do_not_mix() {
        let model = MockModel::new();
        let err = futures::executor::block_on(async {
            let mut session = model.new_session(Default::default()).await.unwrap();
            let req = GenerateRequest {
                ignore_eos: true,
                sampling: SamplingParams::greedy(),
                constraint: Some(Constraint::JsonObject),
                ..GenerateRequest::new(Prompt::Text("hi".into()))
            };
            generate(model.as_ref(), session.as_mut(), req, |_| {}).await
        })
        .unwrap_err();
        assert!(matches!(err, EngineError::InvalidInput(_)), "{err:?}");
    }
}
