"""The simulated annotators both sides of ``serve_load.py`` get: ``clients`` concurrent asyncio
tasks, one :class:`Http` client (an ``aiohttp`` session: keep-alive connection, own token) each,
submitting labels until ``labels`` are acknowledged in total or ``cap_s`` wall seconds have
passed. (aiohttp rather than httpx: the clients share the server's cores, and httpx took about
four times the CPU per request.)

One label, client side (:func:`_submit_until_ack`):

- a fresh idempotency key (a UUID4) per label; every retry of that label sends the same request
  with the same key;
- with probability ``loss`` the client "loses" the response to its first attempt, in one of two
  ways (the side says which it can take): ``discard`` -- the response arrives and is thrown
  away, the request is sent again; ``timeout`` -- the client gives up after a random 1-30 ms
  (the request may still be running on the server, or never have arrived) and sends it again;
- connection errors, 5xx and 429 are retried (backoff 20 ms doubling to 500 ms) with the same
  key until the label is acknowledged -- this is what carries the clients through the server's
  SIGKILL and restart;
- a label counts as acknowledged at the first 200/201 the client keeps; its (label id,
  idempotency key) is recorded;
- a 4xx ends that label (counted in ``client_errors``; none is expected) and the client moves on.

Bounds: no label is started once ``labels`` have been claimed or ``cap_s`` has passed (then
``capped``); a label already sent is retried for up to :data:`GRACE_S` more seconds.

Latency: every successful (200/201) submit request, send to response, measured by the client
(including the responses a client then discarded); failed attempts are counted, not timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
import orjson

RETRY_STATUSES = {429, 500, 502, 503, 504}
GRACE_S = 120.0
"""After the wall-clock cap no new label is started; one already sent is retried for up to this
long more (so that every label the server may have stored gets acknowledged)."""


TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)
"""What a request raises when the connection fails (refused, reset, cut by a SIGKILL...)."""


@dataclass
class Reply:
    """A response, read whole."""

    status_code: int
    content: bytes
    headers: Any

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")

    def json(self) -> Any:
        return orjson.loads(self.content)


class Http:
    """One simulated annotator's HTTP client: ``base_url``, its own ``headers`` (token) on
    every request, one keep-alive connection (a request cut by a client timeout closes it; the
    next opens another), ``timeout`` seconds per request."""

    def __init__(self, base_url: str, headers: dict[str, str], timeout: float):
        self.base_url = base_url.rstrip("/")
        self.headers = headers
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Http:
        self.session = aiohttp.ClientSession(headers=self.headers, timeout=self.timeout)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self.session is not None
        await self.session.close()

    async def request(self, method: str, url: str, *, content: bytes | None = None,
                      headers: dict[str, str] | None = None, json: Any = None) -> Reply:
        if json is not None:
            content = orjson.dumps(json)
            headers = {"content-type": "application/json", **(headers or {})}
        assert self.session is not None
        async with self.session.request(method, self.base_url + url, data=content,
                                        headers=headers) as resp:
            return Reply(resp.status, await resp.read(), resp.headers)

    async def post(self, url: str, **kwargs: Any) -> Reply:
        return await self.request("POST", url, **kwargs)

    async def get(self, url: str, **kwargs: Any) -> Reply:
        return await self.request("GET", url, **kwargs)


@dataclass
class Stats:
    """What the clients saw (one object shared by every client of a run)."""

    target: int
    deadline: float = float("inf")
    claimed: int = 0
    acked: list[tuple[Any, str]] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    attempts: int = 0
    retries: int = 0
    """Requests sent again for a label already sent once (losses, errors, 5xx)."""
    replayed: int = 0
    """Responses the server marked as a replay of a stored submission."""
    lost_discard: int = 0
    lost_timeout: int = 0
    recovered_by_lookup: int = 0
    """Peer only: a lost submission found stored by looking it up (no idempotency key)."""
    replay_id_mismatch: int = 0
    """A replay whose label id differs from the id of the response the client discarded."""
    errors: Counter = field(default_factory=Counter)
    client_errors: list[str] = field(default_factory=list)
    first_ack: float | None = None
    last_ack: float | None = None
    capped: bool = False
    start: float = 0.0
    end: float = 0.0
    ran_out: int = 0
    """Clients that stopped because the server had nothing left for them."""

    def claim(self) -> bool:
        if self.claimed >= self.target:
            return False
        self.claimed += 1
        return True

    def ack(self, label_id: Any, key: str) -> None:
        now = time.perf_counter()
        self.acked.append((label_id, key))
        self.first_ack = self.first_ack or now
        self.last_ack = now


class ClientError(RuntimeError):
    """A 4xx the client cannot retry."""


class CapReached(Exception):
    """The run's wall-clock cap passed."""


class Side:
    """What differs between the servers: how a client starts, what one submission is, what the
    acknowledgement says. ``loss_modes``: the kinds of lost response the side is put through."""

    loss_modes: tuple[str, ...] = ("discard",)
    idempotent: bool = True
    """False: the server takes no idempotency key, so a retry first looks the label up."""

    async def start(self, slot: int, http: Http, stats: Stats) -> Any:
        """The client's first state (e.g. its first leased item); None: nothing to do."""
        raise NotImplementedError

    def request(self, state: Any, key: str, rng: random.Random) -> tuple[str, dict]:
        """(url, JSON body) of one submission for ``state``."""
        raise NotImplementedError

    def parse(self, body: dict) -> tuple[Any, bool]:
        """(label id, replayed) of a successful response."""
        raise NotImplementedError

    async def advance(self, slot: int, http: Http, state: Any, body: dict | None,
                      stats: Stats) -> Any:
        """The state after an acknowledged label (``body``: its response, None when it was
        found by :meth:`lookup`); None: this client is done."""
        raise NotImplementedError

    async def after_error(self, slot: int, http: Http, state: Any, stats: Stats
                          ) -> Any:
        """The state after a label the server refused (4xx)."""
        return await self.start(slot, http, stats)

    async def lookup(self, http: Http, state: Any, key: str) -> Any:
        """For a server without idempotency keys: the label id if the submission keyed ``key``
        is already stored (checked before sending it again), else None."""
        return None

    def client(self, slot: int, base_url: str) -> Http:
        raise NotImplementedError


async def call(http: Http, method: str, url: str, stats: Stats, deadline: float,
               **kwargs: Any) -> Reply:
    """A non-submit request (get an item, look a label up), retried like a submission until a
    2xx or a 4xx comes back (or ``deadline`` + the grace period passes)."""
    deadline += GRACE_S
    delay = 0.02
    while True:
        if time.perf_counter() > deadline:
            raise CapReached
        try:
            resp = await http.request(method, url, **kwargs)
        except TRANSPORT_ERRORS as exc:
            stats.errors[f"other:{type(exc).__name__}"] += 1
        else:
            if resp.status_code not in RETRY_STATUSES:
                return resp
            stats.errors[f"other:http_{resp.status_code}"] += 1
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)


async def _submit_until_ack(side: Side, http: Http, state: Any, stats: Stats,
                            rng: random.Random, loss: float, deadline: float
                            ) -> tuple[Any, str, dict | None]:
    """(label id, idempotency key, response body -- None when found by lookup)."""
    key = uuid.uuid4().hex
    url, body = side.request(state, key, rng)
    deadline += GRACE_S
    payload = orjson.dumps(body)
    headers = {"content-type": "application/json"}
    lose = rng.choice(side.loss_modes) if rng.random() < loss else None
    discarded_id = None
    sent = 0
    delay = 0.02
    while True:
        if time.perf_counter() > deadline:
            raise CapReached
        if sent and not side.idempotent:
            found = await side.lookup(http, state, key)
            if found is not None:
                stats.recovered_by_lookup += 1
                return found, key, None
        stats.attempts += 1
        stats.retries += sent > 0
        sent += 1
        cut = lose == "timeout"
        lose = None if cut else lose
        start = time.perf_counter()
        try:
            if cut:
                resp = await asyncio.wait_for(http.post(url, content=payload, headers=headers),
                                              rng.uniform(0.001, 0.03))
            else:
                resp = await http.post(url, content=payload, headers=headers)
        except TRANSPORT_ERRORS as exc:
            if cut and isinstance(exc, asyncio.TimeoutError):
                stats.lost_timeout += 1
                continue
            stats.errors[type(exc).__name__] += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
            continue
        seconds = time.perf_counter() - start
        if resp.status_code in (200, 201):
            stats.latencies.append(seconds)
            out = orjson.loads(resp.content)
            label_id, replayed = side.parse(out)
            stats.replayed += replayed
            if discarded_id is not None and label_id != discarded_id:
                stats.replay_id_mismatch += 1
            if lose == "discard":
                lose = None
                stats.lost_discard += 1
                discarded_id = label_id
                continue
            return label_id, key, out
        if resp.status_code in RETRY_STATUSES:
            stats.errors[f"http_{resp.status_code}"] += 1
            wait = float(resp.headers.get("retry-after", 0) or 0)
            await asyncio.sleep(max(delay, wait))
            delay = min(delay * 2, 0.5)
            continue
        raise ClientError(f"{resp.status_code} {resp.text[:300]}")


async def _annotator(side: Side, slot: int, base_url: str, stats: Stats, loss: float,
                     deadline: float, seed: int) -> None:
    rng = random.Random(seed * 1_000_003 + slot)
    async with side.client(slot, base_url) as http:
        state = await side.start(slot, http, stats)
        while state is not None and stats.claim():
            if time.perf_counter() > deadline:
                stats.claimed -= 1
                stats.capped = True
                break
            try:
                label_id, key, body = await _submit_until_ack(side, http, state, stats, rng,
                                                              loss, deadline)
            except ClientError as exc:
                stats.client_errors.append(str(exc))
                stats.claimed -= 1
                if len(stats.client_errors) > 100:
                    raise
                state = await side.after_error(slot, http, state, stats)
                continue
            stats.ack(label_id, key)
            state = await side.advance(slot, http, state, body, stats)


async def run_load(side: Side, base_url: str, *, clients: int, labels: int, loss: float,
                   cap_s: float, seed: int, monitor: Any = None) -> Stats:
    """Run the clients to ``labels`` acknowledged labels (or the cap); ``monitor(stats)`` is an
    optional coroutine run beside them (the kill-and-restart of the server)."""
    start = time.perf_counter()
    deadline = start + cap_s
    stats = Stats(target=labels, deadline=deadline)
    tasks = [asyncio.create_task(_annotator(side, i, base_url, stats, loss, deadline, seed))
             for i in range(clients)]
    watcher = asyncio.create_task(monitor(stats)) if monitor is not None else None
    results = await asyncio.gather(*tasks, return_exceptions=True)
    end = time.perf_counter()
    if watcher is not None:
        if not watcher.done():
            watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    for r in results:
        if isinstance(r, CapReached):
            stats.capped = True
        elif isinstance(r, BaseException):
            raise r
    stats.start, stats.end = start, end
    return stats


def percentiles_ms(latencies: list[float]) -> dict[str, float | None]:
    if not latencies:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    arr = np.asarray(latencies) * 1000
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return {"p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2),
            "p99_ms": round(float(p99), 2), "max_ms": round(float(arr.max()), 2)}
