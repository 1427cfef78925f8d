"""The codec now lives in `spear.protocol.codec`; this name keeps old imports working."""

from spear.protocol.codec import CODEC_VERSION, MESSAGE_TAGS, decode, encode

__all__ = ["CODEC_VERSION", "MESSAGE_TAGS", "decode", "encode"]
