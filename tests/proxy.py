"""A loopback TCP proxy that tests can cut and restore, to take a server "away"."""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target.

    ``cut()`` drops every connection and refuses new ones (a server that went
    away); ``stall()`` keeps connections open but holds every byte (a server
    that hangs). ``restore()`` ends either; held bytes then flow on in order.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.cut_active = False
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen on a free loopback port."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_active:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        pumps = [
            asyncio.ensure_future(self._pump(reader, up_writer)),
            asyncio.ensure_future(self._pump(up_reader, writer)),
        ]
        self._tasks.update(pumps)
        for p in pumps:
            p.add_done_callback(self._tasks.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                if self.cut_active:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            self._writers.discard(writer)

    def cut(self) -> None:
        """Drop every open connection and refuse new ones."""
        self.cut_active = True
        for w in list(self._writers):
            w.close()
        self._writers.clear()

    def stall(self) -> None:
        """Hold every byte in both directions (connections stay open) until ``restore()``."""
        self._flowing.clear()

    @property
    def stalled(self) -> bool:
        """Whether traffic is held."""
        return not self._flowing.is_set()

    def restore(self) -> None:
        """Accept connections and forward traffic again."""
        self.cut_active = False
        self._flowing.set()

    async def close(self) -> None:
        """Stop the proxy."""
        self.cut()
        self._flowing.set()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for t in list(self._tasks):
            t.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)


class ThreadedProxy:
    """A ``TcpProxy`` on its own event loop thread, for servers that block the test's loop."""

    def __init__(self, target_host: str, target_port: int) -> None:
        import threading

        self._loop = asyncio.new_event_loop()
        self._proxy = TcpProxy(target_host, target_port)
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._proxy.start(), self._loop).result(10)
        self.port = self._proxy.port

    def cut(self) -> None:
        """See ``TcpProxy.cut``."""
        self._loop.call_soon_threadsafe(self._proxy.cut)

    def stall(self) -> None:
        """See ``TcpProxy.stall``."""
        self._loop.call_soon_threadsafe(self._proxy.stall)

    def restore(self) -> None:
        """See ``TcpProxy.restore``."""
        self._loop.call_soon_threadsafe(self._proxy.restore)

    def close(self) -> None:
        """Stop the proxy and its thread."""
        asyncio.run_coroutine_threadsafe(self._proxy.close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
