"""How `agentmark-gw send` shows an AgentMark answer to a person.

Text streams token by token; an object grows in place and ends pretty-printed;
images and speech are written to files whose paths are printed; dataset runs
get a progress line and a summary table of rows, errors, tokens and each
eval's pass rate and mean score; `done` shows the trace id; errors are red.
Colours and live updates are off when the output is not a terminal or
`NO_COLOR` is set. Works with any AgentMark-compatible endpoint: it reads
only the wire format.
"""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from rich import box
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.pretty import Pretty
from rich.table import Table

_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "audio/mpeg": "mp3", "audio/wav": "wav",
               "audio/opus": "opus", "audio/aac": "aac", "audio/flac": "flac"}


def make_console(file: TextIO) -> Console:
    color = file.isatty() and not os.environ.get("NO_COLOR")
    # No emoji codes and no markup in what the model or runner wrote: it is shown as written.
    return Console(file=file, no_color=not color, force_terminal=color, highlight=False, soft_wrap=True, emoji=False)


@dataclass
class _EvalTally:
    runs: int = 0
    judged: int = 0  # evals that said pass or fail (some only score)
    passed: int = 0
    scored: int = 0
    score_sum: float = 0.0


@dataclass
class Renderer:
    out: Console
    err: Console
    out_dir: Path
    rows_file: Path | None = None
    # A dataset run: its summary is printed even when every row failed.
    dataset: bool = False
    failed: bool = False
    # Set when the gateway refused the request (an HTTP error): nothing ran, so no summary.
    refused: bool = False
    _in_text: bool = False
    _object: Any = None
    _live: Live | None = None
    _rows: list[dict[str, Any]] = field(default_factory=list)
    _errors: int = 0
    _started: float = field(default_factory=time.perf_counter)
    _evals: dict[str, _EvalTally] = field(default_factory=dict)

    # -- streams ---------------------------------------------------------------

    def line(self, chunk: dict[str, Any]) -> None:
        kind = chunk.get("type")
        if kind == "text":
            self._text(chunk)
        elif kind == "object":
            self._object_chunk(chunk)
        elif kind == "dataset":
            self._row(chunk)
        elif kind == "error":
            self._end_text()
            self._errors += 1
            self.failed = True
            self.err.print(f"[bold red]error:[/] {escape(str(chunk.get('error')))}", markup=True)
        elif kind == "done":
            self._end_text()
            self.out.print(f"[dim]trace {escape(str(chunk.get('traceId')))}[/]", markup=True)

    def _text(self, chunk: dict[str, Any]) -> None:
        if "result" in chunk:
            self.out.print(chunk["result"], end="", markup=False)
            self.out.file.flush()
            self._in_text = True
        elif "toolCall" in chunk:
            call = chunk["toolCall"]
            self._end_text()
            self.out.print(f"[cyan]→ {escape(str(call.get('toolName')))}[/]({escape(json.dumps(call.get('args')))})", markup=True)
        elif "toolResult" in chunk:
            result = chunk["toolResult"]
            self._end_text()
            self.out.print(f"[cyan]← {escape(str(result.get('toolName')))}[/] {escape(json.dumps(result.get('result')))}", markup=True)
        elif "finishReason" in chunk:
            self._end_text()
            self.out.print(f"[dim]finish: {chunk['finishReason']}{_usage(chunk.get('usage'))}[/]", markup=True)

    def _end_text(self) -> None:
        if self._in_text:
            self.out.print()
            self._in_text = False

    def _object_chunk(self, chunk: dict[str, Any]) -> None:
        if "result" in chunk:
            self._object = chunk["result"]
            if self.out.is_terminal:
                if self._live is None:
                    self._live = Live(Pretty(self._object), console=self.out, auto_refresh=False)
                    self._live.start()
                self._live.update(Pretty(self._object), refresh=True)
        elif "usage" in chunk:
            self._finish_object()
            self.out.print(f"[dim]finish{_usage(chunk['usage'])}[/]", markup=True)

    def _finish_object(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        elif self._object is not None:
            self.out.print_json(json.dumps(self._object))
        self._object = None

    def _row(self, chunk: dict[str, Any]) -> None:
        self._rows.append(chunk)
        for evaluation in chunk.get("result", {}).get("evals", []):
            tally = self._evals.setdefault(str(evaluation.get("name")), _EvalTally())
            tally.runs += 1
            if "passed" in evaluation:
                tally.judged += 1
                tally.passed += evaluation["passed"] is True
            if isinstance(evaluation.get("score"), int | float):
                tally.scored += 1
                tally.score_sum += evaluation["score"]
        if self.out.is_terminal:
            rate = len(self._rows) / max(time.perf_counter() - self._started, 1e-6)
            self.out.print(f"\r[bold]{len(self._rows)}[/] rows, {self._errors} errors, {rate:.1f} rows/s", end="", markup=True)

    # -- whole answers -----------------------------------------------------------

    def envelope(self, body: dict[str, Any]) -> None:
        kind = body.get("type")
        if kind == "text":
            self.out.print(body.get("result", ""), markup=False)
            for call in body.get("toolCalls", []):
                self.out.print(f"[cyan]→ {escape(str(call.get('toolName')))}[/]({escape(json.dumps(call.get('args')))})", markup=True)
            self.out.print(f"[dim]finish: {body.get('finishReason', '-')}{_usage(body.get('usage'))}[/]", markup=True)
        elif kind == "object":
            self.out.print_json(json.dumps(body.get("result")))
        elif kind == "image":
            for i, item in enumerate(body.get("result", []), start=1):
                self._write(f"image-{i}", item)
        elif kind == "speech":
            self._write("speech", body.get("result", {}))
        else:
            self.out.print_json(json.dumps(body))
        if body.get("traceId"):
            self.out.print(f"[dim]trace {escape(str(body['traceId']))}[/]", markup=True)

    def _write(self, stem: str, media: dict[str, Any]) -> None:
        extension = media.get("format") or _EXTENSIONS.get(media.get("mimeType", ""), "bin")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"{stem}.{extension}"
        path.write_bytes(base64.b64decode(media.get("base64", "")))
        self.out.print(f"wrote {path} ({media.get('mimeType')})", markup=False)

    def close(self) -> None:
        self._end_text()
        if self._object is not None or self._live is not None:
            self._finish_object()
        # A run refused before its first row (an HTTP error, or one error line
        # and nothing else) has nothing to summarise: the error says it all,
        # and an empty table beside it would only hide it.
        refused = self.refused or (not self._rows and self._errors <= 1 and self.failed)
        if self._rows or (self.dataset and not refused):
            self._summary()

    def _box(self) -> box.Box:
        # Box-drawing characters for terminals; plain ASCII for files and pipes.
        return box.HEAVY_HEAD if self.out.is_terminal else box.ASCII

    def _summary(self) -> None:
        if self.out.is_terminal:
            self.out.print()
        tokens = sum(r.get("result", {}).get("tokens", 0) or 0 for r in self._rows)
        table = Table(title="dataset run", show_edge=False, box=self._box())
        for column in ("rows", "errors", "tokens"):
            table.add_column(column, justify="right")
        table.add_row(str(len(self._rows)), str(self._errors), str(tokens))
        self.out.print(table)
        if self._evals:
            evals = Table(show_edge=False, box=self._box())
            for column, justify in (("eval", "left"), ("pass rate", "right"), ("mean score", "right")):
                evals.add_column(column, justify=justify)  # type: ignore[arg-type]
            for name, tally in sorted(self._evals.items()):
                mean = f"{tally.score_sum / tally.scored:.2f}" if tally.scored else "-"
                rate = f"{tally.passed}/{tally.judged} ({100 * tally.passed / tally.judged:.0f}%)" if tally.judged else "-"
                evals.add_row(escape(name), rate, mean)
            self.out.print(evals)
        if self.rows_file is not None:
            self.rows_file.write_text(json.dumps(self._rows, indent=2) + "\n")
            self.out.print(f"wrote {len(self._rows)} rows to {self.rows_file}", markup=False)


def _usage(usage: dict[str, Any] | None) -> str:
    if not usage:
        return ""
    return f", {usage.get('inputTokens')} in / {usage.get('outputTokens')} out tokens"
