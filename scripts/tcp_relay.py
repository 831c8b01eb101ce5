"""Relay TCP connections from a local address to another: MLflow's UI from your machine.

MLflow on the head listens on the head's private IP (the cluster's nodes only), while
`ray exec --port-forward` tunnels your localhost to the head's *localhost*. This relay joins the
two for as long as the command runs:

    ray exec cluster.yaml --port-forward 5000 \
        '~/venv/bin/python ~/logicad/scripts/tcp_relay.py 127.0.0.1:5000 $(hostname -I | cut -d" " -f1):5000'

then open http://127.0.0.1:5000. Nothing listens on a public address.
"""

from __future__ import annotations

import asyncio
import sys


def split(address: str) -> tuple[str, int]:
    """'host:port' -> (host, port)."""
    host, _, port = address.rpartition(":")
    return host, int(port)


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy bytes one way until EOF, then close the other side."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve(listen: str, target: str, ready: asyncio.Event | None = None) -> None:
    """Accept on `listen` and relay each connection to `target` until cancelled."""
    target_host, target_port = split(target)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(target_host, target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    host, port = split(listen)
    server = await asyncio.start_server(handle, host, port)
    if ready is not None:
        ready.set()
    print(f"relaying {listen} -> {target}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: tcp_relay.py LISTEN_HOST:PORT TARGET_HOST:PORT")
    try:
        asyncio.run(serve(sys.argv[1], sys.argv[2]))
    except KeyboardInterrupt:
        pass
