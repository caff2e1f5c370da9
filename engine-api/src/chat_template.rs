//! Chat templates: the model's own Jinja template, rendered in a sandbox.
//!
//! GGUF files and Hugging Face tokenizer configs carry the template as Jinja
//! source written for Python's jinja2 with `trim_blocks` and `lstrip_blocks`.
//! minijinja renders it with the same whitespace rules; `minijinja-contrib`'s
//! pycompat layer supplies the Python string methods (`.strip()`,
//! `.startswith()`) that real templates call. Rendering has no file or
//! network access and runs on a fuel budget, so a hostile template can fail
//! but cannot hang or escape.

use minijinja::{Environment, ErrorKind, Value, context};

use crate::{ChatMessage, EngineError, Result};

/// Instruction budget for one render: generous for any real conversation,
/// small enough that a runaway loop fails in milliseconds.
const FUEL: u64 = 2_000_000;

/// Templates Arny ships for models that carry none, used only when a
/// caller names one (a manifest's `chat_template`, `arny chat --template`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltinTemplate {
    /// `<|im_start|>role\ncontent<|im_end|>\n` (Qwen, SmolLM, many others).
    ChatMl,
    /// Llama 3's header-id format.
    Llama3,
    /// `<|user|>\ncontent</s>\n` (Zephyr, TinyModel chat).
    Zephyr,
    /// Gemma's turns (`<start_of_turn>user` … `<end_of_turn>`); a system
    /// message is folded into the first user turn, as Gemma's own
    /// template does.
    Gemma,
    /// Phi-3's `<|user|>\ncontent<|end|>\n`.
    Phi3,
}

impl BuiltinTemplate {
    pub const ALL: [Self; 5] = [
        Self::ChatMl,
        Self::Llama3,
        Self::Zephyr,
        Self::Gemma,
        Self::Phi3,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::ChatMl => "chatml",
            Self::Llama3 => "llama3",
            Self::Zephyr => "zephyr",
            Self::Gemma => "gemma",
            Self::Phi3 => "phi3",
        }
    }

    /// A built-in by its name; `qwen` is another name for ChatML.
    pub fn from_name(name: &str) -> Option<Self> {
        if name == "qwen" {
            return Some(Self::ChatMl);
        }
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The names [`Self::from_name`] takes, for error messages.
    pub fn names() -> String {
        let mut v: Vec<&str> = Self::ALL.iter().map(|b| b.name()).collect();
        v.insert(1, "qwen");
        v.join(", ")
    }

    pub fn source(self) -> &'static str {
        match self {
            Self::ChatMl => {
                "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
            }
            Self::Llama3 => {
                "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
            }
            Self::Zephyr => {
                "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
            }
            Self::Gemma => {
                "{{ bos_token }}{% if messages and messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] + '\n\n' %}{% set rest = messages[1:] %}{% else %}{% set first = '' %}{% set rest = messages %}{% endif %}{% for message in rest %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}{{ '<start_of_turn>' + role + '\n' + (first if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
            }
            Self::Phi3 => {
                "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
            }
        }
    }
}

/// Where a model's template came from, for `arny info` and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateOrigin {
    /// The model file's own template.
    Model,
    /// A caller-supplied override.
    Override,
    /// A built-in used because the model has none.
    Builtin(BuiltinTemplate),
}

/// A parsed chat template, ready to render conversations.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    origin: TemplateOrigin,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .field("source_len", &self.source.len())
            .finish()
    }
}

impl ChatTemplate {
    /// Parses `source`. `bos_token`/`eos_token` are the texts the template
    /// sees as variables of those names.
    pub fn new(
        source: &str,
        origin: TemplateOrigin,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(64);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned("chat", source.to_owned())
            .map_err(|e| EngineError::Template(describe(&e)))?;
        Ok(Self {
            env,
            source: source.to_owned(),
            origin,
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// The model's own template, or `None` when the file carries none (or
    /// an empty one). There is no silent fallback: a base model without a
    /// template is a completion model, and a chat format it was never
    /// trained on makes it answer with the format's markers. A caller who
    /// knows the family names a built-in ([`Self::from_override`]).
    pub fn from_model(
        model_template: Option<&str>,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<Option<Self>> {
        match model_template {
            Some(src) if !src.trim().is_empty() => {
                Self::new(src, TemplateOrigin::Model, bos_token, eos_token).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// A caller's template: a built-in's name (see [`BuiltinTemplate::ALL`])
    /// or Jinja source.
    pub fn from_override(template: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        match BuiltinTemplate::from_name(template) {
            Some(b) => Self::new(b.source(), TemplateOrigin::Builtin(b), bos_token, eos_token),
            None => Self::new(template, TemplateOrigin::Override, bos_token, eos_token),
        }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn origin(&self) -> &TemplateOrigin {
        &self.origin
    }

    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    /// Renders `messages`; with `add_generation_prompt` the result ends
    /// where the assistant's answer begins.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| EngineError::Template(describe(&e)))?;
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| context! { role => m.role.as_str(), content => m.content.as_str() })
            .collect();
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        })
        .map_err(|e| EngineError::Template(describe(&e)))
    }
}

/// `messages` rendered for `model` with `template` (a built-in's name or
/// Jinja source) when one is given, else with the model's own; a model
/// with neither is [`EngineError::Template`]. Ends where the assistant's
/// answer begins.
pub fn render_conversation(
    model: &dyn crate::Model,
    template: Option<&str>,
    messages: &[ChatMessage],
) -> Result<String> {
    match template {
        Some(t) => {
            let (bos, eos) = model
                .special_tokens()
                .bos_eos_text(|t| model.token_bytes(t).ok());
            ChatTemplate::from_override(t, &bos, &eos)?.render(messages, true)
        }
        None => model.render_chat(messages, true),
    }
}

/// What a chat request on a model without a template gets.
pub fn no_template_error() -> EngineError {
    EngineError::Template(format!(
        "the model has no chat template (a base model): send plain text for completion, or name a template ({}, or Jinja source)",
        BuiltinTemplate::names()
    ))
}

fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

fn describe(e: &minijinja::Error) -> String {
    match e.line() {
        Some(line) => format!("{e} (template line {line})"),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-Instruct's template, verbatim from its GGUF metadata.
    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn smollm2() -> ChatTemplate {
        ChatTemplate::new(SMOLLM2, TemplateOrigin::Model, "<|im_start|>", "<|im_end|>").unwrap()
    }

    #[test]
    fn renders_smollm2_template_like_jinja2() {
        let msgs = [
            ChatMessage::system("Be brief."),
            ChatMessage::user("Hi"),
            ChatMessage::assistant("Hello!"),
            ChatMessage::user("What is 2+2?"),
        ];
        assert_eq!(
            smollm2().render(&msgs, true).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn default_system_prompt_when_none_given() {
        let out = smollm2().render(&[ChatMessage::user("Hi")], false).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        );
    }

    #[test]
    fn trim_and_lstrip_blocks_match_hugging_face() {
        let src = "{% for m in messages %}\n    {{ m.content }}\n{% endfor %}";
        let t = ChatTemplate::new(src, TemplateOrigin::Override, "", "").unwrap();
        // jinja2 with trim_blocks + lstrip_blocks drops the tag lines entirely.
        assert_eq!(
            t.render(&[ChatMessage::user("a"), ChatMessage::user("b")], false)
                .unwrap(),
            "    a\n    b\n"
        );
    }

    #[test]
    fn python_string_methods_work() {
        let src = "{{ messages[0].content.strip().upper() }}{% if messages[0].content.startswith(' x') %}!{% endif %}";
        let t = ChatTemplate::new(src, TemplateOrigin::Override, "", "").unwrap();
        assert_eq!(t.render(&[ChatMessage::user(" x ")], false).unwrap(), "X!");
    }

    #[test]
    fn raise_exception_becomes_a_template_error() {
        let src =
            "{% if messages[0].role != 'system' %}{{ raise_exception('system first') }}{% endif %}";
        let t = ChatTemplate::new(src, TemplateOrigin::Override, "", "").unwrap();
        let err = t.render(&[ChatMessage::user("x")], false).unwrap_err();
        assert!(
            matches!(&err, EngineError::Template(m) if m.contains("system first")),
            "{err}"
        );
    }

    #[test]
    fn syntax_errors_and_runaway_templates_fail_cleanly() {
        assert!(matches!(
            ChatTemplate::new("{% for %}", TemplateOrigin::Override, "", ""),
            Err(EngineError::Template(_))
        ));
        let t = ChatTemplate::new(
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            TemplateOrigin::Override,
            "",
            "",
        )
        .unwrap();
        assert!(matches!(
            t.render(&[], false),
            Err(EngineError::Template(_))
        ));
    }

    #[test]
    fn a_missing_template_is_none_and_builtins_are_named() {
        assert!(ChatTemplate::from_model(None, "", "").unwrap().is_none());
        assert!(
            ChatTemplate::from_model(Some("  "), "", "")
                .unwrap()
                .is_none()
        );
        let t = ChatTemplate::from_override("qwen", "", "").unwrap();
        assert_eq!(
            t.origin(),
            &TemplateOrigin::Builtin(BuiltinTemplate::ChatMl)
        );
        assert_eq!(
            t.render(&[ChatMessage::user("Hi")], true).unwrap(),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        for b in BuiltinTemplate::ALL {
            assert_eq!(BuiltinTemplate::from_name(b.name()), Some(b));
            ChatTemplate::new(b.source(), TemplateOrigin::Builtin(b), "<s>", "</s>")
                .unwrap()
                .render(&[ChatMessage::system("s"), ChatMessage::user("u")], true)
                .unwrap();
        }
    }
}
