//! The TCK cases. Each takes the loaded target and panics on a violation.

use std::sync::Arc;

use arny_engine_api::{
    Adapter, ChatMessage, Completion, Constraint, EngineError, FinishReason, GenerateRequest,
    LoadOptions, LogitsRequest, Model, ModelSource, Prompt, SamplingParams, Session,
    SessionOptions, TokenEvent, next_token_logits, prompt_tokens, sampler::argmax,
    teacher_forced_logits,
};

use crate::{Tck, Which};

async fn session(m: &dyn Model) -> Box<dyn Session> {
    session_ctx(m, None).await
}

async fn session_ctx(m: &dyn Model, ctx: Option<u32>) -> Box<dyn Session> {
    m.new_session(SessionOptions {
        context_length: ctx,
        ..Default::default()
    })
    .await
    .expect("new session")
}

/// Runs `req` on `s`, collecting the events.
async fn run_on(
    m: &dyn Model,
    s: &mut dyn Session,
    req: GenerateRequest,
) -> (Vec<TokenEvent>, Completion) {
    let mut events = Vec::new();
    let done = arny_engine_api::generate(m, s, req, |e| events.push(e.clone()))
        .await
        .expect("generation");
    (events, done)
}

async fn run(m: &dyn Model, req: GenerateRequest) -> (Vec<TokenEvent>, Completion) {
    let mut s = session(m).await;
    run_on(m, s.as_mut(), req).await
}

fn greedy(user: &str, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        sampling: SamplingParams::greedy(),
        max_tokens,
        ..GenerateRequest::chat(user)
    }
}

fn joined(events: &[TokenEvent], done: &Completion) -> String {
    events.iter().map(|e| e.text.as_str()).collect::<String>() + &done.tail
}

pub async fn info_is_consistent(t: &Tck) {
    let m = t.model.as_ref();
    let info = m.info();
    let facts = &t.facts;
    assert_eq!(info.engine, t.target.engine.id());
    assert_eq!(info.architecture, "llama");
    assert!(
        facts.parameters.contains(&info.parameters),
        "{}",
        info.parameters
    );
    assert_eq!(info.vocab_size, facts.vocab_size);
    assert_eq!(info.trained_context_length, facts.trained_context_length);
    assert!(info.context_length > 0 && info.context_length <= info.max_context_length);
    assert!(info.max_context_length <= info.trained_context_length);
    assert!(info.resident_bytes > 0 && info.file_bytes > 0, "{info:?}");
    if facts.which == Which::Reference {
        assert!(info.resident_bytes > 10_000_000, "{}", info.resident_bytes);
    }
    assert!(!info.device.is_empty());
    assert!(info.capabilities.logits);
    let s = session(m).await;
    assert_eq!(s.context_length(), info.context_length as usize);
    assert!(s.tokens().is_empty());
    assert!(s.resident_bytes() > 0);
}

pub async fn tokenizer_round_trips(t: &Tck) {
    let m = t.model.as_ref();
    let samples = [
        "Hello, world!",
        "  leading and   inner   spaces\t\ttabs\n\nnewlines  ",
        "café naïve façade — “quotes”",
        "日本語のテキスト と 中文",
        "emoji 🎉🚀 and ZWJ 👩‍💻",
        "numbers 12345 3.14159 -42",
        "code: fn main() { println!(\"{}\", 1 + 1); }",
    ];
    for s in samples {
        let toks = m.tokenize(s, false, false).expect("tokenize");
        assert!(!toks.is_empty(), "{s:?}");
        assert_eq!(m.detokenize(&toks).expect("detokenize"), s);
    }
    assert!(m.tokenize("", false, false).expect("empty").is_empty());
    let vocab = m.info().vocab_size;
    assert!(matches!(
        m.token_bytes(vocab),
        Err(EngineError::InvalidInput(_))
    ));
}

pub async fn special_tokens_parse(t: &Tck) {
    let m = t.model.as_ref();
    let sp = m.special_tokens();
    let eos = sp.eos.expect("eos");
    assert!(sp.is_end_of_generation(eos));
    // `<|im_end|>` is one token when special texts are parsed, several
    // ordinary ones when they are not.
    let parsed = m.tokenize("<|im_end|>", false, true).expect("tokenize");
    assert_eq!(parsed, vec![eos]);
    let plain = m.tokenize("<|im_end|>", false, false).expect("tokenize");
    assert!(plain.len() > 1, "{plain:?}");
}

/// Rendered by Python's jinja2 from the model's own template; see
/// `fixtures/make_chat_template_fixture.py`.
const CHAT_FIXTURE: &str = include_str!("../fixtures/chat_template_smollm2.json");

#[derive(serde::Deserialize)]
struct ChatFixture {
    template_sha256: String,
    cases: Vec<ChatCase>,
}

#[derive(serde::Deserialize)]
struct ChatCase {
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    expected: String,
}

pub async fn chat_template_matches_reference(t: &Tck) {
    use sha2::Digest;
    let m = t.model.as_ref();
    let fixture: ChatFixture = serde_json::from_str(CHAT_FIXTURE).expect("fixture");
    // The engine must expose the model's own template, not a stand-in.
    let source = m
        .chat_template()
        .expect("the model carries a template")
        .source();
    let digest: String = sha2::Sha256::digest(source.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        digest, fixture.template_sha256,
        "template differs from the model's"
    );
    assert!(fixture.cases.len() >= 10);
    for case in &fixture.cases {
        let got = m
            .render_chat(&case.messages, case.add_generation_prompt)
            .expect("render");
        assert_eq!(got, case.expected, "messages {:?}", case.messages);
    }
}

pub async fn greedy_answers_two_plus_two(t: &Tck) {
    let m = t.model.as_ref();
    let (events, done) = run(m, greedy("What is 2+2?", 64)).await;
    assert!(done.text.contains('4'), "{:?}", done.text);
    assert_eq!(done.finish_reason, FinishReason::Eos);
    assert_eq!(events.len(), done.tokens.len());
    assert!(
        done.tokens
            .iter()
            .all(|&t| !m.special_tokens().is_end_of_generation(t))
    );
    assert_eq!(joined(&events, &done), done.text);
    let u = &done.usage;
    assert_eq!(u.generated_tokens, done.tokens.len());
    assert_eq!(u.prefill_tokens, u.prompt_tokens);
    assert!(u.ttft_ms > 0.0 && u.prefill_tok_s > 0.0 && u.decode_tok_s > 0.0);
}

/// On random weights the model wants nothing in particular: the output is
/// valid only because every step was masked.
pub async fn constraint_holds_whatever_the_logits(t: &Tck) {
    let m = t.model.as_ref();
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "n": {"type": "integer", "minimum": 1, "maximum": 9},
            "color": {"enum": ["red", "green"]}
        },
        "required": ["n", "color"],
        "additionalProperties": false
    });
    for sampling in [
        SamplingParams::greedy(),
        SamplingParams::with_temperature(1.0),
    ] {
        let req = GenerateRequest {
            sampling,
            constraint: Some(Constraint::JsonSchema(schema.clone())),
            ..greedy("Pick a number and a color.", 64)
        };
        let (events, done) = run(m, req).await;
        assert!(!done.incomplete, "{done:?}");
        assert_eq!(done.finish_reason, FinishReason::Eos);
        assert_eq!(joined(&events, &done), done.text);
        let v: serde_json::Value = serde_json::from_str(&done.text).expect(&done.text);
        assert!((1..=9).contains(&v["n"].as_i64().unwrap()), "{v}");
        assert!(
            ["red", "green"].contains(&v["color"].as_str().unwrap()),
            "{v}"
        );
    }
    // Too few tokens to finish: says so.
    let req = GenerateRequest {
        constraint: Some(Constraint::Regex("[a-z]{40}".into())),
        ..greedy("Spell a long word.", 3)
    };
    let (_, done) = run(m, req).await;
    assert_eq!(done.finish_reason, FinishReason::MaxTokens);
    assert!(done.incomplete);
    // A keyword the compiler does not enforce is refused before any token.
    let req = GenerateRequest {
        constraint: Some(Constraint::JsonSchema(
            serde_json::json!({"type": "object", "not": {"required": ["x"]}}),
        )),
        ..greedy("hi", 8)
    };
    let mut s = session(m).await;
    match arny_engine_api::generate(m, s.as_mut(), req, |_| {}).await {
        Err(EngineError::InvalidConstraint(msg)) => {
            assert!(msg.contains("\"not\""), "{msg}")
        }
        other => panic!("{other:?}"),
    }
    assert!(s.tokens().is_empty(), "nothing may run before the refusal");
}

/// Log-probabilities: the greedy choice is the top alternative, and the
/// alternatives come best first.
pub async fn top_logprobs_rank_the_choice(t: &Tck) {
    let m = t.model.as_ref();
    let req = GenerateRequest {
        logprobs: true,
        top_logprobs: 5,
        ..greedy("Name a fruit.", 6)
    };
    let (events, _) = run(m, req).await;
    assert!(!events.is_empty());
    for e in &events {
        assert_eq!(e.top_logprobs.len(), 5, "{e:?}");
        assert_eq!(e.top_logprobs[0].0, e.token, "{e:?}");
        assert!(
            (e.top_logprobs[0].1 - e.logprob.unwrap()).abs() < 1e-4,
            "{e:?}"
        );
        assert!(e.top_logprobs.windows(2).all(|w| w[0].1 >= w[1].1), "{e:?}");
        assert!(e.top_logprobs.iter().all(|(_, lp)| *lp <= 0.0));
    }
}

/// The real model, held to a schema, still answers the question.
pub async fn constrained_json_names_the_capital(t: &Tck) {
    let m = t.model.as_ref();
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
        "additionalProperties": false
    });
    let req = GenerateRequest {
        constraint: Some(Constraint::JsonSchema(schema)),
        ..greedy("What is the capital of France? Reply in JSON.", 32)
    };
    let (_, done) = run(m, req).await;
    assert!(!done.incomplete, "{done:?}");
    let v: serde_json::Value = serde_json::from_str(&done.text).expect(&done.text);
    assert_eq!(v, serde_json::json!({"city": "Paris"}), "{}", done.text);
}

pub async fn greedy_is_deterministic_across_sessions(t: &Tck) {
    let m = t.model.as_ref();
    let req = || greedy("Name three colors.", 32);
    let (_, a) = run(m, req()).await;
    let (_, b) = run(m, req()).await;
    assert_eq!(a.tokens, b.tokens);
    // Same prompt again on a used session: the cache is reused, the answer
    // must not change.
    let mut s = session(m).await;
    let (_, c) = run_on(m, s.as_mut(), req()).await;
    let (_, d) = run_on(m, s.as_mut(), req()).await;
    assert_eq!(a.tokens, c.tokens);
    assert_eq!(a.tokens, d.tokens);
    assert!(d.usage.cached_tokens > 0);
}

pub async fn max_tokens_is_exact(t: &Tck) {
    let m = t.model.as_ref();
    for n in [1u32, 7] {
        let req = GenerateRequest {
            ignore_eos: true,
            ..greedy("Tell me a long story about a dragon.", n)
        };
        let (events, done) = run(m, req).await;
        assert_eq!(events.len(), n as usize);
        assert_eq!(done.tokens.len(), n as usize);
        assert_eq!(done.finish_reason, FinishReason::MaxTokens);
        assert_eq!(joined(&events, &done), done.text);
    }
}

pub async fn stop_string_truncates_output(t: &Tck) {
    let m = t.model.as_ref();
    let prompt = "Tell me a long story about a dragon.";
    let story = |stop: Vec<String>| GenerateRequest {
        stop,
        ignore_eos: true,
        ..greedy(prompt, 48)
    };
    let (_, full) = run(m, story(Vec::new())).await;
    // A stop string taken from the middle of the real answer: three
    // characters from its middle; generation must end where that text first
    // appears.
    let chars: Vec<char> = full.text.chars().collect();
    assert!(chars.len() >= 8, "answer too short: {:?}", full.text);
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
    let at = full.text.find(&stop).expect("stop string is in the text");
    let (events, done) = run(m, story(vec![stop.clone()])).await;
    assert_eq!(done.finish_reason, FinishReason::StopString);
    assert_eq!(done.stop.as_deref(), Some(stop.as_str()));
    assert_eq!(done.text, full.text[..at]);
    assert_eq!(joined(&events, &done), done.text);
    assert!(done.tokens.len() < full.tokens.len());
}

pub async fn cancel_after_k_tokens(t: &Tck) {
    let m = t.model.as_ref();
    for k in [1usize, 5] {
        let req = GenerateRequest {
            ignore_eos: true,
            ..greedy("Tell me a long story about a dragon.", 100)
        };
        let cancel = req.cancel.clone();
        let mut s = session(m).await;
        let mut events = Vec::new();
        let done = arny_engine_api::generate(m, s.as_mut(), req, |e| {
            events.push(e.clone());
            if events.len() == k {
                cancel.cancel();
            }
        })
        .await
        .expect("generation");
        assert_eq!(events.len(), k);
        assert_eq!(done.tokens.len(), k);
        assert_eq!(done.finish_reason, FinishReason::Cancelled);
        // The session stays usable after a cancel: it answers as a fresh
        // one does.
        let (_, again) = run_on(m, s.as_mut(), greedy("What is 2+2?", 16)).await;
        let (_, fresh) = run(m, greedy("What is 2+2?", 16)).await;
        assert_eq!(again.tokens, fresh.tokens);
    }
}

pub async fn streamed_pieces_are_utf8_safe(t: &Tck) {
    let m = t.model.as_ref();
    let (events, done) = run(
        m,
        greedy("Write the word café and the emoji 🎉 three times.", 24),
    )
    .await;
    assert!(!done.text.is_ascii(), "expected non-ASCII: {:?}", done.text);
    // Streamed pieces never hold a broken character. Only the final flush
    // may, when max_tokens cut a character in half.
    for e in &events[..events.len() - 1] {
        assert!(
            !e.text.contains('\u{fffd}'),
            "{:?} in {:?}",
            e.text,
            done.text
        );
    }
    assert_eq!(joined(&events, &done), done.text);
    // The pieces are the exact bytes of the tokens, regrouped.
    let mut bytes = Vec::new();
    for &tok in &done.tokens {
        bytes.extend_from_slice(m.token_bytes(tok).expect("token bytes"));
    }
    assert_eq!(String::from_utf8_lossy(&bytes), done.text);
    // At least one character arrived split over tokens: some event carried
    // no text while its bytes were incomplete.
    assert!(
        events.iter().any(|e| e.text.is_empty()),
        "no split character in {:?}",
        done.text
    );
}

pub async fn second_turn_reuses_kv_cache(t: &Tck) {
    let m = t.model.as_ref();
    let mut conv = vec![ChatMessage::user("What is the capital of France?")];
    let mut s = session(m).await;
    let req = |conv: &Vec<ChatMessage>| GenerateRequest {
        sampling: SamplingParams::greedy(),
        max_tokens: 32,
        ..GenerateRequest::new(Prompt::Chat(conv.clone()))
    };
    let (_, first) = run_on(m, s.as_mut(), req(&conv)).await;
    assert_eq!(first.usage.cached_tokens, 0);
    conv.push(ChatMessage::assistant(first.text.clone()));
    conv.push(ChatMessage::user("And of Germany?"));
    let (_, second) = run_on(m, s.as_mut(), req(&conv)).await;
    let u = &second.usage;
    assert!(
        u.cached_tokens >= first.usage.prompt_tokens,
        "turn 2 reused {} tokens, turn 1's prompt had {}",
        u.cached_tokens,
        first.usage.prompt_tokens
    );
    assert_eq!(u.prefill_tokens, u.prompt_tokens - u.cached_tokens);
    let new_tokens = prompt_tokens(m, &Prompt::Chat(conv.clone()))
        .expect("tokens")
        .len()
        - first.usage.prompt_tokens;
    assert!(
        u.prefill_tokens <= new_tokens,
        "prefilled {} tokens, only {new_tokens} are new",
        u.prefill_tokens
    );
    // Reusing the cache must not change the answer.
    let (_, fresh) = run(m, req(&conv)).await;
    assert_eq!(second.tokens, fresh.tokens);
}

/// Sampling from the whole distribution: no top-k, top-p or min-p, so that
/// the draw matters even where the model is sure of itself.
fn unfiltered(temperature: f32, seed: u64) -> SamplingParams {
    SamplingParams {
        temperature,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        seed: Some(seed),
        ..SamplingParams::default()
    }
}

pub async fn seeded_sampling_is_reproducible(t: &Tck) {
    let m = t.model.as_ref();
    let req = |seed| GenerateRequest {
        sampling: unfiltered(0.9, seed),
        max_tokens: 24,
        ignore_eos: true,
        ..GenerateRequest::chat("Write a poem about the sea.")
    };
    let (_, a) = run(m, req(1234)).await;
    let (_, b) = run(m, req(1234)).await;
    assert_eq!(a.tokens, b.tokens);
    let (_, c) = run(m, req(99)).await;
    assert_ne!(a.tokens, c.tokens, "different seeds gave identical text");
}

pub async fn temperature_differs_from_greedy(t: &Tck) {
    let m = t.model.as_ref();
    let base = GenerateRequest {
        ignore_eos: true,
        ..greedy("Write a poem about the sea.", 24)
    };
    let (_, g) = run(m, base.clone()).await;
    let mut differs = 0;
    for seed in [1u64, 2, 3] {
        let req = GenerateRequest {
            sampling: unfiltered(1.0, seed),
            ..base.clone()
        };
        let (_, s) = run(m, req).await;
        differs += usize::from(s.tokens != g.tokens);
    }
    assert!(
        differs >= 2,
        "temperature 1.0 matched greedy {}/3 times",
        3 - differs
    );
}

pub async fn logits_agree_across_paths(t: &Tck) {
    let m = t.model.as_ref();
    let vocab = m.info().vocab_size as usize;
    let prompt =
        prompt_tokens(m, &Prompt::Chat(vec![ChatMessage::user("What is 2+2?")])).expect("tokens");
    let mut s = session(m).await;
    let all = teacher_forced_logits(s.as_mut(), &prompt)
        .await
        .expect("all");
    assert_eq!(all.vocab, vocab);
    assert_eq!(all.rows(), prompt.len());
    let last = next_token_logits(s.as_mut(), &prompt).await.expect("last");
    assert_eq!(last.len(), vocab);
    let diff = max_abs_diff(all.last(), &last);
    assert!(diff < 1e-3, "last-row logits differ by {diff}");
    // The greedy answer starts with the argmax of the last logits.
    let (_, done) = run(
        m,
        GenerateRequest {
            ignore_eos: true,
            ..greedy("What is 2+2?", 4)
        },
    )
    .await;
    assert_eq!(Some(done.tokens[0]), argmax(&last));
    // A row in the middle equals the logits of that prefix alone, up to
    // batch-size-dependent rounding.
    let i = prompt.len() / 2;
    let prefix = next_token_logits(s.as_mut(), &prompt[..=i])
        .await
        .expect("prefix");
    assert_eq!(argmax(all.row(i)), argmax(&prefix));
    assert_same_distribution(all.row(i), &prefix, &format!("row {i} vs its prefix alone"));
    assert!(all.data.iter().all(|x| x.is_finite()));
}

pub async fn truncate_then_continue_matches_fresh(t: &Tck) {
    let m = t.model.as_ref();
    let a = m.tokenize("The quick brown fox", false, false).expect("a");
    let b = m
        .tokenize(" jumps over the lazy dog", false, false)
        .expect("b");
    let c = m
        .tokenize(" sleeps in the warm sun", false, false)
        .expect("c");
    let mut s = session(m).await;
    s.eval(&a, LogitsRequest::None).await.expect("a");
    s.eval(&b, LogitsRequest::None).await.expect("b");
    assert_eq!(s.tokens().len(), a.len() + b.len());
    s.truncate(a.len()).expect("truncate");
    assert_eq!(s.tokens(), a.as_slice());
    let cont = s.eval(&c, LogitsRequest::Last).await.expect("c");
    let mut fresh = session(m).await;
    let whole: Vec<u32> = a.iter().chain(&c).copied().collect();
    let reference = fresh
        .eval(&whole, LogitsRequest::Last)
        .await
        .expect("fresh");
    assert_eq!(argmax(cont.last()), argmax(reference.last()));
    assert_same_distribution(cont.last(), reference.last(), "continued vs fresh");
}

/// Contract rule 4: `truncate` at or past the end keeps everything.
pub async fn truncate_past_the_end_is_a_no_op(t: &Tck) {
    let m = t.model.as_ref();
    let a = m.tokenize("The quick brown fox", false, false).expect("a");
    let b = m.tokenize(" jumps", false, false).expect("b");
    let mut s = session(m).await;
    s.truncate(0).expect("truncate an empty session");
    s.truncate(5)
        .expect("truncate past the end of an empty session");
    assert!(s.tokens().is_empty());
    s.eval(&a, LogitsRequest::None).await.expect("a");
    for len in [a.len(), a.len() + 1, usize::MAX] {
        s.truncate(len).expect("truncate at or past the end");
        assert_eq!(s.tokens(), a.as_slice(), "after truncate({len})");
    }
    // The cache is intact: continuing equals a fresh pass.
    let cont = s.eval(&b, LogitsRequest::Last).await.expect("b");
    let whole: Vec<u32> = a.iter().chain(&b).copied().collect();
    let fresh = next_token_logits(session(m).await.as_mut(), &whole)
        .await
        .expect("fresh");
    assert_eq!(argmax(cont.last()), argmax(&fresh));
    assert_same_distribution(cont.last(), &fresh, "continued after no-op truncates");
}

/// Contract rule 3: evaluating no tokens runs nothing and returns no rows.
pub async fn empty_eval_is_a_no_op(t: &Tck) {
    let m = t.model.as_ref();
    let vocab = m.info().vocab_size as usize;
    let mut s = session(m).await;
    let a = m.tokenize("Hello there", false, false).expect("a");
    for cached in [0, a.len()] {
        if cached > 0 {
            s.eval(&a, LogitsRequest::None).await.expect("a");
        }
        for want in [LogitsRequest::None, LogitsRequest::Last, LogitsRequest::All] {
            let out = s.eval(&[], want).await.expect("empty eval");
            assert_eq!(out.rows(), 0, "{want:?} with {cached} cached");
            assert!(out.data.is_empty());
            assert_eq!(out.vocab, vocab);
            assert_eq!(s.tokens().len(), cached);
        }
    }
}

/// Contract rule 1: a session's context is the request, else the model's
/// default; 0 or more than the model holds is refused, never clamped. A
/// load's context follows the same rule.
pub async fn context_length_is_resolved_or_refused(t: &Tck) {
    let m = t.model.as_ref();
    let info = m.info();
    let max = info.max_context_length;
    let s = session(m).await;
    assert_eq!(s.context_length(), info.context_length as usize);
    let s = session_ctx(m, Some(max)).await;
    assert_eq!(s.context_length(), max as usize);
    for bad in [0, max + 1] {
        let err = m
            .new_session(SessionOptions {
                context_length: Some(bad),
                ..Default::default()
            })
            .await
            .err()
            .unwrap_or_else(|| panic!("a {bad}-token context must be refused"));
        assert!(matches!(err, EngineError::InvalidInput(_)), "{bad}: {err}");
    }
    let engine = t.target.engine.as_ref();
    let load = |ctx| {
        engine.load(
            ModelSource::Path(t.model_path.clone()),
            LoadOptions {
                context_length: Some(ctx),
                ..t.target.options.clone()
            },
        )
    };
    let small = load(48).await.expect("a 48-token default context");
    assert_eq!(small.info().context_length, 48);
    assert_eq!(session(small.as_ref()).await.context_length(), 48);
    for bad in [0, max + 1] {
        let err = load(bad).await.err().expect("load must refuse");
        assert!(
            matches!(err, EngineError::InvalidInput(_)),
            "load {bad}: {err}"
        );
    }
}

/// Contract rule 2: a token outside the vocabulary fails the whole call
/// before anything runs, and the cache keeps what it had.
pub async fn tokens_outside_the_vocabulary_are_refused(t: &Tck) {
    let m = t.model.as_ref();
    let vocab = m.info().vocab_size;
    let mut s = session(m).await;
    let a = m.tokenize("Hello there", false, false).expect("a");
    s.eval(&a, LogitsRequest::None).await.expect("a");
    for bad in [vec![vocab], vec![a[0], vocab + 5], vec![u32::MAX]] {
        let err = s.eval(&bad, LogitsRequest::Last).await.unwrap_err();
        assert!(
            matches!(err, EngineError::InvalidInput(_)),
            "{bad:?}: {err}"
        );
        assert_eq!(s.tokens(), a.as_slice(), "after {bad:?}");
    }
    assert!(matches!(
        m.token_bytes(vocab),
        Err(EngineError::InvalidInput(_))
    ));
}

pub async fn context_overflow_is_typed_and_recoverable(t: &Tck) {
    let m = t.model.as_ref();
    let mut s = session_ctx(m, Some(64)).await;
    assert_eq!(s.context_length(), 64);
    let long = "Please summarise the following text. ".repeat(20);
    let err = arny_engine_api::Generation::new(m, s.as_mut(), GenerateRequest::chat(long))
        .err()
        .expect("overflow");
    assert!(
        matches!(err, EngineError::ContextOverflow { capacity: 64, .. }),
        "{err}"
    );
    // A direct eval past the end fails and leaves the cache untouched.
    let mut toks = m
        .tokenize(" word", false, false)
        .expect("tokens")
        .repeat(40);
    toks.truncate(40);
    s.eval(&toks, LogitsRequest::None).await.expect("fits");
    let before = s.tokens().to_vec();
    let err = s.eval(&toks, LogitsRequest::Last).await.unwrap_err();
    assert!(matches!(err, EngineError::ContextOverflow { .. }), "{err}");
    assert_eq!(s.tokens(), before.as_slice());
    // Generation that reaches the end of the context stops cleanly: a
    // context 8 tokens longer than the prompt takes 9 generated tokens (the
    // last one is sampled from the final logits, never evaluated).
    let req = GenerateRequest {
        ignore_eos: true,
        ..greedy("Count to one hundred.", 200)
    };
    let n = prompt_tokens(m, &req.prompt).expect("tokens").len();
    let mut s = session_ctx(m, Some(n as u32 + 8)).await;
    let (_, done) = run_on(m, s.as_mut(), req).await;
    assert_eq!(done.finish_reason, FinishReason::ContextFull);
    assert_eq!(done.tokens.len(), 9);
    assert_eq!(s.tokens().len(), n + 8);
}

pub async fn empty_prompt_is_invalid(t: &Tck) {
    let m = t.model.as_ref();
    let mut s = session(m).await;
    for p in [
        Prompt::Text(String::new()),
        Prompt::Chat(vec![ChatMessage::user("   ")]),
        Prompt::Tokens(Vec::new()),
    ] {
        let err = arny_engine_api::Generation::new(m, s.as_mut(), GenerateRequest::new(p))
            .err()
            .expect("error");
        assert!(matches!(err, EngineError::InvalidInput(_)), "{err}");
    }
}

pub async fn bad_files_give_typed_errors(t: &Tck) {
    let engine = t.target.engine.as_ref();
    let dir = tempfile::tempdir().expect("tempdir");
    let load = |src: ModelSource| async move {
        engine
            .load(src, LoadOptions::default())
            .await
            .err()
            .expect("load must fail")
    };
    let missing = dir.path().join("missing.model");
    let err = load(ModelSource::Path(missing)).await;
    assert!(matches!(err, EngineError::NotFound(_)), "{err}");

    let err = load(ModelSource::Path(dir.path().to_path_buf())).await;
    assert!(matches!(err, EngineError::NotAFile(_)), "{err}");

    let foreign = dir.path().join("foreign.model");
    std::fs::write(&foreign, b"PK\x03\x04 this is a zip file, not a model").expect("write");
    let err = load(ModelSource::Path(foreign)).await;
    assert!(matches!(err, EngineError::WrongFormat { .. }), "{err}");

    let empty = dir.path().join("empty.model");
    std::fs::write(&empty, b"").expect("write");
    let err = load(ModelSource::Path(empty)).await;
    assert!(
        matches!(
            err,
            EngineError::WrongFormat { .. } | EngineError::Corrupt { .. }
        ),
        "{err}"
    );

    let bytes = std::fs::read(&t.model_path).expect("read model");
    for cut in [bytes.len() / 2, 4096, 100] {
        let truncated = dir.path().join(format!("truncated-{cut}.model"));
        std::fs::write(&truncated, &bytes[..cut]).expect("write");
        let err = load(ModelSource::Path(truncated)).await;
        assert!(
            matches!(err, EngineError::Corrupt { .. }),
            "cut at {cut}: {err}"
        );
        let err = load(ModelSource::Bytes {
            name: format!("truncated-{cut}"),
            bytes: bytes[..cut].to_vec().into(),
        })
        .await;
        assert!(
            matches!(err, EngineError::Corrupt { .. }),
            "bytes cut at {cut}: {err}"
        );
    }

    // The same model from memory works like the file.
    let model = engine
        .load(
            ModelSource::Bytes {
                name: "in-memory".into(),
                bytes: bytes.into(),
            },
            t.target.options.clone(),
        )
        .await
        .expect("load from bytes");
    let (_, from_bytes) = run(model.as_ref(), greedy("What is 2+2?", 16)).await;
    let (_, from_file) = run(t.model.as_ref(), greedy("What is 2+2?", 16)).await;
    assert_eq!(from_bytes.tokens, from_file.tokens);
}

pub async fn sessions_run_concurrently(t: &Tck) {
    let m = t.model.as_ref();
    let prompts = [
        "What is 2+2?",
        "Name three colors.",
        "What is the capital of France?",
    ];
    let mut sequential = Vec::new();
    for p in prompts {
        sequential.push(run(m, greedy(p, 24)).await.1.tokens);
    }
    let parallel: Vec<Vec<u32>> = std::thread::scope(|scope| {
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| scope.spawn(move || crate::block_on(run(m, greedy(p, 24))).1.tokens))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    assert_eq!(sequential, parallel);
}

/// Two runs of one computation in different batch shapes (a prefix alone,
/// a cache reused after truncation) agree up to the rounding of the
/// precision the engine computes in. An absolute bound on logits does not
/// capture that: with f16 activations (wgpu on a device with shader f16)
/// the largest of 49152 logits moves by 0.04–0.05 between batch shapes
/// while the distributions' KL divergence stays under 1e-5 nats. So the
/// check is on the distribution (KL < 1e-4 nats, ten times the f16 figure;
/// a stale or misplaced cache entry changes the context the model sees and
/// moves it by far more) and on logits relative to their scale (1% of the
/// largest magnitude; f32 engines stay under 1e-5 of it).
fn assert_same_distribution(a: &[f32], b: &[f32], what: &str) {
    let kl = crate::compare::kl_divergence(b, a);
    assert!(kl < 1e-4, "{what}: KL divergence {kl} nats");
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = max_abs_diff(a, b);
    assert!(
        diff <= 0.01 * scale,
        "{what}: logits differ by {diff} (largest |logit| {scale})"
    );
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

async fn last_logits(m: &dyn Model, tokens: &[u32]) -> Vec<f32> {
    let mut s = session(m).await;
    next_token_logits(s.as_mut(), tokens).await.unwrap()
}

/// A seeded random LoRA adapter (rank 2 on every Q and V projection) for
/// the GGUF file at `path`, as GGUF bytes.
pub fn random_adapter(path: &std::path::Path) -> Vec<u8> {
    use arny_gguf::{GgufFile, GgufWriter, Value};
    let bytes = std::fs::read(path).expect("read the tiny model");
    let base = GgufFile::from_bytes(&bytes).expect("parse the tiny model");
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()))
        .set("general.type", Value::String("adapter".into()))
        .set("adapter.type", Value::String("lora".into()))
        .set("adapter.lora.alpha", Value::F32(4.0));
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut noise = |n: u64| -> Vec<f32> {
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * 0.3
            })
            .collect()
    };
    for t in &base.tensors {
        if t.name.ends_with(".attn_q.weight") || t.name.ends_with(".attn_v.weight") {
            let (n_in, n_out) = (t.dims[0], t.dims[1]);
            w.tensor_f32(format!("{}.lora_a", t.name), &[n_in, 2], &noise(n_in * 2));
            w.tensor_f32(format!("{}.lora_b", t.name), &[2, n_out], &noise(2 * n_out));
        }
    }
    w.to_bytes()
}

/// LoRA adapters follow `Capabilities::lora`. An engine that has them loads
/// one (from bytes) for its model: a session with it answers differently,
/// one with scale 0 exactly as without; a model file passed as an adapter
/// is `wrong_format`, a truncated adapter `corrupt`, one for another base
/// `incompatible`. An engine without them refuses the load as
/// `unsupported`. Either way the model is unchanged afterwards.
/// Embeddings where the engine says it has them, a typed refusal where
/// not; on the real model, similar sentences land closer than unrelated
/// ones.
pub async fn embeddings_follow_capabilities(t: &Tck) {
    let m = t.model.as_ref();
    let texts: Vec<String> = [
        "The cat sat on the mat.",
        "A cat is sitting on a mat.",
        "Stock prices fell sharply today.",
    ]
    .map(String::from)
    .to_vec();
    if !m.info().capabilities.embeddings {
        match m.embed(&texts).await {
            Err(EngineError::Unsupported(_)) => return,
            other => panic!("no embeddings capability, but {other:?}"),
        }
    }
    let v = m.embed(&texts).await.expect("embed");
    assert_eq!(v.len(), 3);
    let dim = v[0].len();
    assert!(dim > 0 && v.iter().all(|e| e.len() == dim));
    for e in &v {
        let norm: f32 = e.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "norm {norm}");
    }
    let again = m.embed(&texts[..1]).await.unwrap();
    let same: f32 = again[0].iter().zip(&v[0]).map(|(a, b)| a * b).sum();
    assert!(same > 0.9999, "the same text embeds the same: {same}");
    if t.which == Which::Reference {
        let cos = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        let (near, far) = (cos(&v[0], &v[1]), cos(&v[0], &v[2]));
        assert!(near > far, "similar {near} vs unrelated {far}");
    }
    assert!(matches!(
        m.embed(&[String::new()]).await,
        Err(EngineError::InvalidInput(_))
    ));
}

pub async fn adapters_follow_capabilities(t: &Tck) {
    let m = t.model.as_ref();
    let prompt = m
        .tokenize("<|im_start|>user\nHi there<|im_end|>\n", false, true)
        .unwrap();
    let before = last_logits(m, &prompt).await;
    let adapter = ModelSource::Bytes {
        name: "tiny-lora".into(),
        bytes: random_adapter(&crate::tiny_gguf()).into(),
    };
    if !m.info().capabilities.lora {
        let err = m.load_adapter(adapter, 1.0).await.expect_err("refused");
        assert_eq!(err.code(), "unsupported", "{err}");
    } else {
        let on = m.load_adapter(adapter.clone(), 1.0).await.expect("loads");
        let off = m.load_adapter(adapter, 0.0).await.expect("loads");
        assert_eq!(on.info().rank, 2);
        let with = |a: Arc<dyn Adapter>| async {
            let mut s = m
                .new_session(SessionOptions {
                    adapter: Some(a),
                    ..Default::default()
                })
                .await
                .unwrap();
            next_token_logits(s.as_mut(), &prompt).await.unwrap()
        };
        let tuned = with(on).await;
        assert!(
            max_abs_diff(&tuned, &before) > 1e-3,
            "the adapter changes nothing"
        );
        assert_eq!(with(off).await, before, "scale 0 is the model without it");
        let model_file = ModelSource::Path(crate::tiny_gguf());
        let err = m.load_adapter(model_file, 1.0).await.expect_err("refused");
        assert_eq!(err.code(), "wrong_format", "{err}");
        let bytes = random_adapter(&crate::tiny_gguf());
        let truncated = ModelSource::Bytes {
            name: "truncated-lora".into(),
            bytes: bytes[..bytes.len() - 100].to_vec().into(),
        };
        let err = m.load_adapter(truncated, 1.0).await.expect_err("refused");
        assert_eq!(err.code(), "corrupt", "{err}");
        let foreign = ModelSource::Bytes {
            name: "reference-model-lora".into(),
            bytes: random_adapter(&crate::reference_gguf()).into(),
        };
        let err = m.load_adapter(foreign, 1.0).await.expect_err("refused");
        assert_eq!(err.code(), "incompatible", "{err}");
    }
    assert_eq!(last_logits(m, &prompt).await, before);
}
