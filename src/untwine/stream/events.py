"""Stream events and the sources they come from: a JSON-lines file (or stdin) and Redis Streams.

One event per line / stream entry, a JSON object::

    {"type": "impression", "id": "r1:0", "ts": 1700000000, "features": {"user_id": "u7", ...}}
    {"type": "label", "id": "r1:0", "ts": 1700000031, "label": "click"}

``ts`` is integer (or float) seconds of event time. A label event names a task of the run and the
impression it belongs to. Every source yields ``(position, event)``; ``position`` is what a checkpoint
stores so a restart continues right after the last event it accounted for: the byte offset after the
line for a file, the entry id for Redis.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


class BadEventError(ValueError):
    """An event that is not what the stream format requires; the message names where it came from."""


@dataclass(frozen=True)
class Impression:
    id: str
    ts: float
    features: dict


@dataclass(frozen=True)
class LabelEvent:
    id: str
    ts: float
    label: str


Event = Impression | LabelEvent


def parse_event(obj, where: str) -> Event:
    if not isinstance(obj, dict):
        raise BadEventError(f"{where}: expected a JSON object, found {type(obj).__name__}")
    kind = obj.get("type")
    if kind not in ("impression", "label"):
        raise BadEventError(f"{where}: field 'type' must be 'impression' or 'label', found {kind!r}")
    eid, ts = obj.get("id"), obj.get("ts")
    if not isinstance(eid, (str, int)) or isinstance(eid, bool):
        raise BadEventError(f"{where}: field 'id' must be a string or integer, found {eid!r}")
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        raise BadEventError(f"{where}: field 'ts' must be a number of seconds, found {ts!r}")
    if kind == "impression":
        feats = obj.get("features")
        if not isinstance(feats, dict):
            raise BadEventError(f"{where}: an impression needs an object 'features', found {feats!r}")
        return Impression(str(eid), float(ts), feats)
    label = obj.get("label")
    if not isinstance(label, str):
        raise BadEventError(f"{where}: a label event needs a string 'label' (a task name), found {label!r}")
    return LabelEvent(str(eid), float(ts), label)


def event_to_json(e: Event) -> dict:
    if isinstance(e, Impression):
        return {"type": "impression", "id": e.id, "ts": e.ts, "features": e.features}
    return {"type": "label", "id": e.id, "ts": e.ts, "label": e.label}


class JsonlSource:
    """Events from a JSON-lines file, resumable at a byte offset; ``-`` reads stdin (not resumable)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)

    @property
    def resumable(self) -> bool:
        return self.path != "-"

    def read(self, position: int | str | None = None) -> Iterator[tuple[int, Event]]:
        if self.path == "-":
            if position:
                raise ValueError("stdin cannot be resumed at a position: stream from a file or from Redis")
            for lineno, line in enumerate(sys.stdin.buffer, 1):
                if line.strip():
                    yield lineno, self._parse(line, f"<stdin>:{lineno}")
            return
        offset = int(position or 0)
        with open(self.path, "rb") as fh:
            fh.seek(offset)
            lineno = None if offset else 0  # line numbers are only known when reading from the start
            while True:
                line = fh.readline()
                if not line:
                    return
                if not line.endswith(b"\n"):
                    return  # a line still being written: it is read on the next run
                offset += len(line)
                if lineno is not None:
                    lineno += 1
                if line.strip():
                    where = f"{self.path}:{lineno}" if lineno is not None else f"{self.path} at byte {offset - len(line)}"
                    yield offset, self._parse(line, where)

    @staticmethod
    def _parse(line: bytes, where: str) -> Event:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise BadEventError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        return parse_event(obj, where)


class RedisSource:
    """Events from a Redis stream: each entry holds the event JSON in its field ``event``.

    Reads with XREAD after the stored entry id (``0`` from the start). With ``block_ms`` it waits that
    long for new entries before it considers the stream drained; ``None`` returns at the current end."""

    resumable = True

    def __init__(self, url: str, stream: str, batch: int = 1000, block_ms: int | None = None) -> None:
        import redis  # optional dependency: pip install 'untwine[stream]'

        self.client = redis.Redis.from_url(url)
        self.stream, self.batch, self.block_ms = stream, batch, block_ms

    def read(self, position: str | None = None) -> Iterator[tuple[str, Event]]:
        last = str(position or "0")
        while True:
            resp = self.client.xread({self.stream: last}, count=self.batch, block=self.block_ms)
            if not resp:
                return
            for entry_id, fields in resp[0][1]:
                last = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                raw = fields.get(b"event", fields.get("event"))
                where = f"redis stream {self.stream!r} entry {last}"
                if raw is None:
                    raise BadEventError(f"{where}: no field 'event' (fields: {sorted(map(str, fields))})")
                try:
                    obj = json.loads(raw)
                except json.JSONDecodeError as e:
                    raise BadEventError(f"{where}: not valid JSON ({e.msg})") from None
                yield last, parse_event(obj, where)


def publish_to_redis(events: Iterator[dict], url: str, stream: str, chunk: int = 1000) -> int:
    """XADD every event (a JSON-able dict) to ``stream``; returns the count."""
    import redis

    client = redis.Redis.from_url(url)
    n = 0
    pipe = client.pipeline(transaction=False)
    for e in events:
        pipe.xadd(stream, {"event": json.dumps(e)})
        n += 1
        if n % chunk == 0:
            pipe.execute()
    pipe.execute()
    return n


def open_source(spec: str, block_ms: int | None = None):
    """``redis://host:port/db?stream=NAME`` (or ``rediss://``) -> RedisSource; anything else is a JSONL path."""
    if spec.startswith(("redis://", "rediss://", "unix://")):
        from urllib.parse import parse_qs, urlsplit, urlunsplit

        parts = urlsplit(spec)
        query = parse_qs(parts.query)
        if "stream" not in query:
            raise ValueError(f"{spec}: name the stream, e.g. redis://127.0.0.1:6379/0?stream=events")
        rest = "&".join(f"{k}={v[0]}" for k, v in query.items() if k != "stream")
        return RedisSource(urlunsplit(parts._replace(query=rest)), query["stream"][0], block_ms=block_ms)
    return JsonlSource(spec)
