"""Dataset runs read by the gateway, for runners that take items.

A runner whose `Describe` says `rendered_prompts` needs no template code and
no dataset reader: the gateway reads the dataset from its own source, keeps
the rows the event's `sampling` selects (AgentMark's own sampler), renders
each row's prompt with AgentMark's runtime (the row's `input` as props), and
hands the runner pool one `Item` at a time (see `runners.ItemsRun`).

Rows are read lazily, one line at a time: a 100,000-row dataset never sits
whole in memory. That is why AgentMark's loaders are not used for the rows
(its file reader and API loader read the whole dataset, and
`format_with_dataset` buffers every row and renders them all up front), but
its rules are: the same path checks (AgentMark's `FileLoader` does them),
the same row checks and the same error texts.

Two sources, chosen in `source_for`: a folder holding the app's build output
(`datasets_dir`), or AgentMark's API with the dashboard's credentials.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from .. import _accel
from ..agentmark_api import AgentMarkCloud, ConnectionSettingsError, api_message
from ..protocol import runner_pb2 as pb
from . import rendering

log = logging.getLogger("agentmark_gw.datasets")

# AgentMark's template endpoint: prompts and, with `Accept: application/x-ndjson`, datasets.
TEMPLATES_ENDPOINT = "v1/templates"
API_TIMEOUT = httpx.Timeout(30.0)  # AgentMark's loader waits as long


class DatasetError(Exception):
    """The dataset cannot be read: its whole run gets this one error row."""


class DatasetSource(Protocol):
    def describe(self) -> str: ...

    def rows(self, path: str) -> AsyncIterator[dict[str, Any]]:
        """The dataset's rows in order, each checked; `DatasetError` when it
        cannot be opened, or at the first bad row."""
        ...


def source_for(datasets_dir: str | None, environ: Any = os.environ) -> DatasetSource | None:
    """`datasets_dir` when set, else AgentMark's API when the dashboard's
    credentials are in the environment, else None (runners read datasets
    themselves, as before)."""
    if datasets_dir:
        return LocalDatasets(datasets_dir)
    try:
        cloud = AgentMarkCloud.from_env(environ)
    except ConnectionSettingsError as exc:
        log.error("no dataset source: %s", exc)
        return None
    return AgentMarkDatasets(cloud) if cloud is not None else None


def _rows(line: str, where: str, batches: bool = False) -> list[dict[str, Any]]:
    """A JSON Lines line's rows, checked as AgentMark's readers check them;
    with `batches`, a line may hold an array of rows (AgentMark's API sends those)."""
    line = line.strip()
    if not line:
        return []
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"Failed to parse JSON at {where}: {exc.msg}") from None
    rows = value if batches and isinstance(value, list) else [value]
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("input"), dict):
            raise DatasetError(f"Invalid dataset row at {where}: missing or invalid 'input' field. Each row must have an 'input' object.")
    return rows


def _empty(path: str) -> DatasetError:
    return DatasetError(f"Dataset {path} is empty or contains no valid rows")


class LocalDatasets:
    """`.jsonl` files in a folder (the app's `agentmark build` output)."""

    def __init__(self, folder: str) -> None:
        from agentmark.prompt_core import FileLoader

        self._root = Path(folder).resolve()
        self._loader = FileLoader(str(self._root))

    def describe(self) -> str:
        return f"the folder {self._root}"

    async def rows(self, path: str) -> AsyncIterator[dict[str, Any]]:
        try:
            # AgentMark's own checks: a .jsonl name, inside the folder, present.
            await self._loader.load_dataset(path)
        except (ValueError, OSError) as exc:
            raise DatasetError(str(exc)) from None
        count = 0
        # Local disk, read a line at a time: each read is a buffered
        # microsecond or so, not worth a thread hop per row.
        with open(self._root / path, encoding="utf-8") as lines:  # noqa: ASYNC230
            for number, line in enumerate(lines, start=1):
                for row in _rows(line, f"line {number} in dataset {path}"):
                    count += 1
                    yield row
        if count == 0:
            raise _empty(path)


class AgentMarkDatasets:
    """Datasets stored in AgentMark, streamed from its API as NDJSON."""

    def __init__(self, cloud: AgentMarkCloud) -> None:
        self._cloud = cloud

    def describe(self) -> str:
        return f"AgentMark's API ({self._cloud.describe()})"

    async def rows(self, path: str) -> AsyncIterator[dict[str, Any]]:
        headers = {**self._cloud.headers, "Accept": "application/x-ndjson"}
        url = f"{self._cloud.base_url}/{TEMPLATES_ENDPOINT}"
        count = 0
        try:
            async with httpx.AsyncClient(timeout=API_TIMEOUT) as client, client.stream("GET", url, params={"path": path}, headers=headers) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise DatasetError(api_message(response) if response.status_code < 500 else f"API error: {response.status_code}")
                number = 0
                async for line in response.aiter_lines():
                    number += 1
                    for row in _rows(line, f"line {number} of dataset {path}", batches=True):
                        count += 1
                        yield row
        except httpx.HTTPError as exc:
            raise DatasetError(f"cannot reach AgentMark at {self._cloud.base_url}: {type(exc).__name__}") from None
        if count == 0:
            raise _empty(path)


# --- a run's items -----------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One dataset item, ready for a runner: rendered, or the reason it could
    not be (an error row, and the run goes on)."""

    index: int
    input: dict[str, Any]
    input_json: str  # as it goes to the runner, and as the item's name is hashed from
    expected_output: Any
    has_expected_output: bool
    name: str
    rendered: pb.RenderedPrompt | None
    error: str = ""


@dataclass(frozen=True)
class RunPlan:
    """What every item of one run shares."""

    kind: str
    dataset_path: str
    prompt_name: str
    eval_names: list[str]


def plan(kind: str, data: dict[str, Any]) -> RunPlan:
    """The run's dataset and evals, from the event and the frontmatter (as
    AgentMark does: `datasetPath`, else `test_settings.dataset`)."""
    from agentmark.prompt_core.template_engines import get_front_matter

    # The webhook layer has already parsed this frontmatter safely (its kind).
    frontmatter = get_front_matter(data["ast"])
    frontmatter = frontmatter if isinstance(frontmatter, dict) else {}
    test_settings = frontmatter.get("test_settings")
    test_settings = test_settings if isinstance(test_settings, dict) else {}
    dataset_path = data.get("datasetPath") or test_settings.get("dataset") or ""
    if not isinstance(dataset_path, str) or not dataset_path:
        raise DatasetError("No dataset path provided. Either pass dataset_path or set test_settings.dataset in the prompt frontmatter.")
    evals = test_settings.get("evals") or []
    name = frontmatter.get("name")
    return RunPlan(kind, dataset_path, name if isinstance(name, str) else "", [e for e in evals if isinstance(e, str)])


async def items(source: DatasetSource, run: RunPlan, ast: dict[str, Any], sampling: dict[str, Any] | None) -> AsyncIterator[Item]:
    """The run's items in order, read, sampled and rendered one at a time."""
    from agentmark.prompt_core.sampling import (
        should_include_row,
        validate_sampling_options,
    )

    prompt = await rendering.load(run.kind, ast)
    options: Any = sampling or {}
    try:
        validate_sampling_options(options)
    except ValueError as exc:
        raise DatasetError(str(exc)) from None
    total = None
    if "rows" in options or ("split" in options and "seed" not in options):
        # These modes need the row count first (out-of-range rows are refused
        # before anything runs; an unseeded split cuts at a position): one
        # counting pass, holding nothing.
        total = 0
        async for _ in source.rows(run.dataset_path):
            total += 1
        for wanted in options.get("rows", ()):
            if wanted >= total:
                raise DatasetError(f"Row index {wanted} is out of bounds for dataset with {total} rows")
    index = 0
    position = -1
    async for row in source.rows(run.dataset_path):
        position += 1
        if not should_include_row(position, options, total):
            continue
        yield await _item(prompt, run, row, index)
        index += 1


async def _item(prompt: Any, run: RunPlan, row: dict[str, Any], index: int) -> Item:
    given = row["input"]
    given_json = json.dumps(given, separators=(",", ":"))
    name = _accel.dataset_item_name(given_json, index)
    has_expected = "expected_output" in row
    try:
        rendered = await rendering.render_loaded(run.kind, prompt, given)
    except rendering.CannotRender as exc:
        return Item(index, given, given_json, row.get("expected_output"), has_expected, name, None, str(exc))
    return Item(index, given, given_json, row.get("expected_output"), has_expected, name, rendered)
