"""The control block a guest hands over in the ABI handshake, and its request buffer.

`negotiate` runs the handshake of docs/wasm-abi.md ("Version negotiation"): the guest's ABI
version, then `spear_init`, whose answer must be an aligned address with a whole control block
inside memory, the magic and the same version. Every failure is a load error naming what was
wrong. The request buffer (`req_ptr`, `req_cap`) is re-read and re-checked whenever the guest
may have moved it (after `spear_reserve`).
"""

from __future__ import annotations

from collections.abc import Callable

from spear.errors import ExecutionFailed
from spear.transport.wasm import abi
from spear.transport.wasm.guest_memory import GuestMemory

CallExport = Callable[[str, tuple[int, ...]], int]


class ControlBlock:
    __slots__ = ("address", "req_cap", "req_ptr", "request", "response", "room")

    def __init__(self, address: int) -> None:
        self.address = address
        self.request = address + abi.CTRL_REQUEST
        self.response = address + abi.CTRL_RESPONSE
        self.req_ptr = 0
        self.req_cap = 0
        self.room = 0  # the most a request may hold now: min(req_cap, max message size)

    def read_request_buffer(self, memory: GuestMemory, max_message_size: int) -> None:
        memory.refresh()
        ptr, cap = abi.REQ_BUFFER.unpack_from(memory.view, self.address + abi.CTRL_REQ)
        if ptr + cap > memory.size:
            raise ExecutionFailed(
                f"guest request buffer [{ptr:#x}, +{cap}) lies outside its memory", "abi")
        self.req_ptr, self.req_cap = ptr, cap
        # One comparison per call covers both "grow the buffer" and "too large".
        self.room = min(cap, max_message_size)


def negotiate(call_export: CallExport, memory: GuestMemory,
              max_message_size: int) -> tuple[int, ControlBlock]:
    """(ABI version, control block) of a freshly instantiated guest."""
    version = call_export(abi.EXPORT_ABI_VERSION, ())
    if version not in abi.SUPPORTED_ABI_VERSIONS:
        supported = ", ".join(f"v{v}" for v in sorted(abi.SUPPORTED_ABI_VERSIONS))
        raise ExecutionFailed(
            f"module speaks spear ABI v{version}; this host supports {supported}", "abi")
    address = call_export(abi.EXPORT_INIT, (abi.ABI_VERSION,)) & abi.U32_MAX
    if address == 0:
        raise ExecutionFailed(f"module refused host ABI v{abi.ABI_VERSION}", "abi")
    memory.refresh()
    if address % 8 or address + abi.CTRL_SIZE > memory.size:
        raise ExecutionFailed(
            f"control block at {address:#x} is misaligned or outside memory", "abi")
    magic, version_field, _, _ = abi.HEADER.unpack_from(memory.view, address)
    if magic != abi.CTRL_MAGIC or version_field != version:
        raise ExecutionFailed("control block has a wrong magic or ABI version", "abi")
    control = ControlBlock(address)
    control.read_request_buffer(memory, max_message_size)
    return version, control
