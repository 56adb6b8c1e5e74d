"""Generated gRPC stubs for protos/agentmark/runner/v1/runner.proto.

Never edited by hand: run `python scripts/generate_protos.py`. Nothing here
depends on the rest of agentmark_gw.
"""
