"""The gRPC transport: the `.proto`, its generated code, and the credential helpers.

Generated code lives in `generated/` (regenerate with `python -m spear.transport.grpc.codegen`).
"""
