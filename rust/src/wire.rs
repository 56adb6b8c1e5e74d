//! The runner messages the framer decodes, mirrored by hand from
//! `protos/agentmark/runner/v1/runner.proto` so the build needs no `protoc`.
//!
//! Only the messages a runner streams back are here. A field number that
//! drifts from the .proto shows up at once: the parity tests feed bytes made
//! by the generated Python classes through both this decoder and the
//! pure-Python twin.

use prost::{Message, Oneof};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptKind {
    Text = 1,
    Object = 2,
    Image = 3,
    Speech = 4,
}

impl PromptKind {
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "text" => Some(Self::Text),
            "object" => Some(Self::Object),
            "image" => Some(Self::Image),
            "speech" => Some(Self::Speech),
            _ => None,
        }
    }
}

#[derive(Clone, PartialEq, Message)]
pub struct RunnerEvents {
    #[prost(message, repeated, tag = "1")]
    pub events: Vec<RunnerEvent>,
}

#[derive(Clone, PartialEq, Message)]
pub struct RunnerEvent {
    #[prost(oneof = "Event", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11")]
    pub event: Option<Event>,
}

#[derive(Clone, PartialEq, Oneof)]
pub enum Event {
    #[prost(message, tag = "1")]
    Started(Started),
    #[prost(message, tag = "2")]
    TextDelta(Text),
    #[prost(message, tag = "3")]
    ReasoningDelta(Text),
    #[prost(message, tag = "4")]
    ToolCall(ToolCall),
    #[prost(message, tag = "5")]
    ToolResult(ToolResult),
    #[prost(message, tag = "6")]
    ObjectDelta(JsonValue),
    #[prost(message, tag = "7")]
    ObjectFinal(JsonValue),
    #[prost(message, tag = "8")]
    Finish(Finish),
    #[prost(message, tag = "9")]
    Error(Error),
    #[prost(message, tag = "10")]
    Image(Image),
    #[prost(message, tag = "11")]
    Speech(Speech),
}

#[derive(Clone, PartialEq, Message)]
pub struct Started {
    #[prost(int32, tag = "1")]
    pub kind: i32,
    #[prost(string, tag = "2")]
    pub trace_id: String,
}

/// `TextDelta` and `ReasoningDelta`: one string at tag 1.
#[derive(Clone, PartialEq, Message)]
pub struct Text {
    #[prost(string, tag = "1")]
    pub text: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct ToolCall {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, tag = "3")]
    pub args_json: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct ToolResult {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, tag = "3")]
    pub result_json: String,
    #[prost(bool, tag = "4")]
    pub is_error: bool,
}

/// `ObjectDelta.partial_json` and `ObjectFinal.value_json`: JSON at tag 1.
#[derive(Clone, PartialEq, Message)]
pub struct JsonValue {
    #[prost(string, tag = "1")]
    pub json: String,
}

#[derive(Clone, Copy, PartialEq, Message)]
pub struct Usage {
    #[prost(uint64, tag = "1")]
    pub input_tokens: u64,
    #[prost(uint64, tag = "2")]
    pub output_tokens: u64,
    #[prost(uint64, optional, tag = "3")]
    pub total_tokens: Option<u64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Finish {
    #[prost(string, tag = "1")]
    pub reason: String,
    #[prost(message, optional, tag = "2")]
    pub usage: Option<Usage>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Error {
    #[prost(string, tag = "1")]
    pub message: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct ImageItem {
    #[prost(string, tag = "1")]
    pub mime_type: String,
    #[prost(string, tag = "2")]
    pub base64: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Image {
    #[prost(message, repeated, tag = "1")]
    pub items: Vec<ImageItem>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Speech {
    #[prost(string, tag = "1")]
    pub mime_type: String,
    #[prost(string, tag = "2")]
    pub base64: String,
    #[prost(string, tag = "3")]
    pub format: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct ExperimentEvents {
    #[prost(message, repeated, tag = "1")]
    pub events: Vec<ExperimentEvent>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ExperimentEvent {
    #[prost(oneof = "ExperimentEventKind", tags = "1, 2, 3")]
    pub event: Option<ExperimentEventKind>,
}

#[derive(Clone, PartialEq, Oneof)]
pub enum ExperimentEventKind {
    #[prost(message, tag = "1")]
    Row(DatasetRow),
    #[prost(message, tag = "2")]
    Error(Error),
    #[prost(message, tag = "3")]
    Started(Started),
}

#[derive(Clone, PartialEq, Message)]
pub struct DatasetRow {
    #[prost(string, tag = "1")]
    pub input_json: String,
    #[prost(string, optional, tag = "2")]
    pub expected_output_json: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub actual_output_json: Option<String>,
    #[prost(uint64, optional, tag = "4")]
    pub tokens: Option<u64>,
    #[prost(string, tag = "5")]
    pub evals_json: String,
    #[prost(string, tag = "6")]
    pub trace_id: String,
    #[prost(string, tag = "7")]
    pub run_id: String,
    #[prost(string, tag = "8")]
    pub run_name: String,
}

/// Decode a batch, or say in one phrase why it is not one.
pub fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, String> {
    M::decode(bytes).map_err(|e| e.to_string())
}
