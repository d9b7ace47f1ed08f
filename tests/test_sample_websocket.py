"""docs/try-it.md: the demo's WebSocket frames, both ways, at every length encoding."""

from __future__ import annotations

import io

import pytest

from wsgiproxy.sample_websocket import TEXT, accept_key, encode_frame, read_frame


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
@pytest.mark.parametrize("mask", [True, False], ids=["client", "server"])
def test_a_frame_reads_back(size, mask):
    payload = bytes(i % 251 for i in range(size))
    frame = encode_frame(TEXT, payload, mask=mask)
    assert bool(frame[1] & 0x80) is mask
    assert read_frame(io.BytesIO(frame)) == (TEXT, payload)


def test_a_frame_cut_short_is_eof():
    with pytest.raises(EOFError):
        read_frame(io.BytesIO(encode_frame(TEXT, b"hello", mask=True)[:-1]))


def test_the_accept_key_of_rfc_6455():
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # section 1.3
