# A runner for your AgentMark app: AgentMark's runtime, the OpenAI executor, served over gRPC.
# Run it with OPENAI_API_KEY set, then point the gateway at it: agentmark-gw serve --runner 127.0.0.1:50051
# With the dashboard's AGENTMARK_API_KEY and AGENTMARK_APP_ID set it is connected to AgentMark:
# datasets from its API, every run traced to its dashboard. Without them, the files here.
from agentmark.prompt_core import FileLoader, create_agentmark

from agentmark_gw.runner import AgentMarkRunner, OpenAIExecutor, connect_agentmark, serve


def exact_match(params):
    return {"score": int(params["output"] == params["expectedOutput"]), "passed": params["output"] == params["expectedOutput"]}


client = create_agentmark(loader=connect_agentmark(FileLoader(".")), scorers={"exact_match": exact_match})
runner = AgentMarkRunner(client, OpenAIExecutor())

if __name__ == "__main__":
    serve(runner, "127.0.0.1:50051")
