//! An AgentMark runner in Rust, for agentmark-gw.
//!
//! Serves the `Runner` gRPC service from `protos/` (generated at build time)
//! and `grpc.health.v1`, running prompts against any OpenAI-compatible API
//! (`OPENAI_API_KEY`, `OPENAI_BASE_URL`):
//!
//!     agentmark-runner-rust --listen 127.0.0.1:50051
//!
//! A thin runner: it asks the gateway (`Describe`) for prompts and dataset
//! items rendered by AgentMark's own engine, so it has no template code and
//! reads no datasets; it calls the model and scores. Copy it as the start of
//! your own runner: `prompt.rs` turns rendered prompts into model inputs,
//! `openai.rs` talks to the model, `scorers.rs` scores dataset rows,
//! `service.rs` is the contract.

mod openai;
mod partial_json;
mod prompt;
mod scorers;
mod service;

pub mod pb {
    tonic::include_proto!("agentmark.runner.v1");
}

use pb::runner_server::RunnerServer;

struct Options {
    listen: std::net::SocketAddr,
}

fn options() -> Result<Options, String> {
    let mut listen = "127.0.0.1:50051".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().ok_or("--listen needs HOST:PORT")?,
            "--data-dir" => {
                return Err("--data-dir is gone: the gateway reads datasets now (its `datasets_dir` setting) and sends this \
runner one rendered item at a time"
                    .into())
            }
            "-h" | "--help" => {
                println!("usage: agentmark-runner-rust [--listen HOST:PORT]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let listen = listen.parse().map_err(|_| format!("--listen {listen} is not HOST:PORT"))?;
    Ok(Options { listen })
}

#[tokio::main]
async fn main() {
    let options = options().unwrap_or_else(|message| {
        eprintln!("error: {message}");
        std::process::exit(2);
    });
    rustls::crypto::ring::default_provider().install_default().expect("no other crypto provider is installed");

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<RunnerServer<service::RustRunner>>().await;
    let runner = service::RustRunner::new(openai::Client::from_env());

    let listener = tokio::net::TcpListener::bind(options.listen).await.unwrap_or_else(|e| {
        eprintln!("error: cannot listen on {}: {e}", options.listen);
        std::process::exit(1);
    });
    eprintln!("runner listening on {}", listener.local_addr().map(|a| a.to_string()).unwrap_or_default());
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} }
    };
    tonic::transport::Server::builder()
        .add_service(health)
        // Requests carry whole prompt ASTs beside the rendered prompt, and the gateway allows 10 MiB bodies;
        // answers can carry images. tonic's default of 4 MiB is too small for both.
        .add_service(RunnerServer::new(runner).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), shutdown)
        .await
        .expect("the gRPC server failed");
}
