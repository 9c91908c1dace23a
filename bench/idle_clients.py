#!/usr/bin/python3
"""Opens N idle PostgreSQL client connections and holds them until stdin closes.

Used by bench/run to measure a pooler's memory per idle client. Each connection is a raw
asyncio socket that sends a StartupMessage and reads until ReadyForQuery, so it completes the
startup and authentication handshake with trust auth and nothing more (no client library, a few
KB per connection on our side).

    idle_clients.py HOST PORT USER DATABASE COUNT [PARALLEL]

Prints one line `ready OK FAILED FIRST_ERROR` once every connection has finished its handshake
(or failed), then holds the sockets open until stdin reaches EOF, closes them and exits.
Exit status: 0 if every connection reached ReadyForQuery, 1 otherwise.
"""

import asyncio
import resource
import struct
import sys


def startup_message(user: str, database: str) -> bytes:
    body = struct.pack("!I", 196608)  # protocol 3.0
    for k, v in (("user", user), ("database", database), ("application_name", "bench_idle")):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


async def handshake(host, port, startup, timeout):
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(startup)
        await writer.drain()
        while True:
            header = await asyncio.wait_for(reader.readexactly(5), timeout)
            kind, length = header[:1], struct.unpack("!I", header[1:])[0]
            body = await asyncio.wait_for(reader.readexactly(length - 4), timeout)
            if kind == b"R" and struct.unpack("!I", body[:4])[0] != 0:
                raise RuntimeError(f"server asks for authentication {struct.unpack('!I', body[:4])[0]}"
                                   " (bench expects trust)")
            if kind == b"E":
                fields = dict((f[:1], f[1:].decode(errors="replace"))
                              for f in body.split(b"\0") if f)
                raise RuntimeError(f"{fields.get(b'C', '?')} {fields.get(b'M', '')}")
            if kind == b"Z":
                return writer
    except BaseException:
        writer.close()
        raise


async def main() -> int:
    host, port, user, database, count = sys.argv[1:6]
    count = int(count)
    parallel = int(sys.argv[6]) if len(sys.argv) > 6 else 200
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(count + 100, soft)), hard))
    startup = startup_message(user, database)
    gate = asyncio.Semaphore(parallel)
    errors: list[str] = []

    async def one():
        async with gate:
            try:
                return await handshake(host, int(port), startup, 30)
            except Exception as e:  # noqa: BLE001 - every failure is reported, not raised
                errors.append(f"{type(e).__name__}: {e}")
                return None

    writers = [w for w in await asyncio.gather(*(one() for _ in range(count))) if w is not None]
    first = errors[0].replace("\n", " ") if errors else "-"
    print(f"ready {len(writers)} {len(errors)} {first}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # hold until the parent closes stdin
    for w in writers:
        w.close()
    await asyncio.sleep(0.2)
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
