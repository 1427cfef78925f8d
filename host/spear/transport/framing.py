"""Frames now live in `spear.protocol.framing`; this name keeps old imports working."""

from spear.protocol.framing import HEADER, HEADER_SIZE, ReceiveBuffer, check_length, frame

__all__ = ["HEADER", "HEADER_SIZE", "ReceiveBuffer", "check_length", "frame"]
