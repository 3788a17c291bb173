"""Streaming ``multipart/form-data`` parsing: the file part goes straight to the blob store.

Starlette's ``request.form()`` spools each file into a ``SpooledTemporaryFile`` which we
would then copy again; here the request body is fed chunk by chunk to ``python_multipart``'s
push parser and the bytes of the one file part are written (and hashed) by
``BlobStore.stage_async`` as they arrive, under the upload limit. Memory stays flat, and
time is bounded too: a client that sends nothing for ``upload_idle_s``, or takes longer than
``upload_max_s`` in all, gets a 408 and its temp file is removed (``timed_stream``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from phaseboard.server.errors import (
    BadInput,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)
from phaseboard.server.store.blobs import BlobStore, StagedBlob

MAX_FIELD_BYTES = 64 * 1024  # small text fields (step, ...); more is not a form we expect
MAX_FIELDS = 20
ENVELOPE_SLACK = 1024 * 1024  # multipart boundaries and headers on top of the file itself
MAX_BOUNDARY = 256  # python-multipart's own limit; past it the parser refuses to start


async def timed_stream(request: Request) -> AsyncIterator[bytes]:
    """The request body, cut with a 408 when the client sends nothing for
    ``upload_idle_s`` or takes longer than ``upload_max_s`` in all (a trickling client
    would otherwise hold a socket and a temp file for as long as it likes)."""
    settings = request.app.state.settings
    idle_s, max_s = settings.upload_idle_s, settings.upload_max_s
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_s
    chunks = request.stream().__aiter__()
    while True:
        left = deadline - loop.time()
        try:
            if left <= 0:
                raise TimeoutError
            chunk = await asyncio.wait_for(chunks.__anext__(), timeout=min(idle_s, left))
        except StopAsyncIteration:
            return
        except TimeoutError:
            if loop.time() >= deadline:
                why = f"took longer than {max_s:g} s in all (PHASEBOARD_UPLOAD_MAX_S)"
            else:
                why = f"sent nothing for {idle_s:g} s (PHASEBOARD_UPLOAD_IDLE_S)"
            raise RequestTimeout(f"the upload {why}; nothing was stored") from None
        yield chunk


@dataclass
class Upload:
    """The staged file part (None if absent) and the other form fields as text."""

    staged: StagedBlob | None
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    disposition: bytes = b""
    data: bytearray = field(default_factory=bytearray)
    is_file: bool = False


def upload_body(
    file_description: str, field_name: str, field_schema: dict[str, Any]
) -> dict[str, Any]:
    """``openapi_extra`` describing a streamed upload: a ``file`` part and one form field.

    The route reads its body itself (``receive_upload``), so FastAPI cannot describe it."""
    file_schema = {"type": "string", "format": "binary", "description": file_description}
    schema = {
        "type": "object",
        "required": ["file", field_name],
        "properties": {"file": file_schema, field_name: field_schema},
    }
    return {
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
    }


def check_content_length(
    request: Request, max_bytes: int, setting: str = "PHASEBOARD_MAX_UPLOAD_MB"
) -> None:
    """Refuse a declared body above the limit before reading any of it (413); the message
    names ``setting``, the limit's own knob."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + ENVELOPE_SLACK:
        raise PayloadTooLarge(
            f"upload of {int(declared)} bytes exceeds the limit of "
            f"{max_bytes // (1024 * 1024)} MB ({setting})"
        )


async def receive_upload(
    request: Request, store: BlobStore, *, max_bytes: int, file_field: str = "file"
) -> Upload:
    """Parse the request body; the part named ``file_field`` is staged in ``store``.

    Raises ``UnsupportedMediaType`` for a non-multipart body, ``BadInput`` for a malformed
    one, ``PayloadTooLarge`` past ``max_bytes``. Nothing is left in the store on error.
    """
    content_type = request.headers.get("content-type", "")
    mime, params = parse_options_header(content_type)
    if mime != b"multipart/form-data":
        raise UnsupportedMediaType(
            f"expected multipart/form-data with a {file_field!r} file part and a 'step' field, "
            f"got content type {content_type or '(none)'!r}"
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadInput("multipart/form-data without a boundary parameter")
    if len(boundary) > MAX_BOUNDARY:
        raise PayloadTooLarge(
            f"the multipart boundary is {len(boundary)} characters long; at most "
            f"{MAX_BOUNDARY} are accepted (RFC 2046 asks for 70)"
        )

    upload = Upload(staged=None)
    current = _Part()
    header_name, header_value = bytearray(), bytearray()
    pending: list[bytes] = []  # file bytes parsed from the latest chunk
    seen_file = False
    ended = False

    def on_part_begin() -> None:
        nonlocal current
        current = _Part()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        if bytes(header_name).lower() == b"content-disposition":
            current.disposition = bytes(header_value)
        header_name.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        nonlocal seen_file
        _, opts = parse_options_header(current.disposition)
        if b"name" not in opts:
            raise BadInput("a multipart part has no name in its Content-Disposition")
        current.name = opts[b"name"].decode("utf-8", "replace")
        if b"filename" in opts:
            current.filename = opts[b"filename"].decode("utf-8", "replace")
        if current.name == file_field:
            if seen_file:
                raise BadInput(f"more than one {file_field!r} part; upload one file per request")
            seen_file = current.is_file = True
            upload.filename = current.filename
        elif len(upload.fields) >= MAX_FIELDS:
            raise BadInput(f"too many form fields (more than {MAX_FIELDS})")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if current.is_file:
            pending.append(data[start:end])
            return
        if len(current.data) + (end - start) > MAX_FIELD_BYTES:
            raise BadInput(f"form field {current.name!r} is larger than {MAX_FIELD_BYTES} bytes")
        current.data.extend(data[start:end])

    def on_part_end() -> None:
        if not current.is_file:
            upload.fields[current.name] = current.data.decode("utf-8", "replace")

    def on_end() -> None:
        nonlocal ended
        ended = True

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_end": on_end,
        },
    )

    async def file_bytes() -> AsyncIterator[bytes]:
        try:
            async for chunk in timed_stream(request):
                parser.write(chunk)
                for piece in pending:
                    yield piece
                pending.clear()
            parser.finalize()
            if not ended:
                raise BadInput("the multipart body ended before its closing boundary (cut off?)")
        except MultipartParseError as exc:
            raise BadInput(f"malformed multipart body: {exc}") from exc
        except ClientDisconnect as exc:
            raise BadInput("the client disconnected before the upload was complete") from exc
        for piece in pending:
            yield piece
        pending.clear()

    staged = await store.stage_async(file_bytes(), max_bytes=max_bytes)
    if not seen_file:
        store.discard(staged)
        raise BadInput(f"multipart field {file_field!r} (the checkpoint file) is missing")
    if staged.size == 0:
        store.discard(staged)
        raise BadInput(f"the {file_field!r} part is empty")
    upload.staged = staged
    return upload
