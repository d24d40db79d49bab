"""Segmentation and depth inference on the open inference protocol (KServe v2 gRPC), over ONNX Runtime.

A request goes: servicer.py (thin) -> protocol.py (the one message <-> numpy codec) ->
model_manager.py (versions, hot reload, routing) -> batcher.py (dynamic batching, queue, deadlines)
-> runtime.py (ONNX Runtime session checked against config.pbtxt); models come from
services.common.model_repository. server.py sets it up, main.py is the entry point, config.py its
dataclass. client.py is the project's one inference client (tritonclient, sync and asyncio).
"""
