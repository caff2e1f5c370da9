//! The README's library example: load the default model, stream an answer.
//!
//!     cargo run --release -p arny-engine-gguf --example quickstart

use std::io::Write;

use arny_engine_api::{
    ChatMessage, EngineError, GenerateRequest, Generation, InferenceEngine, LoadOptions,
    ModelSource, Prompt, SessionOptions,
};
use arny_engine_gguf::GgufEngine;

async fn answer(engine: &dyn InferenceEngine) -> Result<(), EngineError> {
    let path = arny_model_store::require_default_model()
        .map_err(|e| EngineError::InvalidInput(e.to_string()))?;
    let model = engine
        .load(ModelSource::Path(path), LoadOptions::default())
        .await?;

    let mut session = model.new_session(SessionOptions::default()).await?;
    let request = GenerateRequest::new(Prompt::Chat(vec![
        ChatMessage::system("You are a math tutor."),
        ChatMessage::user("What is 2+2?"),
    ]));
    let _cancel = request.cancel.clone(); // call .cancel() from any thread to stop
    let mut generation = Generation::new(model.as_ref(), session.as_mut(), request)?;
    while let Some(event) = generation.next_token().await? {
        print!("{}", event.text); // never splits a UTF-8 character
        std::io::stdout().flush().ok();
    }
    let done = generation.finish(); // text, token ids, finish reason, usage
    println!("{}", done.tail);
    println!(
        "[{} tokens, {:.1} tok/s, {}]",
        done.usage.generated_tokens,
        done.usage.decode_tok_s,
        done.finish_reason.as_str()
    );
    Ok(())
}

fn main() {
    // Apps pick the engine from config; only this line knows which one.
    let engine: Box<dyn InferenceEngine> = Box::new(GgufEngine::new());
    if let Err(e) = futures::executor::block_on(answer(engine.as_ref())) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
