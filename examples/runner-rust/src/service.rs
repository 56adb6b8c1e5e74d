//! The `Runner` service: prompts and dataset runs against an OpenAI-compatible API.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use base64::Engine;
use futures::{Stream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::openai::Client;
use crate::pb::runner_event::Event;
use crate::pb::{self, experiment_event, runner_server};
use crate::prompt::{self, Kind, Prompt};

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Chat-completion parameters that map one-to-one from the frontmatter.
const SETTINGS: [(&str, &str); 7] = [
    ("temperature", "temperature"),
    ("max_tokens", "max_tokens"),
    ("top_p", "top_p"),
    ("frequency_penalty", "frequency_penalty"),
    ("presence_penalty", "presence_penalty"),
    ("stop_sequences", "stop"),
    ("seed", "seed"),
];

pub struct RustRunner {
    client: Client,
    data_dir: PathBuf,
}

impl RustRunner {
    pub fn new(client: Client, data_dir: PathBuf) -> Self {
        Self { client, data_dir }
    }
}

fn event(e: Event) -> pb::RunnerEvent {
    pb::RunnerEvent { event: Some(e) }
}

fn error(message: impl Into<String>) -> pb::RunnerEvent {
    event(Event::Error(pb::Error { message: message.into() }))
}

fn parse_json(text: &str, field: &str) -> Result<Value, Status> {
    if text.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_str(text).map_err(|_| Status::invalid_argument(format!("{field} is not valid JSON")))
}

/// Send events as they come, each message carrying whatever else is already
/// waiting: latency never waits for a batch, throughput rises in bursts.
fn batched(mut events: mpsc::Receiver<pb::RunnerEvent>) -> ReceiverStream<Result<pb::RunnerEvents, Status>> {
    let (out, receiver) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            // Waiting for the next event, still notice a gateway that has gone:
            // dropping `events` then stops the run (see `run`).
            let first = tokio::select! {
                next = events.recv() => match next { Some(e) => e, None => return },
                () = out.closed() => return,
            };
            let mut batch = vec![first];
            while let Ok(more) = events.try_recv() {
                batch.push(more);
            }
            if out.send(Ok(pb::RunnerEvents { events: batch })).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(receiver)
}

#[tonic::async_trait]
impl runner_server::Runner for RustRunner {
    type RunPromptStream = EventStream<pb::RunnerEvents>;
    type RunExperimentStream = EventStream<pb::ExperimentEvents>;

    async fn run_prompt(&self, request: Request<pb::RunPromptRequest>) -> Result<Response<Self::RunPromptStream>, Status> {
        let request = request.into_inner();
        let rendered = request.rendered.as_ref().map(prompt::from_rendered);
        let ast = parse_json(&request.ast_json, "ast_json")?;
        let props = parse_json(&request.custom_props_json, "custom_props_json")?;
        let client = self.client.clone();
        let (events, receiver) = mpsc::channel(64);
        tokio::spawn(async move {
            // A gateway that has not asked `Describe` (an older one) sends only the AST.
            match rendered.unwrap_or_else(|| prompt::render(&ast, &props)) {
                Ok(prompt) => run(&client, &prompt, &events).await,
                Err(message) => {
                    let _ = events.send(error(format!("cannot render the prompt: {message}"))).await;
                }
            }
        });
        Ok(Response::new(Box::pin(batched(receiver))))
    }

    async fn run_experiment(&self, request: Request<pb::RunExperimentRequest>) -> Result<Response<Self::RunExperimentStream>, Status> {
        let request = request.into_inner();
        let ast = parse_json(&request.ast_json, "ast_json")?;
        let client = self.client.clone();
        let data_dir = self.data_dir.clone();
        let (rows, receiver) = mpsc::channel(64);
        tokio::spawn(async move {
            if let Err(message) = run_dataset(client, &data_dir, &ast, request, &rows).await {
                let _ = rows.send(row_error(message)).await;
            }
        });
        let stream = ReceiverStream::new(receiver).map(|row| Ok(pb::ExperimentEvents { events: vec![row] }));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_evals(&self, _request: Request<pb::GetEvalsRequest>) -> Result<Response<pb::GetEvalsResponse>, Status> {
        // This example scores no evals; dataset rows carry an empty list.
        Ok(Response::new(pb::GetEvalsResponse { names: Vec::new() }))
    }

    async fn describe(&self, _request: Request<pb::DescribeRequest>) -> Result<Response<pb::RunnerInfo>, Status> {
        Ok(Response::new(pb::RunnerInfo {
            rendered_prompts: true,
            name: env!("CARGO_PKG_NAME").into(),
            version: env!("CARGO_PKG_VERSION").into(),
            eval_names: Vec::new(),
        }))
    }

    async fn handle_alert(&self, request: Request<pb::AlertRequest>) -> Result<Response<pb::AlertResponse>, Status> {
        let alert = request.into_inner();
        eprintln!("alert {}: {} {}", alert.id, alert.r#type, alert.status);
        Ok(Response::new(pb::AlertResponse { message: "logged".into() }))
    }
}

fn row_error(message: impl Into<String>) -> pb::ExperimentEvent {
    pb::ExperimentEvent { event: Some(experiment_event::Event::Error(pb::Error { message: message.into() })) }
}

/// One prompt run, its events sent to `events`; a send error means the
/// gateway cancelled, and the run stops there.
async fn run(client: &Client, prompt: &Prompt, events: &mpsc::Sender<pb::RunnerEvent>) {
    let work = async {
        match prompt.kind {
            Kind::Text | Kind::Object => chat(client, prompt, events).await,
            Kind::Image => image(client, prompt).await,
            Kind::Speech => speech(client, prompt).await,
        }
    };
    // When the gateway cancels, the receiver goes away: drop the model call at once.
    let result = tokio::select! {
        result = work => result,
        () = events.closed() => return,
    };
    let last = match result {
        Ok(Some(final_events)) => final_events,
        Ok(None) => return, // cancelled
        Err(message) => vec![error(message)],
    };
    for e in last {
        if events.send(e).await.is_err() {
            return;
        }
    }
}

fn chat_body(prompt: &Prompt) -> Value {
    let mut body = json!({
        "model": prompt.settings.get("model_name").cloned().unwrap_or(Value::Null),
        "messages": prompt.messages,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    for (setting, parameter) in SETTINGS {
        if let Some(value) = prompt.settings.get(setting) {
            body[parameter] = value.clone();
        }
    }
    if prompt.kind == Kind::Object {
        let schema = prompt.settings.get("schema").cloned().unwrap_or(json!({}));
        let name = prompt.settings.get("schema_name").and_then(Value::as_str).unwrap_or("output");
        body["response_format"] = json!({"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": true}});
    }
    body
}

/// Text streams its deltas as they come; object collects the JSON and sends
/// the parsed value. Returns the closing events, or None if cancelled.
async fn chat(client: &Client, prompt: &Prompt, events: &mpsc::Sender<pb::RunnerEvent>) -> Result<Option<Vec<pb::RunnerEvent>>, String> {
    let stream = client.chat_stream(&chat_body(prompt)).await?;
    futures::pin_mut!(stream);
    let (mut reason, mut usage, mut text) = ("stop".to_string(), None, String::new());
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        for choice in chunk["choices"].as_array().map(Vec::as_slice).unwrap_or_default() {
            if let Some(piece) = choice.pointer("/delta/content").and_then(Value::as_str).filter(|p| !p.is_empty()) {
                if prompt.kind == Kind::Text {
                    if events.send(event(Event::TextDelta(pb::TextDelta { text: piece.into() }))).await.is_err() {
                        return Ok(None);
                    }
                } else {
                    text.push_str(piece);
                }
            }
            if let Some(r) = choice["finish_reason"].as_str() {
                reason = r.to_string();
            }
        }
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            usage = Some(pb::Usage {
                input_tokens: u["prompt_tokens"].as_u64().unwrap_or(0),
                output_tokens: u["completion_tokens"].as_u64().unwrap_or(0),
                total_tokens: u["total_tokens"].as_u64(),
            });
        }
    }
    let mut closing = Vec::new();
    if prompt.kind == Kind::Object {
        let value: Value = serde_json::from_str(&text).map_err(|_| "the model's structured output is not valid JSON".to_string())?;
        closing.push(event(Event::ObjectFinal(pb::ObjectFinal { value_json: value.to_string() })));
    }
    closing.push(event(Event::Finish(pb::Finish { reason, usage })));
    Ok(Some(closing))
}

async fn image(client: &Client, prompt: &Prompt) -> Result<Option<Vec<pb::RunnerEvent>>, String> {
    let s = &prompt.settings;
    let mut body = json!({"model": s.get("model_name"), "prompt": prompt.media_text, "response_format": "b64_json"});
    if let Some(n) = s.get("num_images") {
        body["n"] = n.clone();
    }
    if let Some(size) = s.get("size") {
        body["size"] = size.clone();
    }
    let answer = client.images(&body).await?;
    let items = answer["data"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|d| pb::ImageItem { mime_type: "image/png".into(), base64: d["b64_json"].as_str().unwrap_or_default().into() })
        .collect();
    Ok(Some(vec![event(Event::Image(pb::Image { items })), event(Event::Finish(pb::Finish { reason: "stop".into(), usage: None }))]))
}

async fn speech(client: &Client, prompt: &Prompt) -> Result<Option<Vec<pb::RunnerEvent>>, String> {
    let s = &prompt.settings;
    let format = s.get("output_format").and_then(Value::as_str).unwrap_or("mp3").to_string();
    let mut body = json!({
        "model": s.get("model_name"),
        "input": prompt.media_text,
        "voice": s.get("voice").and_then(Value::as_str).unwrap_or("alloy"),
        "response_format": format,
    });
    if let Some(instructions) = &prompt.instructions {
        body["instructions"] = json!(instructions);
    }
    let audio = client.speech(&body).await?;
    let mime_type = match format.as_str() {
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        "opus" => "audio/opus",
        "aac" => "audio/aac",
        "flac" => "audio/flac",
        "pcm" => "audio/pcm",
        _ => "application/octet-stream",
    };
    let speech = pb::Speech { mime_type: mime_type.into(), base64: base64::engine::general_purpose::STANDARD.encode(audio), format };
    Ok(Some(vec![event(Event::Speech(speech)), event(Event::Finish(pb::Finish { reason: "stop".into(), usage: None }))]))
}

/// `dataset_path` under `data_dir`, or the refusal the Python runner gives.
/// The check is on the path's own components first (`..` cannot climb out),
/// so a refused path says nothing about what exists outside.
fn resolve(data_dir: &Path, dataset_path: &str) -> Result<PathBuf, String> {
    use std::path::Component;
    let refuse = || "cannot load the dataset: Access denied: path outside allowed directory".to_string();
    let mut inside = PathBuf::new();
    for component in Path::new(dataset_path).components() {
        match component {
            Component::Normal(part) => inside.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if !inside.pop() {
                    return Err(refuse());
                }
            }
            Component::RootDir | Component::Prefix(_) => return Err(refuse()),
        }
    }
    let base = data_dir.canonicalize().map_err(|e| format!("cannot load the dataset: {e}"))?;
    let path = base
        .join(&inside)
        .canonicalize()
        .map_err(|_| format!("cannot load the dataset: Dataset not found: {dataset_path}"))?;
    // A symbolic link inside may still point outside.
    if path.starts_with(&base) { Ok(path) } else { Err(refuse()) }
}

async fn run_dataset(
    client: Client,
    data_dir: &Path,
    ast: &Value,
    request: pb::RunExperimentRequest,
    rows: &mpsc::Sender<pb::ExperimentEvent>,
) -> Result<(), String> {
    let template = prompt::render(ast, &json!({"__probe": true})).map_err(|m| format!("cannot render the prompt: {m}"))?;
    let dataset_path = if request.dataset_path.is_empty() {
        template.test_settings.get("dataset").and_then(Value::as_str).unwrap_or_default().to_string()
    } else {
        request.dataset_path.clone()
    };
    if !dataset_path.ends_with(".jsonl") {
        return Err("cannot load the dataset: Dataset must be a JSON Lines file (.jsonl)".into());
    }
    let path = resolve(data_dir, &dataset_path)?;
    let text = tokio::fs::read_to_string(&path).await.map_err(|e| format!("cannot load the dataset: {e}"))?;
    let items: Vec<Value> = text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap_or(Value::Null)).collect();
    let run_id = uuid::Uuid::new_v4().to_string();
    let concurrency = if request.concurrency == 0 { 4 } else { request.concurrency as usize };
    let shared = Arc::new((client, ast.clone(), run_id, request.experiment_id.clone()));
    let mut results = futures::stream::iter(items.into_iter().map(|item| {
        let shared = Arc::clone(&shared);
        async move { run_item(&shared.0, &shared.1, &item, &shared.2, &shared.3).await }
    }))
    .buffer_unordered(concurrency);
    while let Some(row) = results.next().await {
        if rows.send(row).await.is_err() {
            return Ok(()); // cancelled
        }
    }
    Ok(())
}

/// One dataset item as a row, or an error row; the run goes on either way.
async fn run_item(client: &Client, ast: &Value, item: &Value, run_id: &str, run_name: &str) -> pb::ExperimentEvent {
    let Some(input) = item.get("input") else { return row_error("dataset item has no input") };
    let prompt = match prompt::render(ast, input) {
        Ok(prompt) => prompt,
        Err(message) => return row_error(format!("cannot render the prompt: {message}")),
    };
    let (events, mut receiver) = mpsc::channel(64);
    // Run and collect at once: a long answer must not fill the channel first.
    let produce = async move { run(client, &prompt, &events).await };
    let collect = async {
        let (mut text, mut value, mut tokens, mut failure) = (String::new(), None, None, None);
        while let Some(e) = receiver.recv().await {
            match e.event {
                Some(Event::TextDelta(d)) => text.push_str(&d.text),
                Some(Event::ObjectFinal(o)) => value = Some(o.value_json),
                Some(Event::Finish(f)) => tokens = f.usage.map(|u| u.total_tokens.unwrap_or(u.input_tokens + u.output_tokens)),
                Some(Event::Error(e)) => failure = Some(e.message),
                _ => {}
            }
        }
        (text, value, tokens, failure)
    };
    let ((), (text, value, tokens, failure)) = tokio::join!(produce, collect);
    if let Some(message) = failure {
        return row_error(message);
    }
    let actual = value.unwrap_or_else(|| Value::String(text).to_string());
    let row = pb::DatasetRow {
        input_json: input.to_string(),
        expected_output_json: item.get("expected_output").filter(|v| !v.is_null()).map(Value::to_string),
        actual_output_json: Some(actual),
        tokens,
        evals_json: "[]".into(),
        trace_id: String::new(),
        run_id: run_id.into(),
        run_name: run_name.into(),
    };
    pb::ExperimentEvent { event: Some(experiment_event::Event::Row(row)) }
}
