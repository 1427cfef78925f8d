"""Peers that misbehave after authenticating, run as child processes by test_bounded.py.

`python hostile_peers.py flood-stream N SIZE`: a process-runtime worker that authenticates,
then sends N replies of SIZE bytes for request ids nobody sent and N unsolicited messages of
SIZE bytes, then serves `echo` honestly.

`python hostile_peers.py flood-grpc N SIZE`: a gRPC "pod" whose `Channel` accepts the stream
and sends N replies of SIZE bytes for unknown ids, then echoes requests.
"""

from __future__ import annotations

import asyncio
import os
import sys

from spear.protocol import codec
from spear.protocol.framing import frame
from spear.protocol.messages import ExecutionRequest, ExecutionResponse, Shutdown


def flood_stream(count: int, size: int) -> None:
    from spear.transport.tcp import connect_tcp_socket
    from spear.transport.unix import connect_unix_socket
    from spear.worker.handshake import present_token

    kind, _, address = os.environ["SPEAR_ENDPOINT"].partition(":")
    sock = (connect_unix_socket if kind == "unix" else connect_tcp_socket)(address, timeout=5)
    received = present_token(sock, instance_id=os.environ["SPEAR_INSTANCE_ID"],
                             token=os.environ["SPEAR_TOKEN"], timeout=5,
                             max_message_size=1 << 26)
    blob = b"z" * size
    for i in range(count):
        sock.sendall(frame(codec.encode(ExecutionResponse(f"nobody-{i}", blob))))
        sock.sendall(frame(codec.encode(ExecutionRequest(f"unsolicited-{i}", "note", blob))))
    print("flooded", flush=True)
    payloads = received.frames()  # what came in right behind the handshake
    while True:  # then an honest echo worker
        for payload in payloads:
            message = codec.decode(payload)
            if isinstance(message, ExecutionRequest):
                sock.sendall(frame(codec.encode(
                    ExecutionResponse(message.request_id, message.input_data))))
            elif isinstance(message, Shutdown):
                return
        count = sock.recv_into(received.writable())
        if not count:
            return
        payloads = received.received(count)


async def flood_grpc(count: int, size: int) -> None:
    import grpc
    from spear.transport.grpc.generated import spear_runtime_pb2 as pb
    from spear.transport.grpc.generated import spear_runtime_pb2_grpc as pb_grpc

    blob = b"z" * size

    class Hostile(pb_grpc.SpearRuntimeServicer):  # type: ignore[misc]
        async def Channel(self, request_iterator, context):  # type: ignore[no-untyped-def]
            await context.send_initial_metadata((("spear-protocol", "1"),))
            for i in range(count):
                await context.write(pb.Envelope(messages=[
                    codec.encode(ExecutionResponse(f"nobody-{i}", blob))]))
            print("flooded", flush=True)
            async for envelope in request_iterator:
                replies = []
                for payload in envelope.messages:
                    message = codec.decode(payload)
                    if isinstance(message, ExecutionRequest):
                        replies.append(codec.encode(
                            ExecutionResponse(message.request_id, message.input_data)))
                if replies:
                    await context.write(pb.Envelope(messages=replies))

    limit = 80 * 1024 * 1024
    server = grpc.aio.server(options=[("grpc.max_send_message_length", limit),
                                      ("grpc.max_receive_message_length", limit)])
    pb_grpc.add_SpearRuntimeServicer_to_server(Hostile(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"listening 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    mode, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if mode == "flood-stream":
        flood_stream(count, size)
    else:
        asyncio.run(flood_grpc(count, size))
