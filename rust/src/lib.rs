//! agentmark-gw's byte work, in plain Rust: webhook signatures and the
//! AgentMark wire format; and (feature `client`) the runner client that
//! reads streamed runner calls off the Python event loop. The Python bindings
//! live in `python.rs`; apart from `runner_client`, nothing here knows about
//! Python, HTTP or gRPC.

pub mod framing;
pub mod items;
pub mod json;
#[cfg(feature = "client")]
pub mod runner_client;
pub mod signature;
pub mod wire;

#[cfg(feature = "python")]
mod python;
