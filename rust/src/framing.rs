//! Runner events to AgentMark's wire format: the one place a runner event
//! becomes an NDJSON line (streaming) or part of a JSON envelope
//! (non-streaming).
//!
//! Input is the raw bytes of a `RunnerEvents` / `ExperimentEvents` batch, as
//! the gateway receives them from gRPC; output is bytes ready to write. The
//! shapes are pinned by AgentMark's vectors (`wire-chunks.json`,
//! `response-envelopes.json`, `dataset-rows.json`); key order is ours, fixed,
//! and identical in the Python twin.
//!
//! A runner cannot break the stream: a batch that does not decode, or a
//! `_json` field that is not valid JSON, becomes one terminal error line
//! naming the problem, and everything after a terminal event is dropped.

use crate::json::{is_valid, write_spliced, write_str};
use crate::wire::{
    self, DatasetRow, Event, ExperimentEventKind, ExperimentEvents, PromptKind, RunnerEvent,
    RunnerEvents, Usage,
};

pub const UNDECODABLE_BATCH: &str = "runner sent a message that is not a valid event batch";
pub const UNDECODABLE_EVENT: &str = "runner sent a message that is not a valid event";
pub const UNFINISHED: &str = "runner ended the stream without finishing";

fn invalid_json(field: &str) -> String {
    format!("runner sent invalid JSON in {field}")
}

/// A `_json` field, checked before it is spliced into output.
fn checked<'a>(text: &'a str, field: &str) -> Result<&'a str, String> {
    if is_valid(text) {
        Ok(text)
    } else {
        Err(invalid_json(field))
    }
}

/// `{"type":"error","error":...}\n`: the framers' terminal line.
fn error_line(out: &mut Vec<u8>, message: &str) {
    out.extend_from_slice(b"{\"type\":\"error\",\"error\":");
    write_str(out, message);
    out.extend_from_slice(b"}\n");
}

/// The head of one HTTP/1.1 chunk of `len` bytes (RFC 9112 7.1): the size in
/// hex and CRLF; the chunk is the head, the data and CRLF. The gateway frames
/// a stream's chunks itself where the server lets it write to the connection
/// (gateway/hypercorn_body.py); a zero-length chunk would end the body, so
/// empty data makes no chunk at all.
pub fn http_chunk_head(len: usize) -> String {
    format!("{len:x}\r\n")
}

/// `data` as one HTTP/1.1 chunk; empty data, none (see `http_chunk_head`).
pub fn http_chunk(data: &[u8]) -> Vec<u8> {
    if data.is_empty() {
        return Vec::new();
    }
    let head = http_chunk_head(data.len());
    let mut out = Vec::with_capacity(head.len() + data.len() + 2);
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// `{"type":"done","traceId":...}\n`, appended after a stream that had a trace id.
pub fn done_line(trace_id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + trace_id.len());
    out.extend_from_slice(b"{\"type\":\"done\",\"traceId\":");
    write_str(&mut out, trace_id);
    out.extend_from_slice(b"}\n");
    out
}

/// Usage in wire form: both field families, `totalTokens` only when known.
fn write_usage(out: &mut Vec<u8>, usage: &Usage) {
    out.extend_from_slice(b"{\"inputTokens\":");
    out.extend_from_slice(usage.input_tokens.to_string().as_bytes());
    out.extend_from_slice(b",\"outputTokens\":");
    out.extend_from_slice(usage.output_tokens.to_string().as_bytes());
    if let Some(total) = usage.total_tokens {
        out.extend_from_slice(b",\"totalTokens\":");
        out.extend_from_slice(total.to_string().as_bytes());
    }
    out.extend_from_slice(b",\"promptTokens\":");
    out.extend_from_slice(usage.input_tokens.to_string().as_bytes());
    out.extend_from_slice(b",\"completionTokens\":");
    out.extend_from_slice(usage.output_tokens.to_string().as_bytes());
    out.push(b'}');
}

/// `{"toolCallId":..,"toolName":..,"<key>":<json>}`; `<key>` omitted when the JSON is empty.
fn write_tool(out: &mut Vec<u8>, id: &str, name: &str, key: &[u8], json: &str) {
    out.extend_from_slice(b"{\"toolCallId\":");
    write_str(out, id);
    out.extend_from_slice(b",\"toolName\":");
    write_str(out, name);
    if !json.is_empty() {
        out.extend_from_slice(key);
        write_spliced(out, json);
    }
    out.push(b'}');
}

/// What one event did to the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Wrote a line, or nothing (an event that is not on the wire).
    Continue,
    /// Wrote the stream's last line (`finish` or `error`).
    Terminal,
}

/// Append the NDJSON line for one prompt event, if it has one. A
/// `Started` event is the caller's to interpret, and writes nothing.
pub fn frame_event(kind: PromptKind, event: &Event, out: &mut Vec<u8>) -> Result<Outcome, String> {
    use PromptKind::{Object, Text};
    let start = out.len();
    let outcome = match (kind, event) {
        (_, Event::Error(e)) => {
            error_line(out, &e.message);
            return Ok(Outcome::Terminal);
        }
        (Text, Event::TextDelta(t)) => {
            out.extend_from_slice(b"{\"type\":\"text\",\"result\":");
            write_str(out, &t.text);
            Outcome::Continue
        }
        (Text, Event::ToolCall(c)) => {
            let args = checked(&c.args_json, "tool_call.args_json")?;
            out.extend_from_slice(b"{\"type\":\"text\",\"toolCall\":");
            write_tool(out, &c.id, &c.name, b",\"args\":", args);
            Outcome::Continue
        }
        (Text, Event::ToolResult(r)) => {
            let result = checked_or_empty(&r.result_json, "tool_result.result_json")?;
            out.extend_from_slice(b"{\"type\":\"text\",\"toolResult\":");
            write_tool(out, &r.id, &r.name, b",\"result\":", result);
            Outcome::Continue
        }
        (Text, Event::Finish(f)) => {
            out.extend_from_slice(b"{\"type\":\"text\",\"finishReason\":");
            write_str(out, &f.reason);
            if let Some(usage) = &f.usage {
                out.extend_from_slice(b",\"usage\":");
                write_usage(out, usage);
            }
            Outcome::Terminal
        }
        (Object, Event::ObjectDelta(v)) | (Object, Event::ObjectFinal(v)) if !v.json.is_empty() => {
            let field = match event {
                Event::ObjectDelta(_) => "object_delta.partial_json",
                _ => "object_final.value_json",
            };
            let value = checked(&v.json, field)?;
            out.extend_from_slice(b"{\"type\":\"object\",\"result\":");
            write_spliced(out, value);
            Outcome::Continue
        }
        (Object, Event::Finish(f)) => match &f.usage {
            Some(usage) => {
                out.extend_from_slice(b"{\"type\":\"object\",\"usage\":");
                write_usage(out, usage);
                Outcome::Terminal
            }
            // The historical wire: a usage-less object finish has no chunk.
            None => return Ok(Outcome::Terminal),
        },
        (_, Event::Finish(_)) => return Ok(Outcome::Terminal),
        // Reasoning, `Started`, and events of another kind: not on the wire.
        _ => return Ok(Outcome::Continue),
    };
    debug_assert!(out.len() > start);
    out.extend_from_slice(b"}\n");
    Ok(outcome)
}

/// Empty means absent for `_json` fields; anything else must be valid.
fn checked_or_empty<'a>(text: &'a str, field: &str) -> Result<&'a str, String> {
    if text.is_empty() {
        Ok(text)
    } else {
        checked(text, field)
    }
}

/// The `get-evals` answer (`control-plane.json`): names sorted by code point,
/// `result` the compact JSON array as a string, `traceId` always empty.
pub fn evals_payload<S: AsRef<str>>(names: &[S]) -> Vec<u8> {
    let mut sorted: Vec<&str> = names.iter().map(AsRef::as_ref).collect();
    sorted.sort_unstable(); // UTF-8 byte order is code point order
    let mut array = Vec::new();
    array.push(b'[');
    for (i, name) in sorted.iter().enumerate() {
        if i > 0 {
            array.push(b',');
        }
        write_str(&mut array, name);
    }
    array.push(b']');
    let mut out = Vec::with_capacity(array.len() * 2 + 40);
    out.extend_from_slice(b"{\"type\":\"evals\",\"result\":");
    write_str(&mut out, std::str::from_utf8(&array).expect("built from str"));
    out.extend_from_slice(b",\"traceId\":\"\"}");
    out
}

/// Frames one prompt run's stream of `RunnerEvents` batches.
pub struct PromptFramer {
    kind: PromptKind,
    pub trace_id: String,
    pub terminated: bool,
}

impl PromptFramer {
    pub fn new(kind: PromptKind) -> Self {
        Self { kind, trace_id: String::new(), terminated: false }
    }

    /// The lines for one raw batch, concatenated: one write for the client.
    pub fn feed(&mut self, batch: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if self.terminated {
            return out;
        }
        let Ok(batch) = wire::decode::<RunnerEvents>(batch) else {
            self.terminated = true;
            error_line(&mut out, UNDECODABLE_BATCH);
            return out;
        };
        for event in batch.events.iter().filter_map(|e| e.event.as_ref()) {
            if self.step(event, &mut out) == Outcome::Terminal {
                break;
            }
        }
        out
    }

    /// One raw `RunnerEvent` (not a batch) to its line; empty when it has none.
    pub fn feed_event(&mut self, event: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if self.terminated {
            return out;
        }
        match wire::decode::<RunnerEvent>(event) {
            Ok(RunnerEvent { event: Some(event) }) => {
                self.step(&event, &mut out);
            }
            Ok(RunnerEvent { event: None }) => {}
            Err(_) => {
                self.terminated = true;
                error_line(&mut out, UNDECODABLE_EVENT);
            }
        }
        out
    }

    fn step(&mut self, event: &Event, out: &mut Vec<u8>) -> Outcome {
        if let Event::Started(s) = event {
            if !s.trace_id.is_empty() {
                self.trace_id.clone_from(&s.trace_id);
            }
        }
        let start = out.len();
        let outcome = frame_event(self.kind, event, out).unwrap_or_else(|message| {
            out.truncate(start);
            error_line(out, &message);
            Outcome::Terminal
        });
        if outcome == Outcome::Terminal {
            self.terminated = true;
        }
        outcome
    }

    /// The terminal error line for a failure the gateway saw itself (the
    /// runner's call broke); nothing is framed after it.
    pub fn fail(&mut self, message: &str) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.terminated {
            self.terminated = true;
            error_line(&mut out, message);
        }
        out
    }

    /// The stream's last lines: an error if the runner stopped without
    /// `finish` or `error` (a client must not take a cut-off answer for a
    /// whole one), then the `done` line when the run had a trace id.
    pub fn close(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.terminated {
            self.terminated = true;
            error_line(&mut out, UNFINISHED);
        }
        if !self.trace_id.is_empty() {
            out.extend_from_slice(&done_line(&self.trace_id));
        }
        out
    }
}

/// Frames a dataset run's stream of `ExperimentEvents` batches. Rows are
/// never terminal: a failing item is an error line and the run goes on.
pub struct ExperimentFramer {
    pub trace_id: String,
    pub rows: u64,
    pub errors: u64,
    /// Set after an undecodable message: later rows cannot be trusted.
    pub terminated: bool,
}

impl Default for ExperimentFramer {
    fn default() -> Self {
        Self::new()
    }
}

impl ExperimentFramer {
    pub fn new() -> Self {
        Self { trace_id: String::new(), rows: 0, errors: 0, terminated: false }
    }

    pub fn feed(&mut self, batch: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if self.terminated {
            return out;
        }
        let Ok(batch) = wire::decode::<ExperimentEvents>(batch) else {
            // Rows after an undecodable message cannot be trusted to be whole.
            self.terminated = true;
            self.errors += 1;
            error_line(&mut out, UNDECODABLE_BATCH);
            return out;
        };
        for event in batch.events.iter().filter_map(|e| e.event.as_ref()) {
            match event {
                ExperimentEventKind::Row(row) => {
                    let start = out.len();
                    if let Err(message) = write_row(&mut out, row) {
                        out.truncate(start);
                        self.errors += 1;
                        error_line(&mut out, &message);
                    } else {
                        self.rows += 1;
                    }
                }
                ExperimentEventKind::Error(e) => {
                    self.errors += 1;
                    error_line(&mut out, &e.message);
                }
                ExperimentEventKind::Started(s) => {
                    if !s.trace_id.is_empty() {
                        self.trace_id.clone_from(&s.trace_id);
                    }
                }
            }
        }
        out
    }

    /// An error line for a failure the gateway saw itself; later rows are dropped.
    pub fn fail(&mut self, message: &str) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.terminated {
            self.terminated = true;
            self.errors += 1;
            error_line(&mut out, message);
        }
        out
    }

    pub fn close(&self) -> Vec<u8> {
        if self.trace_id.is_empty() {
            Vec::new()
        } else {
            done_line(&self.trace_id)
        }
    }
}

/// One `{"type":"dataset",...}` line (`dataset-rows.json`).
pub fn write_row(out: &mut Vec<u8>, row: &DatasetRow) -> Result<(), String> {
    let input = checked_or_empty(&row.input_json, "row.input_json")?;
    let expected = optional_json(&row.expected_output_json, "row.expected_output_json")?;
    let actual = optional_json(&row.actual_output_json, "row.actual_output_json")?;
    let evals = checked_or_empty(&row.evals_json, "row.evals_json")?;
    out.extend_from_slice(b"{\"type\":\"dataset\",\"result\":{\"input\":");
    if input.is_empty() {
        out.extend_from_slice(b"null");
    } else {
        write_spliced(out, input);
    }
    if let Some(expected) = expected {
        out.extend_from_slice(b",\"expectedOutput\":");
        write_spliced(out, expected);
    }
    if let Some(actual) = actual {
        out.extend_from_slice(b",\"actualOutput\":");
        write_spliced(out, actual);
    }
    if let Some(tokens) = row.tokens {
        out.extend_from_slice(b",\"tokens\":");
        out.extend_from_slice(tokens.to_string().as_bytes());
    }
    out.extend_from_slice(b",\"evals\":");
    if evals.is_empty() {
        out.extend_from_slice(b"[]");
    } else {
        write_spliced(out, evals);
    }
    out.push(b'}');
    if !row.trace_id.is_empty() {
        out.extend_from_slice(b",\"traceId\":");
        write_str(out, &row.trace_id);
    }
    out.extend_from_slice(b",\"runId\":");
    write_str(out, &row.run_id);
    out.extend_from_slice(b",\"runName\":");
    write_str(out, &row.run_name);
    out.extend_from_slice(b"}\n");
    Ok(())
}

fn optional_json<'a>(value: &'a Option<String>, field: &str) -> Result<Option<&'a str>, String> {
    match value.as_deref() {
        None | Some("") => Ok(None),
        Some(text) => checked(text, field).map(Some),
    }
}

/// Folds a whole prompt stream into the one JSON envelope of a
/// non-streaming answer (`response-envelopes.json`, and the image and
/// speech envelopes docs/runners.md describes).
pub struct EnvelopeFolder {
    kind: PromptKind,
    pub trace_id: String,
    /// Set by an `error` event, an invalid batch or field, or (at close) a
    /// speech run that produced no audio. The gateway answers 500 with it.
    pub error: Option<String>,
    /// After `finish` or an error: later events are ignored.
    pub terminated: bool,
    text: String,
    tool_calls: Vec<u8>,
    tool_results: Vec<u8>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    object: Option<String>,
    images: Vec<u8>,
    speech: Option<wire::Speech>,
}

impl EnvelopeFolder {
    pub fn new(kind: PromptKind) -> Self {
        Self {
            kind,
            trace_id: String::new(),
            error: None,
            terminated: false,
            text: String::new(),
            tool_calls: Vec::new(),
            tool_results: Vec::new(),
            finish_reason: None,
            usage: None,
            object: None,
            images: Vec::new(),
            speech: None,
        }
    }

    pub fn feed(&mut self, batch: &[u8]) {
        if self.terminated {
            return;
        }
        let Ok(batch) = wire::decode::<RunnerEvents>(batch) else {
            self.fail(UNDECODABLE_BATCH.to_string());
            return;
        };
        for event in batch.events.iter().filter_map(|e| e.event.as_ref()) {
            if let Err(message) = self.step(event) {
                self.fail(message);
            }
            if self.terminated {
                return;
            }
        }
    }

    fn fail(&mut self, message: String) {
        self.error = Some(message);
        self.terminated = true;
    }

    fn step(&mut self, event: &Event) -> Result<(), String> {
        use PromptKind::{Image, Object, Speech, Text};
        match (self.kind, event) {
            (_, Event::Started(s)) if !s.trace_id.is_empty() => self.trace_id.clone_from(&s.trace_id),
            (_, Event::Error(e)) => self.fail(e.message.clone()),
            (_, Event::Finish(f)) => {
                self.finish_reason = Some(f.reason.clone());
                self.usage = f.usage;
                self.terminated = true;
            }
            (Text, Event::TextDelta(t)) => self.text.push_str(&t.text),
            (Text, Event::ToolCall(c)) => {
                let args = checked(&c.args_json, "tool_call.args_json")?;
                push_item(&mut self.tool_calls, |out| {
                    write_tool(out, &c.id, &c.name, b",\"args\":", args)
                });
            }
            (Text, Event::ToolResult(r)) => {
                let result = checked_or_empty(&r.result_json, "tool_result.result_json")?;
                push_item(&mut self.tool_results, |out| {
                    write_tool(out, &r.id, &r.name, b",\"result\":", result)
                });
            }
            (Object, Event::ObjectDelta(v)) | (Object, Event::ObjectFinal(v)) if !v.json.is_empty() => {
                let field = match event {
                    Event::ObjectDelta(_) => "object_delta.partial_json",
                    _ => "object_final.value_json",
                };
                self.object = Some(checked(&v.json, field)?.to_string());
            }
            (Image, Event::Image(image)) => {
                for item in &image.items {
                    push_item(&mut self.images, |out| {
                        out.extend_from_slice(b"{\"mimeType\":");
                        write_str(out, &item.mime_type);
                        out.extend_from_slice(b",\"base64\":");
                        write_str(out, &item.base64);
                        out.push(b'}');
                    });
                }
            }
            (Speech, Event::Speech(speech)) => self.speech = Some(speech.clone()),
            _ => {}
        }
        Ok(())
    }

    /// The envelope. Check `error` first: when it is set, this is empty.
    pub fn close(&mut self) -> Vec<u8> {
        if self.error.is_none() && !self.terminated {
            self.error = Some(UNFINISHED.to_string());
        }
        if self.error.is_none() && self.kind == PromptKind::Speech && self.speech.is_none() {
            self.error = Some("runner finished without producing speech".to_string());
        }
        if self.error.is_some() {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(64 + self.text.len() + self.images.len());
        match self.kind {
            PromptKind::Text => {
                out.extend_from_slice(b"{\"type\":\"text\",\"result\":");
                write_str(&mut out, &self.text);
                self.write_usage_and_reason(&mut out);
                out.extend_from_slice(b",\"toolCalls\":[");
                out.extend_from_slice(&self.tool_calls);
                out.extend_from_slice(b"],\"toolResults\":[");
                out.extend_from_slice(&self.tool_results);
                out.push(b']');
            }
            PromptKind::Object => {
                out.extend_from_slice(b"{\"type\":\"object\"");
                if let Some(object) = &self.object {
                    out.extend_from_slice(b",\"result\":");
                    write_spliced(&mut out, object);
                }
                self.write_usage_and_reason(&mut out);
            }
            PromptKind::Image => {
                out.extend_from_slice(b"{\"type\":\"image\",\"result\":[");
                out.extend_from_slice(&self.images);
                out.push(b']');
            }
            PromptKind::Speech => {
                let speech = self.speech.as_ref().expect("checked above");
                out.extend_from_slice(b"{\"type\":\"speech\",\"result\":{\"mimeType\":");
                write_str(&mut out, &speech.mime_type);
                out.extend_from_slice(b",\"base64\":");
                write_str(&mut out, &speech.base64);
                out.extend_from_slice(b",\"format\":");
                write_str(&mut out, &speech.format);
                out.push(b'}');
            }
        }
        if !self.trace_id.is_empty() {
            out.extend_from_slice(b",\"traceId\":");
            write_str(&mut out, &self.trace_id);
        }
        out.push(b'}');
        out
    }

    fn write_usage_and_reason(&self, out: &mut Vec<u8>) {
        if let Some(usage) = &self.usage {
            out.extend_from_slice(b",\"usage\":");
            write_usage(out, usage);
        }
        if let Some(reason) = &self.finish_reason {
            out.extend_from_slice(b",\"finishReason\":");
            write_str(out, reason);
        }
    }
}

/// Append one element to a comma-separated JSON array body.
fn push_item(list: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    if !list.is_empty() {
        list.push(b',');
    }
    write(list);
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use wire::{Finish, Text, ToolCall};

    fn batch(events: Vec<Event>) -> Vec<u8> {
        RunnerEvents { events: events.into_iter().map(|e| RunnerEvent { event: Some(e) }).collect() }
            .encode_to_vec()
    }

    #[test]
    fn frames_a_text_stream_and_stops_at_finish() {
        let mut framer = PromptFramer::new(PromptKind::Text);
        let out = framer.feed(&batch(vec![
            Event::Started(wire::Started { kind: 1, trace_id: "t1".into() }),
            Event::TextDelta(Text { text: "hi".into() }),
            Event::Finish(Finish { reason: "stop".into(), usage: None }),
            Event::TextDelta(Text { text: "late".into() }),
        ]));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"type\":\"text\",\"result\":\"hi\"}\n{\"type\":\"text\",\"finishReason\":\"stop\"}\n"
        );
        assert!(framer.terminated);
        assert_eq!(framer.close(), b"{\"type\":\"done\",\"traceId\":\"t1\"}\n");
    }

    #[test]
    fn invalid_json_becomes_one_terminal_error_line() {
        let mut framer = PromptFramer::new(PromptKind::Text);
        let out = framer.feed(&batch(vec![Event::ToolCall(ToolCall {
            id: "c".into(),
            name: "n".into(),
            args_json: "{oops".into(),
        })]));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"type\":\"error\",\"error\":\"runner sent invalid JSON in tool_call.args_json\"}\n"
        );
        assert!(framer.terminated);
    }

    #[test]
    fn garbage_bytes_become_an_error_line() {
        let mut framer = PromptFramer::new(PromptKind::Text);
        let out = framer.feed(b"\xff\xff\xff");
        assert!(out.starts_with(b"{\"type\":\"error\""));
    }
}
