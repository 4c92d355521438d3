"""The FastAPI peer of the load benchmark: the same `GET /items/{id}` as bench-server (about
1 KB of JSON, 1,000 ids, `Cache-Control: max-age=3600`), written the way many teams run it:
FastAPI on uvicorn (uvloop, httptools, one worker per core), redis-py's asyncio client with
hiredis, a hand-written cache-aside (`GET`, on a miss `SET … EX 3600`) and a fixed-window
limiter (`INCR` + `EXPIRE` in one pipeline, per client IP and minute).

    python app.py <scenario> <port> <redis-url>

Scenarios: `fastapi` (no Redis: Python's own ceiling), `fastapi-cache-aside`,
`fastapi-fixed-window`, `fastapi-stack` (the limiter and the cache together). A name may end
in `-<n>ms`: the origin then sleeps that long, as in bench-server.

`GET /__origin_calls` answers how many times the origin ran, summed over the workers through
a small shared file of per-worker counters (`TURRET_BENCH_COUNTS`).
"""

import asyncio
import mmap
import os
import struct
import sys
import tempfile
import threading
import time

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import Response
import redis.asyncio as aioredis

SLOTS = 64
HUGE = 1_000_000_000
CACHE_CONTROL = "max-age=3600"


def split_delay(scenario):
    base, _, suffix = scenario.rpartition("-")
    if base and suffix.endswith("ms") and suffix[:-2].isdigit():
        return base, int(suffix[:-2]) / 1000.0
    return scenario, 0.0


def item_body(i):
    tags = ",".join(f'"tag-{i}-{t}"' for t in range(12))
    return (
        f'{{"id":{i},"name":"Product {i}","category":"category-{i % 20}","price":{i % 500}.99,'
        f'"stock":{i * 7 % 1000},"description":"{"A very fine product. " * 25}","tags":[{tags}]}}'
    ).encode()


SCENARIO, DELAY = split_delay(os.environ.get("TURRET_BENCH_SCENARIO", "fastapi"))
ITEMS = [item_body(i) for i in range(1000)]
# A blocking pool: under 400 concurrent requests the default pool refuses with "Too many
# connections"; this one waits for a free connection instead.
REDIS = (
    aioredis.Redis(
        connection_pool=aioredis.BlockingConnectionPool.from_url(
            os.environ["TURRET_BENCH_REDIS"], max_connections=64, timeout=10
        )
    )
    if SCENARIO != "fastapi"
    else None
)
LIMIT = SCENARIO in ("fastapi-fixed-window", "fastapi-stack")
CACHE = SCENARIO in ("fastapi-cache-aside", "fastapi-stack")


class Counter:
    """This worker's slot in the shared counters file, claimed on first use."""

    def __init__(self, path):
        self.path = path
        self.map = None
        self.offset = 0
        self.value = 0

    def _claim(self):
        fd = os.open(self.path, os.O_RDWR)
        self.map = mmap.mmap(fd, SLOTS * 8)
        os.close(fd)
        for slot in range(SLOTS):
            try:
                os.close(os.open(f"{self.path}.{slot}", os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                continue
            self.offset = slot * 8
            return
        raise RuntimeError("more workers than counter slots")

    def add(self):
        if self.map is None:
            self._claim()
        self.value += 1
        struct.pack_into("<Q", self.map, self.offset, self.value)

    def total(self):
        with open(self.path, "rb") as f:
            data = f.read(SLOTS * 8)
        return sum(struct.unpack(f"<{SLOTS}Q", data))


def exit_with_parent():
    """Workers (and the launcher) exit when their parent is gone: the driver stops a server
    by killing the process it started."""
    parent = os.getppid()

    def watch():
        while True:
            time.sleep(0.2)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


exit_with_parent()
CALLS = Counter(os.environ.get("TURRET_BENCH_COUNTS", ""))
app = FastAPI()


async def fixed_window(request: Request):
    """`INCR` + `EXPIRE` per client IP and minute, in one pipeline."""
    if not LIMIT:
        return
    key = f"fw:{request.client.host}:{int(time.time() // 60)}"
    pipe = REDIS.pipeline(transaction=False)
    pipe.incr(key)
    pipe.expire(key, 60)
    count, _ = await pipe.execute()
    if count > HUGE:
        raise HTTPException(status_code=429, detail="too many requests")


async def origin(item_id):
    CALLS.add()
    if DELAY:
        await asyncio.sleep(DELAY)
    return ITEMS[item_id]


@app.get("/items/{item_id}", dependencies=[Depends(fixed_window)])
async def get_item(item_id: int):
    if not 0 <= item_id < len(ITEMS):
        raise HTTPException(status_code=404)
    headers = {"cache-control": CACHE_CONTROL}
    if CACHE:
        key = f"aside:/items/{item_id}"
        cached = await REDIS.get(key)
        if cached is not None:
            return Response(cached, media_type="application/json", headers=headers)
        body = await origin(item_id)
        await REDIS.set(key, body, ex=3600)
        return Response(body, media_type="application/json", headers=headers)
    return Response(await origin(item_id), media_type="application/json", headers=headers)


@app.get("/__origin_calls")
async def origin_calls():
    return Response(str(CALLS.total()), media_type="text/plain")


def main():
    import uvicorn

    scenario, port, redis_url = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    counts = os.path.join(tempfile.gettempdir(), f"turret-bench-fastapi-{os.getpid()}")
    with open(counts, "wb") as f:
        f.write(b"\0" * SLOTS * 8)
    os.environ.update(
        TURRET_BENCH_SCENARIO=scenario,
        TURRET_BENCH_REDIS=redis_url,
        TURRET_BENCH_COUNTS=counts,
    )
    workers = int(os.environ.get("TURRET_BENCH_WORKERS", os.cpu_count() or 1))
    uvicorn.run(
        "app:app",
        app_dir=os.path.dirname(os.path.abspath(__file__)),
        host="127.0.0.1",
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
