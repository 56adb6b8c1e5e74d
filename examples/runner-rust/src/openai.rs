//! A small client for OpenAI-compatible APIs: streamed chat completions
//! (server-sent events), image generation and speech.
//!
//! A call answered 429 or 5xx, or whose connection fails, is tried again
//! `retries` times with exponential backoff and jitter, as the Python
//! reference executor does: only before the answer starts, since after the
//! first token a retry would repeat what the client already has.

use std::time::Duration;

use futures::{Stream, StreamExt};
use serde_json::Value;

/// Retries when the prompt's settings name no `max_retries`.
pub const DEFAULT_RETRIES: u32 = 2;
/// A frontmatter's `max_retries` is bounded here, so a typo cannot retry for hours.
const MOST_RETRIES: u32 = 10;
/// The first wait; each retry doubles it, times a jitter of 0.5 to 1.5.
const BACKOFF: Duration = Duration::from_millis(500);

pub const MISSING_CREDENTIALS: &str = "The runner has no OpenAI credentials: set OPENAI_API_KEY (and OPENAI_BASE_URL for an \
OpenAI-compatible server) in the runner's environment, then restart it.";

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base_url: String,
    api_key: Option<String>,
}

impl Client {
    /// From `OPENAI_API_KEY` and `OPENAI_BASE_URL`, as the official SDKs read them.
    pub fn from_env() -> Self {
        let base_url = std::env::var("OPENAI_BASE_URL").unwrap_or_else(|_| "https://api.openai.com/v1".into());
        Self {
            // Connecting is bounded; a streamed answer may take as long as the gateway's deadline allows.
            http: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(10))
                .build()
                .expect("the HTTP client builds"),
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key: std::env::var("OPENAI_API_KEY").ok().filter(|k| !k.is_empty()),
        }
    }

    /// The answer's head, retried as the module says; the error is what the provider said.
    async fn post(&self, path: &str, body: &Value, retries: u32) -> Result<reqwest::Response, String> {
        let key = self.api_key.as_deref().ok_or(MISSING_CREDENTIALS)?;
        let retries = retries.min(MOST_RETRIES);
        let mut attempt = 0;
        loop {
            match self.post_once(key, path, body).await {
                Ok(response) => return Ok(response),
                Err((message, retryable)) if !retryable || attempt == retries => return Err(message),
                Err(_) => {
                    tokio::time::sleep(BACKOFF.mul_f64(f64::from(1u32 << attempt) * (0.5 + jitter()))).await;
                    attempt += 1;
                }
            }
        }
    }

    /// One try: the response, or the error and whether trying again may help.
    async fn post_once(&self, key: &str, path: &str, body: &Value) -> Result<reqwest::Response, (String, bool)> {
        let sent = self.http.post(format!("{}{path}", self.base_url)).bearer_auth(key).json(body).send().await;
        let response = sent.map_err(|_| ("model API error: Connection error.".to_string(), true))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.pointer("/error/message").and_then(Value::as_str).map(str::to_string))
            .unwrap_or(text);
        let retryable = status.as_u16() == 429 || status.is_server_error();
        Err((format!("model API error {}: {message}", status.as_u16()), retryable))
    }

    /// A streamed chat completion: each server-sent event's JSON, in order.
    pub async fn chat_stream(&self, body: &Value, retries: u32) -> Result<impl Stream<Item = Result<Value, String>>, String> {
        let response = self.post("/chat/completions", body, retries).await?;
        let bytes = response.bytes_stream();
        Ok(futures::stream::unfold((bytes, Vec::<u8>::new(), false), |(mut bytes, mut buffer, done)| async move {
            if done {
                return None;
            }
            loop {
                // One event ends at a blank line; its `data:` line holds the JSON.
                if let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
                    let event: Vec<u8> = buffer.drain(..end + 2).collect();
                    let text = String::from_utf8_lossy(&event);
                    let Some(data) = text.lines().find_map(|l| l.strip_prefix("data:")).map(str::trim) else { continue };
                    if data == "[DONE]" {
                        return None;
                    }
                    let parsed = serde_json::from_str(data).map_err(|e| format!("model API sent an invalid event: {e}"));
                    return Some((parsed, (bytes, buffer, false)));
                }
                match bytes.next().await {
                    // SSE lines may end in CR, LF or CRLF; JSON data holds no raw CR, so drop them all.
                    Some(Ok(chunk)) => buffer.extend(chunk.iter().copied().filter(|&b| b != b'\r')),
                    Some(Err(_)) => return Some((Err("model API error: Connection error.".into()), (bytes, buffer, true))),
                    // A last event without its blank line still counts.
                    None if buffer.iter().any(|b| !b.is_ascii_whitespace()) => buffer.extend_from_slice(b"\n\n"),
                    None => return None,
                }
            }
        }))
    }

    pub async fn images(&self, body: &Value, retries: u32) -> Result<Value, String> {
        self.post("/images/generations", body, retries).await?.json().await.map_err(|e| format!("model API sent invalid JSON: {e}"))
    }

    pub async fn speech(&self, body: &Value, retries: u32) -> Result<Vec<u8>, String> {
        let response = self.post("/audio/speech", body, retries).await?;
        Ok(response.bytes().await.map_err(|_| "model API error: Connection error.".to_string())?.to_vec())
    }
}

/// A number in [0, 1) for spreading retries apart: std's per-hasher random keys
/// are enough here, so the example needs no random-number crate.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u8(0);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}
