"""A server that does nothing: every HTTP/1.1 request gets the same canned 200 (the size of a token
answer) at once. The fixed-rate scenario runs its open-loop generator against it, at the same rate
and with the same pinning, so the table shows the generator's own latency beside the broker's.

Run as ``python -m scripts.bench.noop PORT``; ``GET`` and ``POST`` alike, keep-alive, no checks.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop

_BODY = b'{"access_token":"' + b"x" * 640 + b'","token_type":"Bearer","expires_in":300,"scope":"read"}'
_ANSWER = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: no-store\r\ncontent-length: "
           + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY)


class _Canned(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            length = 0
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length:]
            self.transport.write(_ANSWER)


async def _serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(_Canned, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(_serve(int(sys.argv[1])))
