"""`agentmark-gw send` as a person sees it, and `agentmark-gw event`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import AGENTMARK, SECRET
from .servers.fake_openai import IMAGE_BYTES, FakeOpenAI
from .test_cli import environment, run

pytestmark = pytest.mark.e2e
EVENTS = AGENTMARK / "events"


async def send(tmp_path: Path, gateway: str, *args: str) -> tuple[int, str, str]:
    return await run("send", *args, "--url", gateway + "/", env=environment(tmp_path, AGENTMARK_WEBHOOK_SECRET=SECRET))


async def test_a_dataset_run_ends_with_a_summary_and_its_rows_in_a_file(tmp_path: Path, gateway: str) -> None:
    rows_file = tmp_path / "rows.json"
    code, out, err = await send(tmp_path, gateway, str(EVENTS / "dataset-run.json"), "--json", str(rows_file))
    assert code == 0, err
    assert "\x1b[" not in out  # no colour codes when the output is not a terminal
    rows = json.loads(rows_file.read_text())
    assert len(rows) == 6 and all(r["type"] == "dataset" for r in rows)
    passed = sum(r["result"]["evals"][0]["passed"] for r in rows)
    summary = " ".join(w for w in out.replace("|", " ").split() if set(w) - set("-+"))
    assert "rows errors tokens 6 0" in summary
    assert f"exact_match_json {passed}/6 ({100 * passed / 6:.0f}%) {passed / 6:.2f}" in summary
    assert f"wrote 6 rows to {rows_file}" in out


async def test_images_are_written_to_files(tmp_path: Path, gateway: str) -> None:
    event = {"event": {"type": "prompt-run", "data": {"ast": json.loads((AGENTMARK / "ast/image.json").read_text())}}}
    (tmp_path / "image.json").write_text(json.dumps(event))
    code, out, err = await send(tmp_path, gateway, str(tmp_path / "image.json"), "--out", str(tmp_path / "media"))
    assert code == 0, err
    written = tmp_path / "media" / "image-1.png"
    assert written.read_bytes() == IMAGE_BYTES
    assert f"wrote {written} (image/png)" in out


async def test_objects_end_pretty_printed(tmp_path: Path, gateway: str, fake_openai: FakeOpenAI) -> None:
    fake_openai.object_reply = {"answer": "4"}
    code, out, err = await send(tmp_path, gateway, str(EVENTS / "prompt-run-object.json"))
    assert code == 0, err
    assert out.splitlines()[:3] == ["{", '  "answer": "4"', "}"]
    assert out.splitlines()[-1].startswith("finish, 12 in /")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["prompt-run", "--ast", str(AGENTMARK / "ast/math.json"), "--props", '{"userMessage": "2+2"}', "--no-stream"],
         {"type": "object", "result": {"answer": "4"}}),
        (["get-evals"], {"type": "evals", "result": '["exact_match_json"]', "traceId": ""}),
        (["alert", "--type", "latency", "--status", "resolved", "--id", "a-9", "--value", "1.5", "--threshold", "2"],
         {"message": "Alert processed", "alertId": "a-9", "status": "resolved"}),
    ],
)
async def test_built_events_are_accepted_by_the_gateway(args: list[str], expected: dict, tmp_path: Path, gateway: str, fake_openai: FakeOpenAI) -> None:
    fake_openai.object_reply = {"answer": "4"}
    code, body, err = await run("event", *args, env=environment(tmp_path))
    assert code == 0, err
    event_file = tmp_path / "event.json"
    event_file.write_text(body)
    code, out, err = await send(tmp_path, gateway, str(event_file), "--raw")
    assert code == 0, err
    answer = json.loads(out)
    assert {k: answer[k] for k in expected} == expected


async def test_a_dataset_run_event_names_its_dataset(tmp_path: Path) -> None:
    code, body, _ = await run("event", "dataset-run", "--ast", str(AGENTMARK / "ast/sentiment.json"), "--dataset", "sentiment.jsonl",
                              "--experiment", "nightly", "--concurrency", "3", env=environment(tmp_path))
    data = json.loads(body)["event"]["data"]
    assert (data["datasetPath"], data["experimentId"], data["concurrency"]) == ("sentiment.jsonl", "nightly", 3)
    assert data["ast"]["children"][0]["type"] == "yaml"


async def test_bad_props_are_a_clear_error(tmp_path: Path) -> None:
    code, _, err = await run("event", "prompt-run", "--ast", str(AGENTMARK / "ast/text.json"), "--props", "{oops", env=environment(tmp_path))
    assert code == 2 and err.strip() == "error: --props is not valid JSON: {oops"


def test_text_from_the_wire_is_shown_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    import sys
    from pathlib import Path as P

    from agentmark_gw.console import Renderer, make_console

    renderer = Renderer(make_console(sys.stdout), make_console(sys.stderr), P("."))
    renderer.line({"type": "text", "result": "[red]not markup[/] :thumbs_up:"})
    renderer.line({"type": "error", "error": "cannot read [/data/x.jsonl]"})
    renderer.close()
    captured = capsys.readouterr()
    assert captured.out == "[red]not markup[/] :thumbs_up:\n"
    assert captured.err == "error: cannot read [/data/x.jsonl]\n"
