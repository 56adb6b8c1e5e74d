//! The gateway's client for streamed runner calls (`RunPrompt`,
//! `RunExperiment`): tonic on a tokio runtime of its own thread, so reading a
//! runner's messages costs the Python event loop almost nothing.
//!
//! Why: with grpc.aio, each message a runner streams wakes gRPC's polling
//! thread and then the event loop, and its read alone costs what a bare
//! Quart app spends writing a token (benchmarks/README.md). Here the tokio
//! thread reads every call's messages into that call's queue without the GIL,
//! and tells Python only when a call it is waiting on has something: one byte
//! on a socket the event loop watches, however many calls became ready
//! meanwhile. Python then takes each message with `Call.try_next`, a lock and
//! a copy.
//!
//! Everything else the pool does (health checks, `Describe`, unary calls,
//! failover, round-robin over targets) stays in Python; this module only
//! opens a call on one target and reads it. A target whose name resolves to
//! several addresses (a Kubernetes headless service) gets a connection per
//! address, calls round-robin over them, and the name is resolved again
//! every `RESOLVE_EVERY`, as gRPC's `dns:///` resolver and round_robin do.

use std::collections::VecDeque;
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use http::uri::PathAndQuery;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

/// How often a target's name is resolved again (new pods join, old ones leave).
const RESOLVE_EVERY: Duration = Duration::from_secs(30);

/// Messages pass through as bytes: the framer decodes them, not tonic.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

/// What a call's reader hands Python, in order.
pub enum Item {
    Message(Bytes),
    End,
    /// The call failed: its gRPC status code and message.
    Failed(i32, String),
}

/// Message bytes read ahead of Python per call. Past it the reader stops,
/// HTTP/2 flow control stops the runner, and a slow client slows the runner
/// instead of growing the gateway (as with grpc.aio, which reads on demand).
const READ_AHEAD_BYTES: usize = 1024 * 1024;

#[derive(Default)]
struct CallState {
    items: VecDeque<Item>,
    /// Bytes of the messages in `items`.
    queued: usize,
    /// Python found the queue empty and waits to be told.
    waiting: bool,
    /// The reader found the queue full and waits for room.
    full: bool,
}

/// The wake-up side shared by every call: ready call ids, and the socket
/// the event loop watches.
struct Wake {
    ready: Mutex<Vec<u64>>,
    signalled: AtomicBool,
    writer: UnixStream,
}

impl Wake {
    fn ready(&self, id: u64) {
        self.ready.lock().unwrap().push(id);
        // One byte per batch of wake-ups: Python clears the flag when it
        // takes the ready list.
        if !self.signalled.swap(true, Ordering::AcqRel) {
            let _ = (&self.writer).write(&[1]);
        }
    }
}

/// The runtime and the wake-up socket: one per gateway worker.
pub struct Hub {
    runtime: tokio::runtime::Runtime,
    wake: Arc<Wake>,
    reader: UnixStream,
    next_id: AtomicU64,
}

impl Hub {
    pub fn new() -> std::io::Result<Hub> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("agentmark-gw-runner-client")
            .enable_all()
            .build()?;
        let (reader, writer) = UnixStream::pair()?;
        reader.set_nonblocking(true)?;
        writer.set_nonblocking(true)?;
        let wake = Arc::new(Wake { ready: Mutex::new(Vec::new()), signalled: AtomicBool::new(false), writer });
        Ok(Hub { runtime, wake, reader, next_id: AtomicU64::new(1) })
    }

    /// The socket to watch for readability.
    pub fn fileno(&self) -> i32 {
        self.reader.as_raw_fd()
    }

    /// The calls that have something for a waiting reader; drains the socket.
    pub fn take_ready(&self) -> Vec<u64> {
        let mut sink = [0u8; 256];
        while let Ok(n) = std::io::Read::read(&mut (&self.reader), &mut sink) {
            if n == 0 {
                break;
            }
        }
        self.wake.signalled.store(false, Ordering::Release);
        std::mem::take(&mut *self.wake.ready.lock().unwrap())
    }

    /// A channel to `target` (`HOST:PORT` or `dns:///HOST:PORT`): one
    /// connection per address the name resolves to, calls round-robin over
    /// them. Other target forms (`unix:`, `ipv4:` lists, a DNS authority)
    /// are refused: the pool reads those with grpc.aio.
    pub fn channel(&self, target: &str, max_receive: usize, max_send: usize) -> Result<RunnerChannel, String> {
        let authority = target.strip_prefix("dns:///").unwrap_or(target).to_string();
        if authority.contains("://") || authority.contains(',') || authority.starts_with("unix:") || authority.starts_with("ipv4:") || authority.starts_with("ipv6:") {
            return Err(format!("the Rust runner client does not take the target {target}"));
        }
        let _entered = self.runtime.enter();
        let connections = Arc::new(Connections::default());
        // Resolved now, so the first call has somewhere to go; then kept fresh.
        connections.update(&resolve(&authority));
        let resolving = self.runtime.spawn(resolve_forever(authority, connections.clone()));
        Ok(RunnerChannel { connections, max_receive, max_send, resolving })
    }

    /// Start a server-streaming call; its messages queue up in the `Call`.
    pub fn open(
        &self,
        channel: &RunnerChannel,
        path: &str,
        request: Vec<u8>,
        metadata: Vec<(String, String)>,
        timeout: Option<Duration>,
    ) -> Result<Call, String> {
        let path = PathAndQuery::try_from(path).map_err(|e| format!("bad method path {path}: {e}"))?;
        let mut request = Request::new(Bytes::from(request));
        for (key, value) in metadata {
            let key = MetadataKey::from_bytes(key.as_bytes()).map_err(|e| format!("bad metadata key {key}: {e}"))?;
            let value = MetadataValue::try_from(value.as_str()).map_err(|e| format!("bad metadata value: {e}"))?;
            request.metadata_mut().insert(key, value);
        }
        if let Some(timeout) = timeout {
            request.set_timeout(timeout); // grpc-timeout: the runner sees the deadline too
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(Mutex::new(CallState::default()));
        let room = Arc::new(tokio::sync::Notify::new());
        let queue = Queue { id, state: state.clone(), room: room.clone(), wake: self.wake.clone() };
        let Some(connection) = channel.connections.next() else {
            queue.push(Item::Failed(Code::Unavailable as i32, format!("no address for {}", channel.connections.authority())));
            let task = self.runtime.spawn(async {});
            return Ok(Call { id, state, room, task: task.abort_handle() });
        };
        let grpc = tonic::client::Grpc::new(connection)
            .max_decoding_message_size(channel.max_receive)
            .max_encoding_message_size(channel.max_send);
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let task = self.runtime.spawn(async move {
            let read = read_call(grpc, path, request, &queue, deadline);
            match deadline {
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, read).await.is_err() {
                        queue.push(deadline_exceeded());
                    }
                }
                None => read.await,
            }
        });
        Ok(Call { id, state, room, task: task.abort_handle() })
    }
}

struct Queue {
    id: u64,
    state: Arc<Mutex<CallState>>,
    room: Arc<tokio::sync::Notify>,
    wake: Arc<Wake>,
}

impl Queue {
    fn push(&self, item: Item) {
        let tell = {
            let mut state = self.state.lock().unwrap();
            if let Item::Message(bytes) = &item {
                state.queued += bytes.len();
            }
            state.items.push_back(item);
            std::mem::take(&mut state.waiting)
        };
        if tell {
            self.wake.ready(self.id);
        }
    }

    /// Until Python has taken enough that there is room to read on.
    async fn room(&self) {
        loop {
            {
                let mut state = self.state.lock().unwrap();
                if state.queued < READ_AHEAD_BYTES {
                    return;
                }
                state.full = true;
            }
            // `notify_one` keeps a permit when nobody waits yet: no lost wake-up.
            self.room.notified().await;
        }
    }
}

async fn read_call(
    mut grpc: tonic::client::Grpc<Channel>,
    path: PathAndQuery,
    request: Request<Bytes>,
    queue: &Queue,
    deadline: Option<tokio::time::Instant>,
) {
    // The runner enforces the deadline too (grpc-timeout) and may end the
    // call as CANCELLED a moment before our timer: past the deadline, that
    // is the deadline, as grpc.aio reports it.
    let failed = |status: &Status| match deadline {
        Some(deadline) if tokio::time::Instant::now() >= deadline - Duration::from_millis(50) => deadline_exceeded(),
        // Our own size check: reported as grpc.aio reports it, so the pool
        // refuses it alike (502, not a 400 blaming the request).
        _ if status.code() == Code::OutOfRange && status.message().contains("decoded message length too large") => {
            Item::Failed(Code::ResourceExhausted as i32, format!("Received message larger than max ({})", status.message()))
        }
        _ => Item::Failed(status.code() as i32, status.message().to_string()),
    };
    if let Err(error) = grpc.ready().await {
        queue.push(Item::Failed(Code::Unavailable as i32, error.to_string()));
        return;
    }
    let mut stream = match grpc.server_streaming(request, path, Raw).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            queue.push(failed(&status));
            return;
        }
    };
    loop {
        queue.room().await;
        match stream.message().await {
            Ok(Some(message)) => queue.push(Item::Message(message)),
            Ok(None) => {
                queue.push(Item::End);
                return;
            }
            Err(status) => {
                queue.push(failed(&status));
                return;
            }
        }
    }
}

fn deadline_exceeded() -> Item {
    Item::Failed(Code::DeadlineExceeded as i32, "Deadline Exceeded".into())
}

/// A target's connections, one per address, and whose turn is next.
#[derive(Default)]
struct Connections {
    by_address: Mutex<(String, Vec<(SocketAddr, Channel)>)>,
    turn: AtomicUsize,
}

impl Connections {
    fn next(&self) -> Option<Channel> {
        let list = self.by_address.lock().unwrap();
        if list.1.is_empty() {
            return None;
        }
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        Some(list.1[turn % list.1.len()].1.clone())
    }

    fn authority(&self) -> String {
        self.by_address.lock().unwrap().0.clone()
    }

    /// Keep the connections of addresses still there, open lazy ones for new
    /// addresses, drop the rest. An empty answer keeps what there was: a DNS
    /// hiccup is not "no runners".
    fn update(&self, found: &(String, Vec<SocketAddr>)) {
        let (authority, addresses) = found;
        let mut list = self.by_address.lock().unwrap();
        list.0 = authority.clone();
        if addresses.is_empty() {
            return;
        }
        let mut kept: Vec<(SocketAddr, Channel)> = Vec::with_capacity(addresses.len());
        for address in addresses {
            if kept.iter().any(|(a, _)| a == address) {
                continue;
            }
            let existing = list.1.iter().find(|(a, _)| a == address).map(|(_, c)| c.clone());
            kept.push((*address, existing.unwrap_or_else(|| connect_now(*address))));
        }
        list.1 = kept;
    }
}

/// A connection to `address`, started now (in the background) so the first
/// call does not wait for it, as grpc.aio's channel is connected by the
/// first health check. A refused or dropped connection fails a call at once
/// (UNAVAILABLE), so the pool moves on to the next runner; it is made again
/// for the next call. Must run inside the hub's runtime.
fn connect_now(address: SocketAddr) -> Channel {
    let channel = Endpoint::from_shared(format!("http://{address}"))
        .expect("a socket address is a valid URI")
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect_lazy();
    // A lazy channel connects on its first request: one health check (an
    // empty `HealthCheckRequest`, answered or not) makes that request now.
    let mut warm = tonic::client::Grpc::new(channel.clone());
    tokio::spawn(async move {
        if warm.ready().await.is_ok() {
            let path = PathAndQuery::from_static("/grpc.health.v1.Health/Check");
            let _ = warm.unary(Request::new(Bytes::new()), path, Raw).await;
        }
    });
    channel
}

fn resolve(authority: &str) -> (String, Vec<SocketAddr>) {
    (authority.to_string(), authority.to_socket_addrs().map(|a| a.collect()).unwrap_or_default())
}

/// Resolves the target's name again every `RESOLVE_EVERY` (sooner while it
/// resolves to nothing), as gRPC's `dns:///` resolver does.
async fn resolve_forever(authority: String, connections: Arc<Connections>) {
    loop {
        let empty = connections.by_address.lock().unwrap().1.is_empty();
        tokio::time::sleep(if empty { Duration::from_millis(500) } else { RESOLVE_EVERY }).await;
        let lookup = authority.clone();
        if let Ok(found) = tokio::task::spawn_blocking(move || resolve(&lookup)).await {
            connections.update(&found);
        }
    }
}

pub struct RunnerChannel {
    connections: Arc<Connections>,
    max_receive: usize,
    max_send: usize,
    resolving: tokio::task::JoinHandle<()>,
}

impl Drop for RunnerChannel {
    fn drop(&mut self) {
        self.resolving.abort();
    }
}

pub struct Call {
    pub id: u64,
    state: Arc<Mutex<CallState>>,
    room: Arc<tokio::sync::Notify>,
    task: tokio::task::AbortHandle,
}

impl Call {
    /// The next item, or None when there is none yet (then the hub names
    /// this call in `take_ready` once there is).
    pub fn try_next(&self) -> Option<Item> {
        let mut state = self.state.lock().unwrap();
        let item = state.items.pop_front();
        state.waiting = item.is_none();
        if let Some(Item::Message(bytes)) = &item {
            state.queued -= bytes.len();
            if state.full && state.queued < READ_AHEAD_BYTES {
                state.full = false;
                self.room.notify_one();
            }
        }
        item
    }

    /// Stop reading: the runner sees the call cancelled (RST_STREAM).
    pub fn cancel(&self) {
        self.task.abort();
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.task.abort();
    }
}
