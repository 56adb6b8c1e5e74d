"""The runner SDK: serve prompts over gRPC to the gateway.

Most users put their AgentMark app behind it in a few lines:

    from agentmark.prompt_core import FileLoader, create_agentmark
    from agentmark_gw.runner import AgentMarkRunner, OpenAIExecutor, serve

    client = create_agentmark(loader=FileLoader("."))
    serve(AgentMarkRunner(client, OpenAIExecutor()), "127.0.0.1:50051")

Or write a runner from scratch: subclass `Runner` and yield `events`.

Never imports the gateway.
"""

from . import events
from .agentmark_bridge import AgentMarkRunner
from .openai_executor import OpenAIExecutor, Tool
from .scorers import BUILTIN_SCORERS
from .server import serve, serve_async, start
from .service import AlertRequest, ExperimentRequest, PromptRequest, Runner, RunnerServicer

__all__ = [
    "AgentMarkRunner",
    "AlertRequest",
    "BUILTIN_SCORERS",
    "OpenAIExecutor",
    "Tool",
    "ExperimentRequest",
    "PromptRequest",
    "Runner",
    "RunnerServicer",
    "events",
    "serve",
    "serve_async",
    "start",
]
