//! Thin PyO3 bindings over the plain-Rust modules: argument conversion,
//! GIL release for bulk work, and nothing else.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::framing;
use crate::runner_client;
use crate::signature;
use crate::wire::PromptKind;

/// Bodies at least this large are hashed with the GIL released, so other
/// requests in the process keep running. Below it, releasing and
/// re-acquiring the GIL costs more than the hash (measured in benchmarks/).
const DETACH_THRESHOLD: usize = 64 * 1024;

fn kind_from(name: &str) -> PyResult<PromptKind> {
    PromptKind::from_name(name).ok_or_else(|| {
        PyValueError::new_err(format!(
            "unknown prompt kind '{name}': expected text, object, image or speech"
        ))
    })
}

/// sign(secret, body) -> "sha256=<hex>"
#[pyfunction]
fn sign(secret: &str, body: &[u8]) -> String {
    signature::sign(secret, body)
}

/// verify(secrets, header, body) -> bool. Never raises for a bad header.
#[pyfunction]
#[pyo3(signature = (secrets, header, body))]
fn verify(py: Python<'_>, secrets: Secrets, header: Option<&str>, body: &[u8]) -> bool {
    let Some(header) = header else { return false };
    let secrets = secrets.0;
    if body.len() >= DETACH_THRESHOLD {
        py.detach(|| signature::verify(&secrets, header, body))
    } else {
        signature::verify(&secrets, header, body)
    }
}

/// One secret or a sequence of them (rotation).
struct Secrets(Vec<String>);

impl<'a, 'py> FromPyObject<'a, 'py> for Secrets {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        if let Ok(one) = obj.extract::<String>() {
            return Ok(Secrets(vec![one]));
        }
        obj.extract::<Vec<String>>().map(Secrets).map_err(|_| {
            pyo3::exceptions::PyTypeError::new_err("secrets must be a str or a sequence of str")
        })
    }
}

/// frame_event(kind, event) -> bytes | None: one raw `RunnerEvent` to its line.
#[pyfunction]
fn frame_event<'py>(py: Python<'py>, kind: &str, event: &[u8]) -> PyResult<Option<Bound<'py, PyBytes>>> {
    let mut framer = framing::PromptFramer::new(kind_from(kind)?);
    let line = framer.feed_event(event);
    Ok((!line.is_empty()).then(|| PyBytes::new(py, &line)))
}

/// http_chunk(data) -> bytes: `data` as one HTTP/1.1 chunk (size in hex, CRLF,
/// data, CRLF), written straight into the new bytes; empty data, b"".
#[pyfunction]
fn http_chunk<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    if data.is_empty() {
        return Ok(PyBytes::new(py, b""));
    }
    let head = framing::http_chunk_head(data.len());
    PyBytes::new_with(py, head.len() + data.len() + 2, |out| {
        let (head_part, rest) = out.split_at_mut(head.len());
        head_part.copy_from_slice(head.as_bytes());
        let (data_part, end) = rest.split_at_mut(data.len());
        data_part.copy_from_slice(data);
        end.copy_from_slice(b"\r\n");
        Ok(())
    })
}

/// Frames one prompt run: `feed(batch)` per gRPC message, `close()` at the end.
#[pyclass(module = "agentmark_gw._core")]
struct PromptFramer(framing::PromptFramer);

#[pymethods]
impl PromptFramer {
    #[new]
    fn new(kind: &str) -> PyResult<Self> {
        Ok(Self(framing::PromptFramer::new(kind_from(kind)?)))
    }

    fn feed<'py>(&mut self, py: Python<'py>, batch: &[u8]) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.feed(batch))
    }

    fn fail<'py>(&mut self, py: Python<'py>, message: &str) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.fail(message))
    }

    fn close<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.close())
    }

    #[getter]
    fn trace_id(&self) -> &str {
        &self.0.trace_id
    }

    #[getter]
    fn terminated(&self) -> bool {
        self.0.terminated
    }
}

/// Frames one dataset run: rows and error lines; never terminal.
#[pyclass(module = "agentmark_gw._core")]
struct ExperimentFramer(framing::ExperimentFramer);

#[pymethods]
impl ExperimentFramer {
    #[new]
    fn new() -> Self {
        Self(framing::ExperimentFramer::new())
    }

    fn feed<'py>(&mut self, py: Python<'py>, batch: &[u8]) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.feed(batch))
    }

    fn fail<'py>(&mut self, py: Python<'py>, message: &str) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.fail(message))
    }

    fn close<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.close())
    }

    #[getter]
    fn trace_id(&self) -> &str {
        &self.0.trace_id
    }

    #[getter]
    fn terminated(&self) -> bool {
        self.0.terminated
    }

    #[getter]
    fn rows(&self) -> u64 {
        self.0.rows
    }

    #[getter]
    fn errors(&self) -> u64 {
        self.0.errors
    }
}

/// Folds a prompt run into its non-streaming JSON envelope.
#[pyclass(module = "agentmark_gw._core")]
struct EnvelopeFolder(framing::EnvelopeFolder);

#[pymethods]
impl EnvelopeFolder {
    #[new]
    fn new(kind: &str) -> PyResult<Self> {
        Ok(Self(framing::EnvelopeFolder::new(kind_from(kind)?)))
    }

    fn feed(&mut self, batch: &[u8]) {
        self.0.feed(batch);
    }

    fn close<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.close())
    }

    #[getter]
    fn trace_id(&self) -> &str {
        &self.0.trace_id
    }

    #[getter]
    fn terminated(&self) -> bool {
        self.0.terminated
    }

    #[getter]
    fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
}

/// evals_payload(names) -> bytes: the `get-evals` answer body.
#[pyfunction]
fn evals_payload<'py>(py: Python<'py>, names: Vec<String>) -> Bound<'py, PyBytes> {
    PyBytes::new(py, &framing::evals_payload(&names))
}

/// dataset_item_name(input_json, index) -> str (`dataset-item-name.json`).
/// Raises ValueError for input that is not JSON.
#[pyfunction]
fn dataset_item_name(input_json: &str, index: u64) -> PyResult<String> {
    crate::items::dataset_item_name(input_json, index).map_err(|e| PyValueError::new_err(e.to_string()))
}

// --- the runner client (see runner_client.rs) --------------------------------

/// The runner client's runtime and wake-up socket; one per gateway worker.
#[pyclass(module = "agentmark_gw._core", frozen)]
struct RunnerClientHub {
    hub: runner_client::Hub,
}

#[pymethods]
impl RunnerClientHub {
    #[new]
    fn new() -> PyResult<Self> {
        let hub = runner_client::Hub::new().map_err(|e| PyValueError::new_err(format!("cannot start the runner client: {e}")))?;
        Ok(RunnerClientHub { hub })
    }

    /// The socket the event loop watches: readable when a waiting call has something.
    fn fileno(&self) -> i32 {
        self.hub.fileno()
    }

    /// The ids of the calls that have something for a waiting reader.
    fn take_ready(&self) -> Vec<u64> {
        self.hub.take_ready()
    }

    fn channel(&self, target: &str, max_receive: usize, max_send: usize) -> PyResult<RunnerClientChannel> {
        let channel = self.hub.channel(target, max_receive, max_send).map_err(PyValueError::new_err)?;
        Ok(RunnerClientChannel { channel })
    }

    /// Start a server-streaming call: `path` is `/package.Service/Method`.
    #[pyo3(signature = (channel, path, request, metadata, timeout=None))]
    fn open(
        &self,
        channel: &RunnerClientChannel,
        path: &str,
        request: &[u8],
        metadata: Vec<(String, String)>,
        timeout: Option<f64>,
    ) -> PyResult<RunnerCall> {
        let timeout = match timeout {
            Some(seconds) if seconds.is_finite() && seconds > 0.0 => Some(std::time::Duration::from_secs_f64(seconds)),
            Some(_) => Some(std::time::Duration::ZERO),
            None => None,
        };
        let call = self.hub.open(&channel.channel, path, request.to_vec(), metadata, timeout).map_err(PyValueError::new_err)?;
        Ok(RunnerCall { call })
    }
}

#[pyclass(module = "agentmark_gw._core", frozen)]
struct RunnerClientChannel {
    channel: runner_client::RunnerChannel,
}

#[pyclass(module = "agentmark_gw._core", frozen)]
struct RunnerCall {
    call: runner_client::Call,
}

#[pymethods]
impl RunnerCall {
    #[getter]
    fn id(&self) -> u64 {
        self.call.id
    }

    /// The next message (bytes); None at the end; False when nothing has
    /// come yet (the hub then names this call once something has); or, for
    /// a failed call, its (gRPC status code, message).
    fn try_next<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(match self.call.try_next() {
            None => pyo3::types::PyBool::new(py, false).to_owned().into_any(),
            Some(runner_client::Item::Message(bytes)) => PyBytes::new(py, &bytes).into_any(),
            Some(runner_client::Item::End) => py.None().into_bound(py),
            Some(runner_client::Item::Failed(code, message)) => (code, message).into_pyobject(py)?.into_any(),
        })
    }

    /// Stop the call: the runner sees it cancelled.
    fn cancel(&self) {
        self.call.cancel();
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(sign, m)?)?;
    m.add_function(wrap_pyfunction!(verify, m)?)?;
    m.add_function(wrap_pyfunction!(frame_event, m)?)?;
    m.add_function(wrap_pyfunction!(http_chunk, m)?)?;
    m.add_function(wrap_pyfunction!(evals_payload, m)?)?;
    m.add_function(wrap_pyfunction!(dataset_item_name, m)?)?;
    m.add_class::<PromptFramer>()?;
    m.add_class::<ExperimentFramer>()?;
    m.add_class::<EnvelopeFolder>()?;
    m.add_class::<RunnerClientHub>()?;
    m.add_class::<RunnerClientChannel>()?;
    m.add_class::<RunnerCall>()?;
    Ok(())
}
