#!/usr/bin/env python3
"""Serves the Docker API on a Unix socket in front of an older daemon.

testcontainers (through bollard) sends every request under a fixed API version
(`/v1.49/...`) and does not negotiate; a daemon refuses versions newer than its own
("client version 1.49 is too new"). Debian 12's docker.io speaks 1.41. This proxy lowers
the version in each request path to the daemon's and passes everything else through
unchanged: request bodies (by Content-Length or chunked), responses, and upgraded
(attach/exec) connections.

Usage: docker-api-proxy.py LISTEN_SOCKET DAEMON_SOCKET DAEMON_API_VERSION
"""

import asyncio
import os
import re
import sys

VERSIONED = re.compile(rb"^([A-Z]+) /v(\d+)\.(\d+)/")


def lowered(line, daemon):
    match = VERSIONED.match(line)
    if match and (int(match[2]), int(match[3])) > daemon:
        return b"%s /v%d.%d/%s" % (match[1], daemon[0], daemon[1], line[match.end():])
    return line


async def copy(reader, writer, count=None):
    """Copies `count` bytes (all, to EOF, if None) from reader to writer."""
    while count is None or count > 0:
        data = await reader.read(65536 if count is None else min(count, 65536))
        if not data:
            return
        writer.write(data)
        await writer.drain()
        if count is not None:
            count -= len(data)


async def copy_chunked(reader, writer):
    while True:
        size_line = await reader.readuntil(b"\r\n")
        writer.write(size_line)
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                writer.write(trailer)
            writer.write(b"\r\n")
            await writer.drain()
            return
        await copy(reader, writer, size)
        writer.write(await reader.readexactly(2))


async def requests(client, daemon_writer, daemon_version):
    """Forwards the client's requests, lowering their version, until it closes."""
    try:
        while True:
            head = await client.readuntil(b"\r\n\r\n")
            line, _, rest = head.partition(b"\r\n")
            daemon_writer.write(lowered(line, daemon_version) + b"\r\n" + rest)
            headers = {
                key.strip().lower(): value.strip().lower()
                for key, _, value in (h.partition(b":") for h in rest.split(b"\r\n") if h)
            }
            if b"upgrade" in headers.get(b"connection", b""):
                await copy(client, daemon_writer)
                break
            if headers.get(b"transfer-encoding") == b"chunked":
                await copy_chunked(client, daemon_writer)
            else:
                await copy(client, daemon_writer, int(headers.get(b"content-length", b"0")))
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        if daemon_writer.can_write_eof():
            daemon_writer.write_eof()


async def serve(client, client_writer, daemon_socket, daemon_version):
    try:
        daemon, daemon_writer = await asyncio.open_unix_connection(daemon_socket)
    except OSError:
        client_writer.close()
        return
    forward = asyncio.create_task(requests(client, daemon_writer, daemon_version))
    try:
        await copy(daemon, client_writer)
    except ConnectionError:
        pass
    finally:
        forward.cancel()
        client_writer.close()
        daemon_writer.close()


async def main(listen, daemon_socket, version):
    daemon_version = tuple(int(part) for part in version.split("."))
    if os.path.exists(listen):
        os.unlink(listen)
    server = await asyncio.start_unix_server(
        lambda r, w: serve(r, w, daemon_socket, daemon_version), path=listen
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__.strip().splitlines()[-1])
    asyncio.run(main(*sys.argv[1:]))
