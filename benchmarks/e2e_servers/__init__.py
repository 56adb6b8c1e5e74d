"""The servers the end-to-end benchmark measures the gateway against, and its trivial runner; each runs as `python -m benchmarks.e2e_servers.NAME`."""
