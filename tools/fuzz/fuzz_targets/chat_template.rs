//! A chat template (a model file's Jinja source) rendered over a
//! conversation: the template, then messages, each a role byte and its
//! text, separated by NUL. The renderer runs on a fuel budget, so no
//! template may hang it.
#![no_main]

use arny_engine_api::{ChatMessage, ChatTemplate, Role};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0);
    let source = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let messages: Vec<ChatMessage> = parts
        .map(|m| {
            let (role, text) = m.split_first().map_or((0, &[][..]), |(r, t)| (*r, t));
            let role = [Role::System, Role::User, Role::Assistant][role as usize % 3];
            ChatMessage::new(role, String::from_utf8_lossy(text))
        })
        .collect();
    if let Ok(Some(t)) = ChatTemplate::from_model(Some(&source), "<s>", "</s>") {
        let _ = t.render(&messages, true);
        let _ = t.render(&messages, false);
    }
});
