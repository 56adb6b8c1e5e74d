//! The `Runner` service: prompts and dataset items, rendered by the gateway,
//! run against an OpenAI-compatible API.

use std::pin::Pin;

use base64::Engine;
use futures::{Stream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::openai::Client;
use crate::partial_json::parse_partial;
use crate::pb::runner_event::Event;
use crate::pb::{self, experiment_event, runner_server};
use crate::prompt::{self, Kind, Prompt};
use crate::scorers;

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

/// The answer to a prompt run from a gateway that did not render it: this
/// runner has no template code, so it cannot run the AST itself.
const NOT_RENDERED: &str = "This runner runs prompts rendered by the gateway and this one came unrendered: put it behind an \
agentmark-gw that renders prompts (one that asks runners `Describe`).";

/// The answer to `RunExperiment`: whole dataset runs would need the runner to
/// read the dataset and render each row, which is the gateway's work here.
const NOT_ITEMS: &str = "This runner runs dataset items rendered by the gateway (RunDatasetItem), not whole dataset runs: \
give the gateway a dataset source (set `datasets_dir`, AGENTMARK_GW_DATASETS_DIR, or its AgentMark credentials) so it reads \
the dataset and sends the items.";

pub struct RustRunner {
    client: Client,
}

impl RustRunner {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

fn event(e: Event) -> pb::RunnerEvent {
    pb::RunnerEvent { event: Some(e) }
}

fn error(message: impl Into<String>) -> pb::RunnerEvent {
    event(Event::Error(pb::Error { message: message.into() }))
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
        let prompt = match &request.rendered {
            Some(rendered) => prompt::from_rendered(rendered),
            None => Err(NOT_RENDERED.to_string()),
        };
        let client = self.client.clone();
        let (events, receiver) = mpsc::channel(64);
        tokio::spawn(async move {
            match prompt {
                Ok(prompt) => run(&client, &prompt, request.should_stream, &events).await,
                Err(message) => {
                    let _ = events.send(error(message)).await;
                }
            }
        });
        Ok(Response::new(Box::pin(batched(receiver))))
    }

    async fn run_experiment(&self, _request: Request<pb::RunExperimentRequest>) -> Result<Response<Self::RunExperimentStream>, Status> {
        let answer = pb::ExperimentEvents { events: vec![row_error(NOT_ITEMS)] };
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(answer)]))))
    }

    async fn run_dataset_item(&self, request: Request<pb::DatasetItemRequest>) -> Result<Response<pb::ExperimentEvents>, Status> {
        // If the gateway gives up on the call, tonic drops this future, and the model request with it.
        let answer = dataset_item(&self.client, request.into_inner()).await;
        Ok(Response::new(pb::ExperimentEvents { events: vec![answer] }))
    }

    async fn get_evals(&self, _request: Request<pb::GetEvalsRequest>) -> Result<Response<pb::GetEvalsResponse>, Status> {
        Ok(Response::new(pb::GetEvalsResponse { names: scorers::NAMES.map(String::from).to_vec() }))
    }

    async fn describe(&self, _request: Request<pb::DescribeRequest>) -> Result<Response<pb::RunnerInfo>, Status> {
        Ok(Response::new(pb::RunnerInfo {
            rendered_prompts: true,
            name: env!("CARGO_PKG_NAME").into(),
            version: env!("CARGO_PKG_VERSION").into(),
            eval_names: scorers::NAMES.map(String::from).to_vec(),
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
async fn run(client: &Client, prompt: &Prompt, should_stream: bool, events: &mpsc::Sender<pb::RunnerEvent>) {
    let work = async {
        match prompt.kind {
            Kind::Text | Kind::Object => chat(client, prompt, should_stream, events).await,
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

/// JSON's truth as the Python runner tests settings (`if settings.get(...)`).
fn truthy(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|n| n != 0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
    }
}

/// The prompt's `max_retries`, or the Python executor's default.
fn retries(prompt: &Prompt) -> u32 {
    let given = prompt.settings.get("max_retries").and_then(Value::as_u64);
    given.map_or(crate::openai::DEFAULT_RETRIES, |n| u32::try_from(n).unwrap_or(u32::MAX))
}

/// A text setting, or `default` when it is absent or empty.
fn text_setting<'a>(prompt: &'a Prompt, key: &str, default: &'a str) -> &'a str {
    prompt.settings.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()).unwrap_or(default)
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
        let (schema, strict) = prompt::strict_schema(prompt.settings.get("schema").filter(|s| truthy(Some(s))).unwrap_or(&json!({})));
        let name = text_setting(prompt, "schema_name", "output");
        body["response_format"] = json!({"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": strict}});
    }
    body
}

/// Text streams its deltas as they come. Object collects the JSON and sends
/// the parsed value, and, when streaming, the object so far as it grows.
/// Returns the closing events, or None if cancelled.
async fn chat(
    client: &Client,
    prompt: &Prompt,
    should_stream: bool,
    events: &mpsc::Sender<pb::RunnerEvent>,
) -> Result<Option<Vec<pb::RunnerEvent>>, String> {
    if prompt.kind == Kind::Text && !prompt.tools.is_empty() {
        // An example with no tools of its own: say so, as the Python runner does for tools it lacks.
        return Err(format!("tools not registered with the executor: {}", prompt.tools.join(", ")));
    }
    let stream = client.chat_stream(&chat_body(prompt), retries(prompt)).await?;
    futures::pin_mut!(stream);
    let (mut reason, mut usage, mut text) = ("stop".to_string(), None, String::new());
    // The object shown so far, and the length (in characters) of the text it was read from.
    let (mut shown, mut parsed_at, mut length): (Option<Value>, usize, usize) = (None, 0, 0);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        for choice in chunk["choices"].as_array().map(Vec::as_slice).unwrap_or_default() {
            if let Some(piece) = choice.pointer("/delta/content").and_then(Value::as_str).filter(|p| !p.is_empty()) {
                if prompt.kind == Kind::Text {
                    if events.send(event(Event::TextDelta(pb::TextDelta { text: piece.into() }))).await.is_err() {
                        return Ok(None);
                    }
                    continue;
                }
                text.push_str(piece);
                length += piece.chars().count();
                // Re-reading the whole prefix costs its length, so read again only
                // once it has grown by an eighth: the object still grows visibly,
                // the total work stays O(n log n), and the steps are the Python runner's.
                if should_stream && length - parsed_at >= (parsed_at / 8).max(8) {
                    parsed_at = length;
                    if let Some(partial) = parse_partial(&text).filter(|p| shown.as_ref().is_none_or(|s| !scorers::same(s, p))) {
                        let delta = event(Event::ObjectDelta(pb::ObjectDelta { partial_json: partial.to_string() }));
                        if events.send(delta).await.is_err() {
                            return Ok(None);
                        }
                        shown = Some(partial);
                    }
                }
            }
            if let Some(r) = choice["finish_reason"].as_str() {
                reason = r.to_string();
            }
        }
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            let (input_tokens, output_tokens) = (u["prompt_tokens"].as_u64().unwrap_or(0), u["completion_tokens"].as_u64().unwrap_or(0));
            let total = u["total_tokens"].as_u64();
            // As the Python runner reports them: text treats a zero total as
            // none given; object fills a missing total from the two parts.
            let total_tokens = match prompt.kind {
                Kind::Text => total.filter(|&t| t != 0),
                _ => total.or(Some(input_tokens + output_tokens)),
            };
            usage = Some(pb::Usage { input_tokens, output_tokens, total_tokens });
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
    for (setting, parameter) in [("num_images", "n"), ("size", "size")] {
        if truthy(s.get(setting)) {
            body[parameter] = s[setting].clone();
        }
    }
    let answer = client.images(&body, retries(prompt)).await?;
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
    let format = text_setting(prompt, "output_format", "mp3").to_string();
    let mut body = json!({
        "model": prompt.settings.get("model_name"),
        "input": prompt.media_text,
        "voice": text_setting(prompt, "voice", "alloy"),
        "response_format": format,
    });
    if let Some(instructions) = &prompt.instructions {
        body["instructions"] = json!(instructions);
    }
    if truthy(prompt.settings.get("speed")) {
        body["speed"] = prompt.settings["speed"].clone();
    }
    let audio = client.speech(&body, retries(prompt)).await?;
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

/// A prompt's whole answer: the output as JSON (text as a string), and its tokens.
async fn answer(client: &Client, prompt: &Prompt) -> Result<(Value, Option<u64>), String> {
    let (events, mut receiver) = mpsc::channel(64);
    // Run and collect at once: a long answer must not fill the channel first.
    let produce = async move { run(client, prompt, false, &events).await };
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
        return Err(message);
    }
    let output = match value {
        Some(json) => serde_json::from_str(&json).map_err(|e| format!("the object is not JSON: {e}"))?,
        None => Value::String(text),
    };
    Ok((output, tokens))
}

/// One dataset item as its row (the model's answer, scored), or an error
/// event for the item: the gateway goes on with the rest of the run.
async fn dataset_item(client: &Client, item: pb::DatasetItemRequest) -> pb::ExperimentEvent {
    let Some(rendered) = &item.rendered else {
        return row_error(format!("dataset item {} came without its rendered prompt, which this runner needs to run it", item.index));
    };
    let prompt = match prompt::from_rendered(rendered) {
        Ok(prompt) if matches!(prompt.kind, Kind::Text | Kind::Object) => prompt,
        Ok(prompt) => return row_error(format!("dataset runs support text and object prompts, not {}", prompt.kind.name())),
        Err(message) => return row_error(message),
    };
    // Empty is absent, and so is null: a row without an expected output.
    let expected = match item.expected_output_json.as_str() {
        "" => None,
        text => match serde_json::from_str::<Value>(text) {
            Ok(Value::Null) => None,
            Ok(value) => Some(value),
            Err(_) => return row_error(format!("dataset item {}: expected_output_json is not JSON", item.index)),
        },
    };
    let (output, tokens) = match answer(client, &prompt).await {
        Ok(answer) => answer,
        Err(message) => return row_error(message),
    };
    let evals: Vec<Value> = item.eval_names.iter().filter_map(|name| scorers::score(name, &output, expected.as_ref())).collect();
    let row = pb::DatasetRow {
        input_json: item.input_json,
        expected_output_json: expected.is_some().then_some(item.expected_output_json),
        actual_output_json: Some(output.to_string()),
        tokens,
        evals_json: Value::Array(evals).to_string(),
        // This example records no traces; a runner that does puts the item's trace id here.
        trace_id: String::new(),
        run_id: item.run_id,
        run_name: item.run_name,
    };
    pb::ExperimentEvent { event: Some(experiment_event::Event::Row(row)) }
}
