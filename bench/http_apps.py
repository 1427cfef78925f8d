"""The two HTTP anchors of bench/http.py, each served by uvicorn (httptools, uvloop):

- `fastapi_extism:app` what a user would build instead of `spear serve`: FastAPI, a route
  that reads the body and calls an Extism plugin (bench/extism_echo.wat) with it;
- `bare_echo`: an ASGI app that reads the body and sends it back, nothing else: the floor
  of Python HTTP here.
"""

# No `from __future__ import annotations`: FastAPI reads the route's annotations at run time.

from pathlib import Path
from typing import Any


async def bare_echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/octet-stream"),
                            (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


def fastapi_extism() -> Any:
    import extism
    import wasmtime
    from fastapi import FastAPI, Request, Response

    wasm = bytes(wasmtime.wat2wasm((Path(__file__).parent / "extism_echo.wat").read_text()))
    plugin = extism.Plugin(wasm, wasi=False)
    app = FastAPI()

    @app.post("/functions/{name}/invoke")
    async def invoke(name: str, request: Request) -> Response:
        output = plugin.call("echo", await request.body())
        return Response(content=bytes(output), media_type="application/octet-stream")

    return app
