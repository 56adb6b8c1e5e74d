-- POST one signed body on every request; print a JSON summary at the end.
-- Used by benchmarks/e2e.py:
--   E2E_BODY_FILE=body.json E2E_SIGNATURE=sha256=... wrk -s post.lua ...
-- The summary is one line starting with "E2E_JSON " (latencies in µs).

local path = os.getenv("E2E_BODY_FILE")
local signature = os.getenv("E2E_SIGNATURE") or ""
local file = assert(io.open(path, "rb"), "cannot open E2E_BODY_FILE")
local body = file:read("*a")
file:close()

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-agentmark-signature-256"] = signature

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'E2E_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"stdev":%.1f,"p50":%d,"p90":%d,"p99":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max, latency.stdev,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
