//! AgentMark prompts to model inputs.
//!
//! Prompt runs arrive rendered by the gateway with AgentMark's own engine
//! (`from_rendered`): this runner asks for that in `Describe`. Dataset runs
//! still render their prompt here, until the gateway sends dataset items
//! rendered too. That renderer (`render`) is an example, not AgentMark's: it understands the YAML
//! frontmatter, the role tags (`System`, `User`, `Assistant`), the
//! `ImagePrompt` and `SpeechPrompt` tags, text, and `{props.path}`
//! expressions. Anything else (conditionals, loops, attachments) is refused
//! with an error naming it, rather than rendered wrongly. The Python runner
//! uses AgentMark's own renderer and supports everything.

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
    fn config_key(self) -> &'static str {
        match self {
            Kind::Text => "text_config",
            Kind::Object => "object_config",
            Kind::Image => "image_config",
            Kind::Speech => "speech_config",
        }
    }
}

/// A rendered prompt: the frontmatter's settings for its kind, and its text.
#[derive(Debug)]
pub struct Prompt {
    pub kind: Kind,
    pub settings: Map<String, Value>,
    /// Chat messages (`{"role", "content"}`) for text and object prompts.
    pub messages: Vec<Value>,
    /// The `ImagePrompt` or `SpeechPrompt` text.
    pub media_text: String,
    /// The `System` text, which speech uses as instructions.
    pub instructions: Option<String>,
    pub test_settings: Map<String, Value>,
}

/// A prompt the gateway rendered with AgentMark's own engine (this runner
/// asks for them in `Describe`): templates, conditionals, filters and
/// attachments already applied, so nothing here interprets the AST.
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
    let messages = rendered.messages.iter().map(chat_message).collect::<Result<Vec<_>, _>>()?;
    let instructions = match kind {
        Kind::Speech if !rendered.instructions.is_empty() => Some(rendered.instructions.clone()),
        _ => None,
    };
    let test_settings = Map::from_iter([("evals".to_string(), json!(rendered.eval_names))]);
    Ok(Prompt { kind, settings, messages, media_text: rendered.text.clone(), instructions, test_settings })
}

/// One message in OpenAI's chat shape: plain text, or parts when it has images.
fn chat_message(message: &pb::ChatMessage) -> Result<Value, String> {
    use pb::content_part::Part;
    let parts = message.content.iter().filter_map(|c| c.part.as_ref());
    if parts.clone().all(|p| matches!(p, Part::Text(_))) {
        let text: String = parts.map(|p| if let Part::Text(t) = p { t.as_str() } else { "" }).collect();
        return Ok(json!({"role": message.role, "content": text}));
    }
    let content = parts
        .map(|part| match part {
            Part::Text(text) => Ok(json!({"type": "text", "text": text})),
            Part::Image(image) => Ok(json!({"type": "image_url", "image_url": {"url": image.data}})),
            Part::File(_) => Err("file attachments are not supported by this example runner".to_string()),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(json!({"role": message.role, "content": content}))
}

/// Render `ast` with `props` (the frontmatter's `test_settings.props` when `props` is empty).
pub fn render(ast: &Value, props: &Value) -> Result<Prompt, String> {
    let children = ast.get("children").and_then(Value::as_array).ok_or("the AST has no children")?;
    let yaml = children
        .iter()
        .find(|c| c.get("type") == Some(&json!("yaml")))
        .and_then(|c| c.get("value"))
        .and_then(Value::as_str)
        .ok_or("the AST has no YAML frontmatter")?;
    let frontmatter: Value = serde_yaml::from_str(yaml).map_err(|e| format!("the frontmatter is not valid YAML: {e}"))?;
    // AgentMark's precedence, should a prompt name several kinds.
    let kind = [Kind::Speech, Kind::Image, Kind::Object, Kind::Text]
        .into_iter()
        .find(|k| frontmatter.get(k.config_key()).is_some_and(|v| !v.is_null()))
        .ok_or("the frontmatter has no text_config, object_config, image_config or speech_config")?;
    let object = |key: &str| frontmatter.get(key).and_then(Value::as_object).cloned().unwrap_or_default();
    let settings = object(kind.config_key());
    let test_settings = object("test_settings");
    let empty = props.as_object().is_none_or(Map::is_empty);
    let props = if empty { test_settings.get("props").cloned().unwrap_or(json!({})) } else { props.clone() };

    let mut prompt = Prompt {
        kind,
        settings,
        messages: Vec::new(),
        media_text: String::new(),
        instructions: None,
        test_settings,
    };
    for child in &children[1..] {
        if child.get("type") != Some(&json!("mdxJsxFlowElement")) {
            return Err(format!("unsupported top-level node {}", node_type(child)));
        }
        let tag = child.get("name").and_then(Value::as_str).unwrap_or_default();
        let text = render_children(child, &props)?;
        match tag {
            "System" | "User" | "Assistant" => {
                if tag == "System" {
                    prompt.instructions = Some(text.clone());
                }
                prompt.messages.push(json!({"role": tag.to_lowercase(), "content": text}));
            }
            "ImagePrompt" | "SpeechPrompt" => prompt.media_text = text,
            other => return Err(format!("unsupported tag <{other}>")),
        }
    }
    Ok(prompt)
}

fn node_type(node: &Value) -> String {
    node.get("type").and_then(Value::as_str).unwrap_or("(untyped)").to_string()
}

fn render_children(node: &Value, props: &Value) -> Result<String, String> {
    let children = node.get("children").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let parts: Result<Vec<String>, String> = children.iter().map(|c| render_node(c, props)).collect();
    let separator = if children.iter().all(|c| c.get("type") == Some(&json!("paragraph"))) { "\n\n" } else { "" };
    Ok(parts?.join(separator))
}

fn render_node(node: &Value, props: &Value) -> Result<String, String> {
    match node.get("type").and_then(Value::as_str) {
        Some("text") => Ok(node.get("value").and_then(Value::as_str).unwrap_or_default().to_string()),
        Some("paragraph") => render_children(node, props),
        Some("mdxTextExpression") => {
            let expression = node.get("value").and_then(Value::as_str).unwrap_or_default().trim();
            let path = expression.strip_prefix("props.").ok_or_else(|| format!("unsupported expression {{{expression}}}"))?;
            let value = path.split('.').try_fold(props, |v, key| v.get(key)).unwrap_or(&Value::Null);
            Ok(match value {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            })
        }
        _ => Err(format!("unsupported node {}", node_type(node))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_roles_and_props() {
        let ast = json!({"type": "root", "children": [
            {"type": "yaml", "value": "name: math\ntext_config:\n  model_name: m\ntest_settings:\n  props:\n    q: fallback"},
            {"type": "mdxJsxFlowElement", "name": "System", "children": [{"type": "paragraph", "children": [{"type": "text", "value": "Be brief."}]}]},
            {"type": "mdxJsxFlowElement", "name": "User", "children": [{"type": "paragraph", "children": [
                {"type": "text", "value": "Q: "}, {"type": "mdxTextExpression", "value": "props.q"}]}]}
        ]});
        let prompt = render(&ast, &json!({"q": "2+2?"})).unwrap();
        assert_eq!(prompt.kind, Kind::Text);
        assert_eq!(prompt.messages[1], json!({"role": "user", "content": "Q: 2+2?"}));
        let with_test_props = render(&ast, &json!({})).unwrap();
        assert_eq!(with_test_props.messages[1]["content"], "Q: fallback");
    }

    #[test]
    fn refuses_what_it_cannot_render() {
        let ast = json!({"type": "root", "children": [{"type": "yaml", "value": "name: x"}]});
        assert!(render(&ast, &json!({})).unwrap_err().contains("no text_config"));
    }
}
