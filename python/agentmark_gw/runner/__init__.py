"""The runner SDK: write a runner in Python and serve it over gRPC.

    from agentmark_gw.runner import Runner, events, serve

    class Echo(Runner):
        async def run_prompt(self, request):
            yield events.text_delta(str(request.props))
            yield events.finish("stop")

    serve(Echo(), "127.0.0.1:50051")

Never imports the gateway.
"""

from . import events
from .server import serve, serve_async, start
from .service import AlertRequest, ExperimentRequest, PromptRequest, Runner, RunnerServicer

__all__ = [
    "AlertRequest",
    "ExperimentRequest",
    "PromptRequest",
    "Runner",
    "RunnerServicer",
    "events",
    "serve",
    "serve_async",
    "start",
]
