//! The end-to-end benchmark's trivial runner in Rust (`benchmarks/e2e.py
//! --runner-impl rust`): the raw Python runner
//! (`benchmarks/e2e_servers/trivial_runner.py --impl raw`) answer for answer,
//! byte for byte, at a fraction of its CPU, so that a runner sharing the
//! benchmark machine's cores with the gateway takes little from it.
//!
//!     agentmark-gw-trivial-runner --listen 127.0.0.1:PORT --messages DIR
//!
//! DIR is what `trivial_runner.py --dump-messages DIR` writes: the raw
//! runner's pre-encoded answers, sent as they are, and samples of its paced
//! messages, which this runner encodes itself and checks against the samples
//! at start-up. As the raw runner, it never parses a request: RunPrompt only
//! searches the request bytes for the paced marker (`payloads.paced_params`).
//! Health (`grpc.health.v1`) is SERVING for "" and the Runner service.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use futures::stream::{self, BoxStream, StreamExt};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, Body, BoxFuture, Context, Poll, Service, StdError};
use tonic::server::{Grpc, NamedService, ServerStreamingService, UnaryService};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;

#[allow(dead_code, clippy::all, clippy::pedantic)] // generated; only the paced messages are used
mod pb {
    include!(concat!(env!("OUT_DIR"), "/agentmark.runner.v1.rs"));
}

const SERVICE_NAME: &str = "agentmark.runner.v1.Runner";
// As the SDK's SERVER_OPTIONS (agentmark_gw/runner/server.py).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(5 * 60);
// payloads.py: the paced answer's usage and the marker's bounds.
const INPUT_TOKENS: u64 = 21;
const MAX_PACED_TOKENS: u64 = 100_000;
const MAX_PACED_GAP_MS: u64 = 10_000;
const PACED_MARKER: &[u8] = b"e2e-paced tokens=";
const PACED_GAP: &[u8] = b" gap_ms=";

// --- bytes in, bytes out ---------------------------------------------------------

/// Requests arrive as bytes and answers leave as bytes: no (de)serializing.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

// --- the answers -----------------------------------------------------------------

/// The raw runner's whole answers, as it encoded them.
struct Answers {
    prompt: Bytes,
    experiment: Bytes,
    evals: Bytes,
    alert: Bytes,
}

impl Answers {
    fn load(dir: &Path) -> Result<Self, String> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map(Bytes::from).map_err(|e| format!("{}: {e}", path.display()))
        };
        Ok(Self {
            prompt: read("prompt.bin")?,
            experiment: read("experiment.bin")?,
            evals: read("evals.bin")?,
            alert: read("alert.bin")?,
        })
    }
}

fn runner_events(event: pb::runner_event::Event) -> Bytes {
    pb::RunnerEvents { events: vec![pb::RunnerEvent { event: Some(event) }] }
        .encode_to_vec()
        .into()
}

/// Token `i` of a paced answer: one text delta, "tok00042 ".
fn paced_message(i: u64) -> Bytes {
    runner_events(pb::runner_event::Event::TextDelta(pb::TextDelta { text: format!("tok{i:05} ") }))
}

/// The paced answer's finish, with usage.
fn paced_finish(tokens: u64) -> Bytes {
    let usage = pb::Usage { input_tokens: INPUT_TOKENS, output_tokens: tokens, total_tokens: Some(INPUT_TOKENS + tokens) };
    runner_events(pb::runner_event::Event::Finish(pb::Finish { reason: "stop".into(), usage: Some(usage) }))
}

/// Every `paced-delta-I.bin` and `paced-finish-N.bin` in `dir` (the raw
/// runner's own encoding) is what this runner sends for token I or N tokens.
fn check_paced_samples(dir: &Path) -> Result<usize, String> {
    let mut checked = 0;
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let ours = if let Some(i) = name.strip_prefix("paced-delta-").and_then(|r| r.strip_suffix(".bin")) {
            paced_message(i.parse().map_err(|_| format!("{name}: not an index"))?)
        } else if let Some(n) = name.strip_prefix("paced-finish-").and_then(|r| r.strip_suffix(".bin")) {
            paced_finish(n.parse().map_err(|_| format!("{name}: not a count"))?)
        } else {
            continue;
        };
        let theirs = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if ours[..] != theirs[..] {
            return Err(format!("{name}: the raw runner sends {theirs:?}, this runner would send {:?}", &ours[..]));
        }
        checked += 1;
    }
    if checked == 0 {
        return Err(format!("no paced samples (paced-delta-*.bin, paced-finish-*.bin) in {}", dir.display()));
    }
    Ok(checked)
}

/// payloads.paced_params: (tokens, gap) if the request bytes hold
/// `e2e-paced tokens=N gap_ms=G` anywhere (the first such), else None.
fn paced_params(raw: &[u8]) -> Option<(u64, Duration)> {
    fn number(s: &[u8]) -> Option<(u64, usize)> {
        let len = s.iter().take_while(|b| b.is_ascii_digit()).count();
        let value = s[..len].iter().fold(0u64, |v, d| v.saturating_mul(10).saturating_add(u64::from(d - b'0')));
        (len > 0).then_some((value, len))
    }
    let mut from = 0;
    while let Some(at) = raw[from..].windows(PACED_MARKER.len()).position(|w| w == PACED_MARKER) {
        let rest = &raw[from + at + PACED_MARKER.len()..];
        if let Some((tokens, len)) = number(rest) {
            if let Some((gap_ms, _)) = rest[len..].strip_prefix(PACED_GAP).and_then(number) {
                return Some((tokens.min(MAX_PACED_TOKENS), Duration::from_millis(gap_ms.min(MAX_PACED_GAP_MS))));
            }
        }
        from += at + 1;
    }
    None
}

/// A model's pace: token i is sent when due, `i * gap` after the first poll,
/// and the finish at `tokens * gap`, a fixed schedule (a late token does not
/// delay the next). Dropped when the call ends or is cancelled.
fn paced_answer(tokens: u64, gap: Duration) -> BoxStream<'static, Result<Bytes, Status>> {
    stream::unfold((0u64, None), move |(i, start)| async move {
        if i > tokens {
            return None;
        }
        let start = start.unwrap_or_else(tokio::time::Instant::now);
        let due = start + gap * u32::try_from(i).ok()?;
        if due > tokio::time::Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        let message = if i < tokens { paced_message(i) } else { paced_finish(tokens) };
        Some((Ok(message), (i + 1, Some(start))))
    })
    .boxed()
}

// --- the service -----------------------------------------------------------------

struct RunPrompt(Arc<Answers>);

impl ServerStreamingService<Bytes> for RunPrompt {
    type Response = Bytes;
    type ResponseStream = BoxStream<'static, Result<Bytes, Status>>;
    type Future = std::future::Ready<Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let answer = match paced_params(request.get_ref()) {
            Some((tokens, gap)) => paced_answer(tokens, gap),
            None => stream::once(std::future::ready(Ok(self.0.prompt.clone()))).boxed(),
        };
        std::future::ready(Ok(Response::new(answer)))
    }
}

/// A server-streaming call answered by one message.
struct OneMessage(Bytes);

impl ServerStreamingService<Bytes> for OneMessage {
    type Response = Bytes;
    type ResponseStream = stream::Once<std::future::Ready<Result<Bytes, Status>>>;
    type Future = std::future::Ready<Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, _request: Request<Bytes>) -> Self::Future {
        std::future::ready(Ok(Response::new(stream::once(std::future::ready(Ok(self.0.clone()))))))
    }
}

impl UnaryService<Bytes> for OneMessage {
    type Response = Bytes;
    type Future = std::future::Ready<Result<Response<Bytes>, Status>>;

    fn call(&mut self, _request: Request<Bytes>) -> Self::Future {
        std::future::ready(Ok(Response::new(self.0.clone())))
    }
}

/// The Runner service, routed by method as tonic's generated servers are.
#[derive(Clone)]
struct RawRunner(Arc<Answers>);

impl NamedService for RawRunner {
    const NAME: &'static str = SERVICE_NAME;
}

impl<B> Service<http::Request<B>> for RawRunner
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let answers = Arc::clone(&self.0);
        let method = req.uri().path().strip_prefix("/agentmark.runner.v1.Runner/").unwrap_or_default().to_owned();
        Box::pin(async move {
            let mut grpc = Grpc::new(RawCodec).apply_max_message_size_config(Some(MAX_MESSAGE), Some(MAX_MESSAGE));
            Ok(match method.as_str() {
                "RunPrompt" => grpc.server_streaming(RunPrompt(answers), req).await,
                "RunExperiment" => grpc.server_streaming(OneMessage(answers.experiment.clone()), req).await,
                "GetEvals" => grpc.unary(OneMessage(answers.evals.clone()), req).await,
                "HandleAlert" => grpc.unary(OneMessage(answers.alert.clone()), req).await,
                _ => Status::unimplemented("").into_http(),
            })
        })
    }
}

// --- main ------------------------------------------------------------------------

struct Args {
    listen: SocketAddr,
    messages: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    const USAGE: &str = "usage: agentmark-gw-trivial-runner --listen HOST:PORT --messages DIR";
    let (mut listen, mut messages) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--listen" => listen = Some(value.parse().map_err(|e| format!("--listen {value}: {e}"))?),
            "--messages" => messages = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown argument {flag}\n{USAGE}")),
        }
    }
    Ok(Args { listen: listen.ok_or(USAGE)?, messages: messages.ok_or(USAGE)? })
}

async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

// One thread: the benchmark machine's two cores are shared with the gateway
// and the load client, and this runner's work is small.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let answers = Answers::load(&args.messages)?;
    let samples = check_paced_samples(&args.messages)?;
    let (health, health_service) = tonic_health::server::health_reporter();
    for name in ["", SERVICE_NAME] {
        health.set_service_status(name, ServingStatus::Serving).await;
    }
    // TCP_NODELAY, as gRPC's own servers: a paced token is a small write that
    // must not wait for the previous one's ACK.
    let incoming = TcpIncoming::bind(args.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?
        .with_nodelay(Some(true));
    eprintln!("rust runner listening on {} ({samples} paced samples checked)", args.listen);
    let stop = Arc::new(tokio::sync::Notify::new());
    let server = tonic::transport::Server::builder()
        .max_connection_age(MAX_CONNECTION_AGE)
        .add_service(health_service)
        .add_service(RawRunner(Arc::new(answers)))
        .serve_with_incoming_shutdown(incoming, {
            let stop = Arc::clone(&stop);
            async move { stop.notified().await }
        });
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return Ok(result?),
        () = stop_signal() => {}
    }
    // As the raw runner's server.stop(1.0): calls under way get a second.
    stop.notify_one();
    let _ = tokio::time::timeout(Duration::from_secs(1), server).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paced_params_as_payloads_py() {
        assert_eq!(paced_params(b"xx e2e-paced tokens=150 gap_ms=20\"}"), Some((150, Duration::from_millis(20))));
        assert_eq!(paced_params(b"e2e-paced tokens=9999999 gap_ms=99999"), Some((100_000, Duration::from_secs(10))));
        // The first occurrence that matches, as re.search.
        assert_eq!(paced_params(b"e2e-paced tokens=x e2e-paced tokens=3 gap_ms=4"), Some((3, Duration::from_millis(4))));
        assert_eq!(paced_params(b"e2e-paced tokens=3 gap_ms="), None);
        assert_eq!(paced_params(b"e2e-paced tokens= gap_ms=4"), None);
        assert_eq!(paced_params(b""), None);
    }
}
