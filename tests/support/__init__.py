"""The harness: processes on loopback for the tests, the benchmarks and the
scripts alike (one place that starts the gateway, runners, the fake model and
nginx, and waits for them to serve).

- `processes`: a `Process` (its own session, its log, stop and restart), free
  ports, waiting for a port or a 200, and what /proc says of a process tree;
- `stack`: the gateway as a process (`GatewayProcess`), and the reference
  stack behind it (fake model, reference runner, gateway);
- `topology`: nginx in front of several gateways and runners (`Topology`).

Imports go one way: tests, benchmarks/ and scripts/ import this package; it
imports neither benchmarks nor scripts, only the project and tests/servers/
(the stand-ins it starts). Run from the checkout root, benchmarks and scripts
as modules (`python -m benchmarks.soak`), so no path needs editing.
"""
