"""The runner SDK: serve prompts over gRPC to the gateway.

Most users put their AgentMark app behind it in a few lines:

    from agentmark.prompt_core import FileLoader, create_agentmark
    from agentmark_gw.runner import AgentMarkRunner, OpenAIExecutor, serve

    client = create_agentmark(loader=FileLoader("."))
    serve(AgentMarkRunner(client, OpenAIExecutor()), "127.0.0.1:50051")

To be connected to AgentMark as its own handlers are (datasets from its API,
traces to its dashboard, with the dashboard's `AGENTMARK_API_KEY` and
`AGENTMARK_APP_ID`; local files otherwise), wrap the loader:

    client = create_agentmark(loader=connect_agentmark(FileLoader(".")))

Or write a runner from scratch: subclass `Runner` and yield `events`.

Never imports the gateway.
"""

from ..agentmark_api import AgentMarkCloud
from . import events
from .agentmark_bridge import AgentMarkRunner
from .agentmark_cloud import connect_agentmark
from .openai_executor import OpenAIExecutor, Tool
from .scorers import BUILTIN_SCORERS
from .server import serve, serve_async, start
from .service import AlertRequest, DatasetItem, ExperimentRequest, PromptRequest, Runner, RunnerServicer

__all__ = [
    "AgentMarkCloud",
    "AgentMarkRunner",
    "AlertRequest",
    "BUILTIN_SCORERS",
    "DatasetItem",
    "OpenAIExecutor",
    "Tool",
    "ExperimentRequest",
    "connect_agentmark",
    "PromptRequest",
    "Runner",
    "RunnerServicer",
    "events",
    "serve",
    "serve_async",
    "start",
]
