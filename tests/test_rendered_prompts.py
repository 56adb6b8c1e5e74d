"""Runners that ask (`Describe` → `rendered_prompts`) get each prompt as
AgentMark's own runtime renders it; runners written before `Describe` get
exactly the v1 request. Real gateway, real grpc.aio runners, on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
from agentmark.prompt_core import create_agentmark

from agentmark_gw.gateway import create_app
from agentmark_gw.protocol import runner_pb2 as pb
from agentmark_gw.protocol import runner_pb2_grpc
from agentmark_gw.runner import events, start

from .conftest import HttpServer, agentmark_json, gateway_config, signed
from .servers.scripted_runner import ScriptedRunner

pytestmark = pytest.mark.e2e

FIXTURES = {"text": "text", "sentiment": "object", "attachments": "object", "image": "image", "speech": "speech"}


class RenderingRunner(ScriptedRunner):
    """A runner with no template code: it asks the gateway to render."""

    wants_rendered_prompts = True


class V1Runner(runner_pb2_grpc.RunnerServicer):
    """A runner written before `Describe`: the generated base answers it UNIMPLEMENTED."""

    def __init__(self) -> None:
        self.requests: list[pb.RunPromptRequest] = []

    async def RunPrompt(self, request: pb.RunPromptRequest, context: Any) -> AsyncIterator[pb.RunnerEvents]:  # noqa: N802
        self.requests.append(request)
        yield pb.RunnerEvents(events=[events.text_delta("v1"), events.finish("stop")])


def _el(name: str, children: list[Any], attributes: list[Any] | None = None) -> dict[str, Any]:
    return {"type": "mdxJsxFlowElement", "name": name, "attributes": attributes or [], "children": children}


def _para(*children: dict[str, Any]) -> dict[str, Any]:
    return {"type": "paragraph", "children": list(children)}


# A prompt with a filter and a conditional, as AgentMark's build writes its tree.
TEMPLATED = {
    "type": "root",
    "children": [
        {"type": "yaml", "value": "name: templated\ntext_config:\n  model_name: m\n  temperature: 0.2\ntest_settings:\n  props:\n    name: ada\n    vip: true"},
        _el("System", [_para({"type": "text", "value": "Hello "}, {"type": "mdxTextExpression", "value": "upper(props.name)"})]),
        _el("User", [_el("If", [_para({"type": "text", "value": "VIP!"})],
                         [{"type": "mdxJsxAttribute", "name": "condition", "value": {"type": "mdxJsxAttributeValueExpression", "value": "props.vip"}}])]),
    ],
}


async def post(url: str, data: dict[str, Any]) -> httpx.Response:
    raw, headers = signed({"event": {"type": "prompt-run", "data": data}})
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(url + "/", content=raw, headers=headers)


async def as_agentmark_renders(kind: str, ast: dict[str, Any], props: dict[str, Any] | None) -> dict[str, Any]:
    client = create_agentmark()
    prompt = await getattr(client, f"load_{kind}_prompt")(ast)
    formatted = await prompt.format(props=props) if props else await prompt.format_with_test_props()
    return formatted.model_dump(by_alias=False)


def message_texts(rendered: pb.RenderedPrompt) -> list[tuple[str, str]]:
    return [(m.role, "".join(part.text for part in m.content if part.WhichOneof("part") == "text")) for m in rendered.messages]


def expected_texts(formatted: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for m in formatted.get("messages") or []:
        content = m["content"]
        text = content if isinstance(content, str) else "".join(p.get("text") or "" for p in content if p.get("type") == "text")
        out.append((m["role"], text))
    return out


@pytest.fixture
async def rendering_gateway() -> AsyncIterator[tuple[RenderingRunner, str]]:
    runner = RenderingRunner()
    server, port = await start(runner, "127.0.0.1:0")
    try:
        async with HttpServer(create_app(gateway_config(f"127.0.0.1:{port}"))) as gateway:
            yield runner, gateway.url
    finally:
        await server.stop(0)


@pytest.mark.parametrize("fixture", list(FIXTURES))
async def test_every_fixture_prompt_arrives_rendered_as_agentmark_renders_it(fixture: str, rendering_gateway: tuple[RenderingRunner, str]) -> None:
    runner, url = rendering_gateway
    kind = FIXTURES[fixture]
    ast = agentmark_json(f"ast/{fixture}.json")
    runner.script = [events.error("recorded")]
    await post(url, {"ast": ast, "options": {"shouldStream": False}})
    request = runner.seen[-1]
    rendered = request.rendered
    assert rendered is not None
    formatted = await as_agentmark_renders(kind, ast, None)
    config = formatted[f"{kind}_config"]
    assert rendered.kind == {"text": pb.PROMPT_KIND_TEXT, "object": pb.PROMPT_KIND_OBJECT, "image": pb.PROMPT_KIND_IMAGE, "speech": pb.PROMPT_KIND_SPEECH}[kind]
    assert rendered.name == formatted["name"] and rendered.model_name == config["model_name"]
    assert message_texts(rendered) == expected_texts(formatted)
    assert list(rendered.eval_names) == list((formatted.get("test_settings") or {}).get("evals") or [])
    if kind == "object":
        assert json.loads(rendered.schema_json) == config["schema_"]
    if kind == "image":
        assert rendered.text == config["prompt"] and json.loads(rendered.settings_json)["size"] == config["size"]
    if kind == "speech":
        assert rendered.text == config["text"] and rendered.instructions == config["instructions"]
    if fixture == "attachments":
        parts = [p.WhichOneof("part") for m in rendered.messages for p in m.content]
        assert parts.count("image") == 1 and parts.count("file") == 1
        file = next(p.file for m in rendered.messages for p in m.content if p.WhichOneof("part") == "file")
        assert file.data == "https://example.com/document.pdf"
    # The AST still comes beside it, once: not again inside data_json.
    assert request.ast == ast and "ast" not in request.data


async def test_templates_are_rendered_with_custom_props_or_the_test_props(rendering_gateway: tuple[RenderingRunner, str]) -> None:
    runner, url = rendering_gateway
    runner.script = [events.text_delta("ok"), events.finish("stop")]
    await post(url, {"ast": TEMPLATED})
    assert message_texts(runner.seen[-1].rendered) == [("system", "Hello ADA"), ("user", "VIP!")]
    assert json.loads(runner.seen[-1].rendered.settings_json) == {"temperature": 0.2}
    await post(url, {"ast": TEMPLATED, "customProps": {"name": "bob", "vip": False}})
    assert message_texts(runner.seen[-1].rendered) == [("system", "Hello BOB"), ("user", "")]


async def test_a_prompt_agentmark_cannot_render_is_a_400_before_any_runner_is_called(rendering_gateway: tuple[RenderingRunner, str]) -> None:
    runner, url = rendering_gateway
    broken = {"type": "root", "children": [{"type": "yaml", "value": "name: broken\ntext_config:\n  model_name: m"},
                                            _el("User", [_para({"type": "mdxTextExpression", "value": "nosuchfilter(props.x)"})])]}
    response = await post(url, {"ast": broken, "customProps": {"x": 1}})
    assert response.status_code == 400
    assert response.json()["message"].startswith("Cannot render the prompt: ")
    assert 'Filter "nosuchfilter" is not registered' in response.json()["message"]
    assert runner.seen == []


async def test_a_runner_written_before_describe_gets_the_v1_request() -> None:
    legacy = V1Runner()
    server = grpc.aio.server()
    runner_pb2_grpc.add_RunnerServicer_to_server(legacy, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with HttpServer(create_app(gateway_config(f"127.0.0.1:{port}"))) as gateway:
            event = agentmark_json("events/prompt-run-text.json")
            raw, headers = signed(event)
            async with httpx.AsyncClient(timeout=30) as client:
                response = await client.post(gateway.url + "/", content=raw, headers=headers)
    finally:
        await server.stop(0)
    assert response.status_code == 200 and '"result":"v1"' in response.text
    request = legacy.requests[-1]
    data = event["event"]["data"]
    assert not request.HasField("rendered")
    assert json.loads(request.ast_json) == data["ast"]
    assert json.loads(request.data_json) == data  # the AST inside data_json too, as v1 always sent it


async def test_sdk_runners_describe_themselves() -> None:
    plain, rendering = ScriptedRunner(), RenderingRunner()
    plain.evals = ["exact_match"]
    servers = [await start(r, "127.0.0.1:0") for r in (plain, rendering)]
    try:
        infos = []
        for _, port in servers:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                infos.append(await runner_pb2_grpc.RunnerStub(channel).Describe(pb.DescribeRequest(), timeout=5))
    finally:
        await asyncio.gather(*(server.stop(0) for server, _ in servers))
    assert not infos[0].rendered_prompts and infos[0].name == "ScriptedRunner" and list(infos[0].eval_names) == ["exact_match"]
    assert infos[1].rendered_prompts and infos[1].version


async def test_the_rust_example_has_no_template_code_and_answers_templated_prompts(
    rust_gateway: str, fake_openai: Any
) -> None:
    """examples/runner-rust asks for rendered prompts: a filter and a
    conditional its own example renderer refuses reach the model as
    AgentMark renders them, for both the test props and custom props."""
    for props, expected in ((None, ["Hello ADA", "VIP!"]), ({"name": "bob", "vip": False}, ["Hello BOB", ""])):
        data: dict[str, Any] = {"ast": TEMPLATED, "options": {"shouldStream": False}}
        if props:
            data["customProps"] = props
        response = await post(rust_gateway, data)
        assert response.status_code == 200, response.text
        sent = fake_openai.requests[-1]
        assert [m["content"] for m in sent["messages"]] == expected and sent["temperature"] == 0.2
