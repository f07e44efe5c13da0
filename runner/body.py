"""A response body: read within bounds and decoded (runner/jsontext.py's `parse_json` parses it strictly).

`read_body` never holds more than `max_body` bytes, on the wire or decoded: gzip/deflate are inflated in
steps of at most _STEP bytes with a yield to the event loop between them, so a compression bomb costs
at most `max_body` of memory and work.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Iterator, Mapping

import httpx

from runner.errors import FetchError
from runner.jsontext import MAX_DEPTH, parse_json
from runner.reply import EXCERPT

# parse_json and MAX_DEPTH live in runner/jsontext.py; a body's readers take them from here too
__all__ = ["ACCEPT_ENCODING", "MAX_DEPTH", "excerpt", "head", "joined", "parse_json", "read_body"]

ACCEPT_ENCODING = "gzip, deflate"  # what _Decoder can inflate in bounded steps (brotli/zstd: not installed)
MAX_CODINGS = 2  # content-coding layers decoded ("gzip, gzip" is legal); more are refused
_STEP = 64 * 1024  # decoded bytes per decompress call, compressed bytes per slice: one event-loop step's work
MAX_MEMBERS = 1_000  # gzip members per layer: servers send one (or a few); each costs a new inflater


def joined(headers: httpx.Headers) -> dict[str, str]:
    """Lower-case names, repeated headers joined with ", " (once: thousands of repeats stay linear);
    httpx's own accessors work the encoding out again for every item."""
    encoding = headers.encoding
    values: dict[str, list[str]] = {}
    for name, value in headers.raw:
        values.setdefault(name.lower().decode(encoding), []).append(value.decode(encoding))
    return {name: ", ".join(repeated) for name, repeated in values.items()}


def head(response: httpx.Response) -> dict[str, str]:
    """`joined(response.headers)`, from the raw pairs when the response's stream kept them
    (runner/aiotransport.py's): the same names and values, without httpx's encoding pass and lists.
    The encoding is httpx's choice for the whole head: ASCII, else UTF-8, else ISO-8859-1."""
    raw: tuple[tuple[bytes, bytes], ...] | None = getattr(response.stream, "raw_headers", None)
    if raw is None:
        return joined(response.headers)
    try:
        return _joined(raw, "ascii")
    except UnicodeDecodeError:
        pass
    try:
        return _joined(raw, "utf-8")
    except UnicodeDecodeError:
        return _joined(raw, "iso-8859-1")


def _joined(raw: tuple[tuple[bytes, bytes], ...], encoding: str) -> dict[str, str]:
    values: dict[str, str] = {}
    repeated: dict[str, list[str]] | None = None  # names seen twice: joined once at the end (linear)
    for name, value in raw:
        key = name.lower().decode(encoding)
        text = value.decode(encoding)
        if key in values:
            if repeated is None:
                repeated = {}
            if key in repeated:
                repeated[key].append(text)
            else:
                repeated[key] = [values[key], text]
        else:
            values[key] = text
    if repeated is not None:
        for key, parts in repeated.items():
            values[key] = ", ".join(parts)
    return values


async def excerpt(response: httpx.Response, headers: Mapping[str, str] | None = None) -> bytes:
    """The first EXCERPT decoded bytes, for a message; best effort (a bad encoding gives what decoded)."""
    kept, seen = bytearray(), 0
    try:
        chunks, decoder = _stream(response, _STEP, headers)
        async for chunk in chunks:
            seen += len(chunk)
            for piece in decoder.feed(chunk):
                kept += piece
                if len(kept) >= EXCERPT:
                    return bytes(kept[:EXCERPT])
            if seen > _STEP:
                break
    except _BadBody:
        pass
    return bytes(kept)


async def read_body(
    response: httpx.Response, max_body: int, url: str, headers: Mapping[str, str] | None = None
) -> bytes:
    """The whole decoded body, abandoned (not buffered) as soon as the bytes on the wire or the decoded
    bytes would exceed `max_body`. The raw stream is decoded here, in steps of at most _STEP bytes with
    a yield to the loop between them, so a compression bomb costs at most `max_body` of memory and work.
    `headers`: the response's, as `joined` gives them (worked out again when not given)."""
    if headers is None:
        headers = joined(response.headers)
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_body:
        raise FetchError(
            f"response body from {url} declares {int(declared):,} bytes (Content-Length),"
            f" more than request.max_body ({max_body:,} bytes)"
        )
    # The common case in one read: a body sent as is, its length declared (and within max_body, just
    # checked), from a stream that can read that many bytes at once (runner/aiotransport.py's). Not a
    # chunked one: a declared length next to Transfer-Encoding is not the body's.
    read = getattr(response.stream, "read_declared", None)
    if (
        read is not None
        and declared.isdigit()
        and not response.is_stream_consumed
        and "content-encoding" not in headers
        and "transfer-encoding" not in headers
    ):
        response.is_stream_consumed = True
        data: bytes = await read(int(declared))
        return data
    body, seen = bytearray(), 0
    try:
        chunks, decoder = _stream(response, max_body, headers)
        async for chunk in chunks:
            seen += len(chunk)
            if seen > max_body:
                raise _BadBody(f"exceeded request.max_body ({max_body:,} bytes); stopped reading")
            for piece in decoder.feed(chunk):
                body += piece
                if len(body) > max_body:
                    raise _BadBody(
                        f"exceeded request.max_body ({max_body:,} bytes) once decoded"
                        f" (Content-Encoding: {decoder.codings}); stopped reading"
                    )
                if decoder.layers:  # inflating is CPU work: let the other requests run between steps
                    await asyncio.sleep(0)
        if seen:  # a 204 or an empty 200 may still name a coding: nothing to decode is not truncated
            decoder.finish()
    except _BadBody as exc:
        raise FetchError(f"response body from {url} {exc}") from None
    return bytes(body)


def _stream(
    response: httpx.Response, limit: int, headers: Mapping[str, str] | None
) -> tuple[AsyncIterator[bytes], _Decoder]:
    """The body's raw chunks and the decoder for them. A response made in memory (MockTransport, a
    replayed cassette) was read and decoded by httpx when it was built: its content passes as is."""
    if response.is_stream_consumed:
        return _once(response.content), _Decoder("", limit=limit)
    coding = (joined(response.headers) if headers is None else headers).get("content-encoding", "")
    return response.aiter_raw(), _Decoder(coding, limit=limit)


async def _once(content: bytes) -> AsyncIterator[bytes]:
    yield content


class _BadBody(Exception):
    """The body cannot be decoded within the limits; the message completes "response body from URL ..."."""


class _Layer:
    """One gzip/deflate content-coding layer, inflated in pieces of at most _STEP bytes, `limit` in all."""

    def __init__(self, coding: str, limit: int) -> None:
        self.coding, self.limit, self.produced, self.members = coding, limit, 0, 1
        self.head = b""  # deflate: the first bytes, until they show zlib-wrapped or raw deflate
        self.inflate: zlib._Decompress | None = None
        if coding != "deflate":
            self.inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self.inflate is None:  # RFC 9110 says zlib-wrapped; some servers send raw deflate
            self.head += data
            if len(self.head) < 2:
                return
            data, self.head = self.head, b""
            zlib_header = data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
            self.inflate = zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)
        # In slices: zlib hands back what it did not use (`unused_data` at a member's end, the
        # `unconsumed_tail`) as a copy, so a whole chunk fed at once cost a copy of its rest per member
        # (quadratic: 9.9 MB of empty gzip members took ~7.5 s, review11 F4) or per _STEP decoded.
        if len(data) <= _STEP:
            yield from self._inflate(data)
            return
        for start in range(0, len(data), _STEP):
            yield from self._inflate(data[start : start + _STEP])

    def _inflate(self, data: bytes) -> Iterator[bytes]:
        while True:
            inflate = self.inflate
            assert inflate is not None
            if inflate.eof:  # what follows the end of the data
                if not data.strip(b"\0"):  # nothing, or NUL padding
                    return
                if self.coding == "deflate":
                    raise _BadBody(f"has {len(data):,} bytes after the end of its deflate data")
                self.members += 1
                if self.members > MAX_MEMBERS:  # not a real server's answer: the work, not the bytes, is the cost
                    raise _BadBody(
                        f"has more than {MAX_MEMBERS:,} gzip members (Content-Encoding: gzip);"
                        " syncrun decodes at most that many"
                    )
                self.inflate = inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)  # another gzip member
            try:
                piece = inflate.decompress(data, _STEP)
            except zlib.error as exc:
                raise _BadBody(f"is not valid {self.coding} data (Content-Encoding: {self.coding}): {exc}") from None
            data = inflate.unused_data if inflate.eof else inflate.unconsumed_tail
            self.produced += len(piece)
            if self.produced > self.limit:
                raise _BadBody(f"inflates past request.max_body ({self.limit:,} bytes); stopped reading")
            if piece:
                yield piece
            if not inflate.eof and not data and len(piece) < _STEP:  # all input used, all output out
                return

    def finish(self) -> None:
        if self.inflate is None or not self.inflate.eof:
            raise _BadBody(f"ends inside its {self.coding} data (truncated; Content-Encoding: {self.coding})")


class _Decoder:
    """The body's Content-Encoding undone layer by layer: gzip/x-gzip and deflate, at most MAX_CODINGS
    layers; identity is nothing. Anything else (br, zstd, compress, …) is refused by name: httpx's own
    decoders inflate a chunk without bound, and brotli/zstd bindings here cannot cap their output."""

    def __init__(self, coding: str, *, limit: int) -> None:
        """`coding`: the Content-Encoding header's value (repeats joined with ", ")."""
        names = [c.strip().lower() for c in coding.split(",")]
        codings = [c for c in names if c not in ("", "identity")]
        self.codings = ", ".join(codings) or "identity"
        unknown = sorted({c for c in codings if c not in ("gzip", "x-gzip", "deflate")})
        if unknown:
            raise _BadBody(
                f"uses Content-Encoding {', '.join(unknown)}, which syncrun does not decode"
                f" (it asks for {ACCEPT_ENCODING})"
            )
        if len(codings) > MAX_CODINGS:
            raise _BadBody(
                f"is encoded {len(codings)} times (Content-Encoding: {self.codings});"
                f" syncrun decodes at most {MAX_CODINGS} layers"
            )
        # Codings are listed in the order they were applied: undo the last first.
        self.layers = [_Layer("gzip" if c == "x-gzip" else c, limit) for c in reversed(codings)]

    def feed(self, data: bytes) -> Iterator[bytes]:
        return self._through(0, data)

    def _through(self, index: int, data: bytes) -> Iterator[bytes]:
        if index == len(self.layers):
            if data:
                yield data
            return
        for piece in self.layers[index].feed(data):
            yield from self._through(index + 1, piece)

    def finish(self) -> None:
        for layer in self.layers:
            layer.finish()
