"""Behind a real nginx (Debian's) on loopback: streams pass through
unbuffered, and heartbeats keep a stream open across silences longer than
nginx's proxy_read_timeout."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from agentmark_gw.gateway import create_app
from agentmark_gw.runner import events

from .conftest import HttpServer, agentmark_json, gateway_config, signed
from .servers.scripted_runner import ScriptedRunner
from .support.processes import Process, free_port, tail, wait_for_port
from .support.topology import NGINX

pytestmark = pytest.mark.e2e

NGINX_CONF = """
user root;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    upstream gateway {{ server 127.0.0.1:{upstream}; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://gateway;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout {read_timeout};
        }}
    }}
}}
"""


@pytest.fixture
async def nginx(tmp_path: Path, scripted: tuple[ScriptedRunner, str]) -> AsyncIterator[tuple[str, float]]:
    """nginx in front of a gateway whose heartbeat is shorter than nginx's read timeout."""
    if not Path(NGINX).exists():
        pytest.skip("these tests need Debian's nginx (apt-get install nginx; make test installs it when root)")
    read_timeout = 1.0
    config = replace(gateway_config(scripted[1]), heartbeat_interval=0.3)
    async with HttpServer(create_app(config)) as gateway:
        port = free_port()
        conf = tmp_path / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=tmp_path, upstream=gateway.port, port=port, read_timeout=f"{int(read_timeout * 1000)}ms"))
        process = Process("nginx", [NGINX, "-c", str(conf), "-p", str(tmp_path)], tmp_path / "nginx.log", dict(os.environ), port)
        process.start()
        try:
            try:
                await wait_for_port(port, timeout=10)
            except TimeoutError:
                raise AssertionError(f"nginx did not start: {tail(process.log)}") from None
            yield process.url, read_timeout
        finally:
            process.stop(grace=10)  # its whole group: the master and its worker


async def test_a_stream_passes_through_unbuffered(nginx: tuple[str, float], scripted_runner: ScriptedRunner, client: httpx.AsyncClient) -> None:
    url, _ = nginx
    scripted_runner.pause = 0.2
    scripted_runner.script = [events.text_delta(str(i)) for i in range(5)] + [events.finish("stop")]
    raw, headers = signed(agentmark_json("events/prompt-run-text.json"))
    arrivals = []
    async with client.stream("POST", url + "/", content=raw, headers=headers) as response:
        assert response.headers["agentmark-streaming"] == "true"
        async for line in response.aiter_lines():
            if line:
                arrivals.append((asyncio.get_running_loop().time(), json.loads(line)))
    assert [a[1] for a in arrivals][:5] == [{"type": "text", "result": str(i)} for i in range(5)]
    assert arrivals[-1][0] - arrivals[0][0] > 0.6  # lines arrived as written, not all at the end


async def test_heartbeats_keep_a_silent_dataset_run_open_through_nginx(
    nginx: tuple[str, float], scripted_runner: ScriptedRunner, client: httpx.AsyncClient,
) -> None:
    url, read_timeout = nginx
    scripted_runner.pause = read_timeout * 2.5  # each row comes after a silence nginx would not sit through
    scripted_runner.experiment_script = [
        events.dataset_row(input={"i": i}, actual_output="x", run_id="r", run_name="n") for i in range(3)
    ]
    original = ScriptedRunner.run_experiment

    async def slow_rows(self: ScriptedRunner, request):  # type: ignore[no-untyped-def]
        async for row in original(self, request):
            await asyncio.sleep(self.pause)
            yield row

    ScriptedRunner.run_experiment = slow_rows  # type: ignore[method-assign]
    try:
        raw, headers = signed(agentmark_json("events/dataset-run.json"))
        async with client.stream("POST", url + "/", content=raw, headers=headers, timeout=30) as response:
            lines = [json.loads(line) async for line in response.aiter_lines() if line.strip()]
    finally:
        ScriptedRunner.run_experiment = original  # type: ignore[method-assign]
    assert response.status_code == 200
    assert [line["result"]["input"] for line in lines] == [{"i": 0}, {"i": 1}, {"i": 2}]
