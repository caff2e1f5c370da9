//! Tool calling for models whose chat templates know nothing of tools.
//!
//! The fallback is the same for every model, and documented in the README:
//! the tools are described in text after the last user message, a call is
//! one JSON object `{"name": ..., "arguments": {...}}`, and the grammar
//! built from the tools' JSON schemas makes any other call impossible to
//! generate. Earlier calls and tool results are rendered back into the
//! conversation as text the model can read.

use arny_sdk::Constraint;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{ApiError, bad_request};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: Function,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Function {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub parameters: Option<Value>,
    /// Calls are always generated under the schema; `strict` changes
    /// nothing and is accepted either way.
    #[serde(default)]
    #[allow(dead_code)]
    pub strict: Option<bool>,
}

/// How the request lets the model use its tools.
#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    /// Text or one call, as the model prefers.
    Auto,
    /// Text only: the tools are not offered.
    None,
    /// One call to any tool.
    Required,
    /// One call to this tool.
    Named(String),
}

impl Choice {
    pub fn parse(v: Option<&Value>, have_tools: bool) -> Result<Self, ApiError> {
        let bad = |m: String| bad_request("invalid_tool_choice", "tool_choice", m);
        let choice = match v {
            None => {
                if have_tools {
                    Self::Auto
                } else {
                    Self::None
                }
            }
            Some(Value::String(s)) => match s.as_str() {
                "auto" => Self::Auto,
                "none" => Self::None,
                "required" => Self::Required,
                other => return Err(bad(format!("unknown tool_choice `{other}`"))),
            },
            Some(Value::Object(o)) => {
                let name = o
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .filter(|_| o.get("type").and_then(Value::as_str) == Some("function"));
                match name {
                    Some(n) => Self::Named(n.to_string()),
                    None => {
                        return Err(bad(
                            "tool_choice object must be {\"type\": \"function\", \"function\": {\"name\": ...}}".into(),
                        ));
                    }
                }
            }
            Some(other) => {
                return Err(bad(format!(
                    "tool_choice must be a string or object, got {other}"
                )));
            }
        };
        if !have_tools && choice != Self::None {
            return Err(bad("tool_choice needs `tools`".into()));
        }
        Ok(choice)
    }
}

/// Checks the tool list: function tools with distinct, valid names.
pub fn check(tools: &[Tool]) -> Result<(), ApiError> {
    let mut seen = std::collections::HashSet::new();
    for (i, t) in tools.iter().enumerate() {
        let bad = |m: String| bad_request("invalid_tools", &format!("tools[{i}]"), m);
        if t.kind != "function" {
            return Err(bad(format!(
                "tool type `{}` is not supported; only `function`",
                t.kind
            )));
        }
        let n = &t.function.name;
        let valid = !n.is_empty()
            && n.len() <= 64
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            return Err(bad(format!(
                "function name `{n}` must be 1-64 of a-z, A-Z, 0-9, _ and -"
            )));
        }
        if !seen.insert(n.clone()) {
            return Err(bad(format!("function `{n}` is defined twice")));
        }
    }
    Ok(())
}

fn parameters(f: &Function) -> Value {
    f.parameters
        .clone()
        .unwrap_or_else(|| json!({"type": "object", "properties": {}}))
}

/// The schema of one call to any of `tools`.
fn call_schema(tools: &[&Tool]) -> Value {
    let one = |t: &Tool| {
        json!({
            "type": "object",
            "properties": {
                "name": {"const": t.function.name},
                "arguments": parameters(&t.function),
            },
            "required": ["name", "arguments"],
            "additionalProperties": false,
        })
    };
    match tools {
        [t] => one(t),
        many => json!({"anyOf": many.iter().map(|t| one(t)).collect::<Vec<_>>()}),
    }
}

/// The constraint a request's tools put on the answer, if any.
pub fn constraint(tools: &[Tool], choice: &Choice) -> Result<Option<Constraint>, ApiError> {
    let all: Vec<&Tool> = tools.iter().collect();
    Ok(match choice {
        Choice::None => None,
        Choice::Required => Some(Constraint::JsonSchema(call_schema(&all))),
        Choice::Named(name) => {
            let Some(t) = tools.iter().find(|t| &t.function.name == name) else {
                return Err(bad_request(
                    "invalid_tool_choice",
                    "tool_choice",
                    format!("tool_choice names `{name}`, which is not in `tools`"),
                ));
            };
            Some(Constraint::JsonSchema(call_schema(&[t])))
        }
        Choice::Auto => {
            // Prose may not begin with `{`: a `{` first is a call, and then
            // only a valid one can follow.
            let schema = serde_json::to_string(&call_schema(&all)).unwrap_or_default();
            Some(Constraint::Lark(format!(
                "start: call | prose\ncall: %json {schema}\nprose: PROSE\nPROSE: /[^{{](.|\\n)*/\n"
            )))
        }
    })
}

/// Instructions appended to the last user message when tools are offered.
pub fn instructions(tools: &[Tool], choice: &Choice) -> Option<String> {
    if *choice == Choice::None || tools.is_empty() {
        return None;
    }
    let mut s = String::from("\n\nTools you can call:\n");
    for t in tools {
        let f = &t.function;
        s.push_str(&format!(
            "- {}: {} Arguments (JSON Schema): {}\n",
            f.name,
            f.description.as_deref().unwrap_or(""),
            parameters(f)
        ));
    }
    s.push_str(match choice {
        Choice::Auto => {
            "To call a tool, answer with only {\"name\": <tool>, \"arguments\": {...}}; otherwise answer in words."
        }
        _ => "Answer with only {\"name\": <tool>, \"arguments\": {...}}.",
    });
    Some(s)
}

/// A tool call read back from generated text.
#[derive(Debug, Clone)]
pub struct Call {
    pub name: String,
    /// The arguments as a JSON string, as OpenAI sends them.
    pub arguments: String,
}

/// The call in `text`, when the answer is one (it starts with `{`).
pub fn parse_call(text: &str) -> Option<Call> {
    if !text.trim_start().starts_with('{') {
        return None;
    }
    let v: Value = serde_json::from_str(text).ok()?;
    Some(Call {
        name: v.get("name")?.as_str()?.to_string(),
        arguments: serde_json::to_string(v.get("arguments")?).ok()?,
    })
}

/// An assistant turn that made calls, as the model would have written it.
pub fn render_calls(calls: &[Value]) -> String {
    calls
        .iter()
        .map(|c| {
            let f = c.get("function").cloned().unwrap_or(Value::Null);
            let args = f
                .get("arguments")
                .and_then(Value::as_str)
                .and_then(|a| serde_json::from_str::<Value>(a).ok())
                .unwrap_or(Value::Null);
            json!({"name": f.get("name").cloned().unwrap_or(Value::Null), "arguments": args})
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A tool's result as a user turn.
pub fn render_result(call_id: Option<&str>, name: Option<&str>, content: &str) -> String {
    let who = match (name, call_id) {
        (Some(n), _) => format!("tool `{n}`"),
        (None, Some(id)) => format!("tool call {id}"),
        (None, None) => "a tool".to_string(),
    };
    format!("Result from {who}: {content}")
}
