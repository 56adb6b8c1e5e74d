//! agentmark-gw's byte work, in plain Rust: webhook signatures and the
//! AgentMark wire format. The Python bindings live in `python.rs`; nothing
//! else here knows about Python, HTTP or gRPC.

pub mod framing;
pub mod items;
pub mod json;
pub mod signature;
pub mod wire;

#[cfg(feature = "python")]
mod python;
