//! Prompts as the gateway sends them: rendered by AgentMark's own engine.
//!
//! This runner answers `Describe` with `rendered_prompts: true`, so every
//! prompt run and dataset item arrives with `rendered` filled in: templates,
//! conditionals, loops, filters, components and attachments already applied.
//! Nothing here interprets the AST; this module only turns the rendered
//! prompt into what the OpenAI API takes, the way the Python reference
//! executor (python/agentmark_gw/runner/openai_executor.py) does, so both
//! runners send the model the same request.

use serde_json::{json, Map, Value};

use crate::pb;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Object,
    Image,
    Speech,
}

impl Kind {
    /// As AgentMark names the kind (`text_config` is a text prompt, ...).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Object => "object",
            Kind::Image => "image",
            Kind::Speech => "speech",
        }
    }
}

/// A prompt ready for the model: the `*_config` settings, and its text.
#[derive(Debug)]
pub struct Prompt {
    pub kind: Kind,
    /// The model settings, with `model_name` and, for object prompts, `schema`.
    pub settings: Map<String, Value>,
    /// Chat messages (`{"role", "content"}`) for text and object prompts.
    pub messages: Vec<Value>,
    /// The image prompt, or the text to speak.
    pub media_text: String,
    /// Speech prompts' voice instructions.
    pub instructions: Option<String>,
    /// Tools the frontmatter names (this example registers none).
    pub tools: Vec<String>,
}

/// The prompt the gateway rendered, as model inputs.
pub fn from_rendered(rendered: &pb::RenderedPrompt) -> Result<Prompt, String> {
    let kind = match pb::PromptKind::try_from(rendered.kind) {
        Ok(pb::PromptKind::Text) => Kind::Text,
        Ok(pb::PromptKind::Object) => Kind::Object,
        Ok(pb::PromptKind::Image) => Kind::Image,
        Ok(pb::PromptKind::Speech) => Kind::Speech,
        _ => return Err("the rendered prompt has no kind".into()),
    };
    let parse = |text: &str, field: &str| -> Result<Value, String> {
        if text.is_empty() { Ok(Value::Null) } else { serde_json::from_str(text).map_err(|e| format!("{field} is not JSON: {e}")) }
    };
    let mut settings = match parse(&rendered.settings_json, "settings_json")? {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    settings.insert("model_name".into(), json!(rendered.model_name));
    if !rendered.schema_json.is_empty() {
        settings.insert("schema".into(), parse(&rendered.schema_json, "schema_json")?);
    }
    let instructions = match kind {
        Kind::Speech if !rendered.instructions.is_empty() => Some(rendered.instructions.clone()),
        _ => None,
    };
    Ok(Prompt {
        kind,
        settings,
        messages: rendered.messages.iter().map(chat_message).collect(),
        media_text: rendered.text.clone(),
        instructions,
        tools: rendered.tools.iter().map(|t| t.name.clone()).collect(),
    })
}

/// One message in OpenAI's chat shape: plain text, or parts when it has
/// attachments. Images go by URL (bare base64 as a data URL); chat
/// completions take no files, so a file is named in a text note, never pasted.
fn chat_message(message: &pb::ChatMessage) -> Value {
    use pb::content_part::Part;
    let parts = message.content.iter().filter_map(|c| c.part.as_ref());
    // The gateway sends a message AgentMark rendered as plain text as one text part.
    if parts.clone().all(|p| matches!(p, Part::Text(_))) {
        let text: String = parts.map(|p| if let Part::Text(t) = p { t.as_str() } else { "" }).collect();
        return json!({"role": message.role, "content": text});
    }
    let content: Vec<Value> = parts
        .filter_map(|part| match part {
            Part::Text(text) => Some(json!({"type": "text", "text": text})),
            Part::Image(image) if !image.data.is_empty() => {
                let url = if ["http://", "https://", "data:"].iter().any(|p| image.data.starts_with(p)) {
                    image.data.clone()
                } else {
                    let mime_type = if image.mime_type.is_empty() { "image/png" } else { &image.mime_type };
                    format!("data:{mime_type};base64,{}", image.data)
                };
                Some(json!({"type": "image_url", "image_url": {"url": url}}))
            }
            Part::File(file) if !file.data.is_empty() => {
                let place = if ["http://", "https://"].iter().any(|p| file.data.starts_with(p)) {
                    file.data.clone()
                } else {
                    let mime_type = if file.mime_type.is_empty() { "a file" } else { &file.mime_type };
                    format!("{mime_type} (inline, not sent)")
                };
                Some(json!({"type": "text", "text": format!("[attached file: {place}]")}))
            }
            Part::Image(_) | Part::File(_) => None,
        })
        .collect();
    json!({"role": message.role, "content": content})
}

/// The schema for OpenAI's strict structured output, and whether strict mode
/// can take it: every object gets `additionalProperties: false` where the
/// schema says nothing, and strict mode wants every property required. A
/// schema with optional properties goes as it is, not strict.
pub fn strict_schema(schema: &Value) -> (Value, bool) {
    fn visit(node: &Value, strict: &mut bool) -> Value {
        match node {
            Value::Array(items) => Value::Array(items.iter().map(|n| visit(n, strict)).collect()),
            Value::Object(map) => {
                let mut map: Map<String, Value> = map.iter().map(|(k, v)| (k.clone(), visit(v, strict))).collect();
                if map.get("type") == Some(&json!("object")) {
                    if let Some(Value::Object(properties)) = map.get("properties") {
                        let keys: std::collections::BTreeSet<&str> = properties.keys().map(String::as_str).collect();
                        let required = map.get("required").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
                        // A name that is not a string is never a property's name.
                        let named: Option<std::collections::BTreeSet<&str>> = required.iter().map(Value::as_str).collect();
                        let all_required = named.is_some_and(|named| named == keys);
                        let closed = map.get("additionalProperties").is_none_or(|v| v == &json!(false));
                        *strict &= all_required && closed;
                        map.entry("additionalProperties").or_insert(json!(false));
                    }
                }
                Value::Object(map)
            }
            other => other.clone(),
        }
    }
    let mut strict = true;
    let converted = visit(schema, &mut strict);
    (if strict { converted } else { schema.clone() }, strict)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::content_part::Part;

    fn part(p: Part) -> pb::ContentPart {
        pb::ContentPart { part: Some(p) }
    }

    fn attachment(data: &str, mime_type: &str) -> pb::Attachment {
        pb::Attachment { data: data.into(), mime_type: mime_type.into() }
    }

    #[test]
    fn text_only_messages_are_plain_strings() {
        let message = pb::ChatMessage { role: "user".into(), content: vec![part(Part::Text("Hi".into()))] };
        assert_eq!(chat_message(&message), json!({"role": "user", "content": "Hi"}));
    }

    #[test]
    fn attachments_become_parts_as_the_python_executor_sends_them() {
        let message = pb::ChatMessage {
            role: "user".into(),
            content: vec![
                part(Part::Text("Look".into())),
                part(Part::Image(attachment("https://example.com/a.png", ""))),
                part(Part::Image(attachment("iVBOR", "image/jpeg"))),
                part(Part::File(attachment("https://example.com/d.pdf", "application/pdf"))),
                part(Part::File(attachment("JVBER", "application/pdf"))),
                part(Part::Image(attachment("", "image/png"))),
            ],
        };
        assert_eq!(
            chat_message(&message)["content"],
            json!([
                {"type": "text", "text": "Look"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,iVBOR"}},
                {"type": "text", "text": "[attached file: https://example.com/d.pdf]"},
                {"type": "text", "text": "[attached file: application/pdf (inline, not sent)]"},
            ])
        );
    }

    #[test]
    fn strict_schemas_close_objects_and_optional_properties_are_not_strict() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}}, "required": ["b"]}}, "required": ["a"]});
        let (converted, strict) = strict_schema(&schema);
        assert!(strict);
        assert_eq!(converted["additionalProperties"], json!(false));
        assert_eq!(converted["properties"]["a"]["additionalProperties"], json!(false));
        let optional = json!({"type": "object", "properties": {"a": {"type": "string"}}});
        assert_eq!(strict_schema(&optional), (optional.clone(), false));
    }
}
