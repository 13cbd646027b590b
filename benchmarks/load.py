"""Sustained concurrent load on a real server process, with byte-for-byte verification afterwards.

    RUN_HANDLER_ENV=test python -m benchmarks.load [--clients 32] [--seconds 60]
                                                   [--runs-per-batch 20] [--run-kb 4] [--quick] [--sdk]
                                                   [--sdk-numbers] [--workers N] [--instances N] [--url URL]
                                                   [--kill-worker-after S]

Starts its own ``python -m handler`` (so it knows the pid) with ``WORKERS=--workers``, or
``--instances`` of them behind nginx (deploy/nginx.conf), or sends to ``--url``, a server already
running (then its CPU and memory are not measured, and ``--db-name`` must be its database). It
records the server's VmRSS (summed over its processes) after a warm-up batch, and the CPU that
each process took during the load: every server process, nginx, MinIO, PostgreSQL, this client.
``--kill-worker-after S`` kill -9s one worker S seconds in: the batches it was receiving fail, and
their clients send them again, as an SDK would (counted apart from errors).

Then ``--clients`` threads, each with its own connections, stream batches of generated runs
(non-ASCII, escapes, big integers, ``0.1``, ``1e400``, nested arrays, odd whitespace; some runs
carry their own id) in 64 KB chunks until the deadline. Every answer is checked: 201, one id per
run, and the client's own id where it sent one. ``--sdk`` sends what the langsmith SDK sends instead
(sdk_shaped.py: multipart, zstd, a post and a patch per run, 1-10 runs a request), checked as 202
with the posted ids; its sampled runs are checked field by field (name, inputs, outputs).

After the deadline a random sample of the stored runs is read back with GET and compared byte for
byte with what was sent, and PostgreSQL is asked whether the rows added match the runs
acknowledged. Exits non-zero on any error or mismatch.

The server gets its own database and bucket (``--db-name postgres_load``, ``--bucket runs-load``,
created if missing) on the PostgreSQL and MinIO of ``.env.test``: the test suite, which others may
be running at the same time, asserts that no row appears behind its back, and its rows would skew
our count. The rows and objects stored here are deleted at the end (``--keep`` leaves them). Only
127.0.0.1 is contacted, plus the configured PostgreSQL and S3.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2
import psycopg2.errors

from benchmarks import sdk_shaped
from benchmarks.cpu import _children, machine_cpu, process_cpu, services, tree_cpu
from benchmarks.rss_stream import status_kb
from handler.server.config import Settings
from tests.client import HttpClient, KeepAliveClient
from tests.nginx import Nginx, start_nginx
from tests.reset_env import s3_client
from tests.runs import with_id
from tests.server import Server, start_server

MB = 1024 * 1024
CHUNK = 64 * 1024
MAX_BATCHES_PER_CLIENT = 1_000_000  # a bound on every client loop besides the deadline
MAX_ERROR_MESSAGES = 10
JOIN_GRACE_S = 180  # a batch in flight at the deadline gets this long to finish

# Text with raw UTF-8 (2, 3 and 4 byte sequences) and characters JSON must escape.
_WORDS = (
    "the quick brown fox jumps over lazy dogs while tracing llm calls "
    'café naïve Straße Ωμέγα 東京 中文 日本語 🙂 😀 ☃ 𝄞 "quoted" back\\slash tab\t newline\n '
    "brace } bracket ] ["
).split(" ")
_ESCAPES = b'"quote \\" backslash \\\\ slash \\/ tab \\t nl \\n ctl \\u0001 \\u00e9 \\ud83d\\ude00 brace } ]"'
_NUMBERS = (
    b'"big": 123456789012345678901234567890, "over53": 9007199254740993, "tenth": 0.1, '
    b'"neg": -0.0, "exp": 2.50e+3, "huge": 1e400, "tiny": 1E-400, "minus_big": -98765432109876543210'
)
# The same keys as the SDKs' serializers write them: integers within 64 bits, finite floats (orjson
# refuses larger integers, and JSON.stringify writes neither). Runs with _NUMBERS are handed by the
# splitter's fast path to ijson, which alone judges such numbers; runs with these stay in C.
_SDK_NUMBERS = (
    b'"big": 1234567890123456789, "over53": 9007199254740993, "tenth": 0.1, '
    b'"neg": -0.0, "exp": 2.50e+3, "huge": 1e300, "tiny": 1E-300, "minus_big": -987654321098765432'
)


def _text(rng: random.Random, size: int) -> str:
    words: list[str] = []
    total = 0
    while total < size:
        word = rng.choice(_WORDS)
        words.append(word)
        total += len(word) + 1
    return " ".join(words)


def _nested(rng: random.Random, depth: int, big: bytes = b"12345678901234567890123") -> bytes:
    """A nested array like ``[1, [2.5, [null, [..., {"deep": [true, false]}]]], []]``."""
    inner = b'{"deep": [null, true, false, 0.1]}'
    for level in range(depth):
        scalar = rng.choice([b"1", b"0.1", b"-7", b'"x"', b"null", big, b"[]"])
        inner = b"[" + scalar + b", " + inner + (b", []]" if level % 3 == 0 else b"]")
    return inner


class RunFactory:
    """Makes runs cheaply: a few varied tails (inputs, outputs, metadata and the closing brace) are
    built once; each run gets a fresh head (trace_id, name, sequence number, sometimes its own id)."""

    SEPARATORS = (b", ", b",", b",\n  ", b" ,\t")
    COLONS = (b": ", b":", b" : ")

    def __init__(self, run_kb: float, seed: int, variants: int = 12, sdk_numbers: bool = False) -> None:
        rng = random.Random(seed)
        self.sdk_numbers = sdk_numbers
        self.numbers = _SDK_NUMBERS if sdk_numbers else _NUMBERS
        self.tails = [self._tail(rng, run_kb, i) for i in range(variants)]

    def _tail(self, rng: random.Random, run_kb: float, variant: int) -> tuple[bytes, bytes, bytes]:
        sep, colon = self.SEPARATORS[variant % 4], self.COLONS[variant % 3]
        size = max(64, int(run_kb * 1024 * rng.uniform(0.5, 1.5)))
        ascii_only = variant % 2 == 1  # \uXXXX escapes (surrogate pairs for emoji) instead of raw UTF-8

        def string(text: str) -> bytes:
            return json.dumps(text, ensure_ascii=ascii_only).encode()

        def obj(*pairs: tuple[bytes, bytes]) -> bytes:
            return b"{" + sep.join(string(k.decode()) + colon + v for k, v in pairs) + b"}"

        messages = (
            b"["
            + sep.join(
                obj((b"role", string(role)), (b"content", string(_text(rng, size // 8))))
                for role in ("system", "user", "assistant")
            )
            + b"]"
        )
        inputs = b"{" + self.numbers + sep + b'"messages"' + colon + messages + b"}"
        outputs = obj(
            (b"answer", string(_text(rng, size // 2))),
            (b"nested", _nested(rng, rng.randint(2, 40), *([b"1234567890123456789"] * self.sdk_numbers))),
            (b"escapes", _ESCAPES),
            (b"scores", b"[" + b", ".join(str(rng.random()).encode() for _ in range(20)) + b"]"),
        )
        metadata = obj(
            ("☃".encode(), string("snowman ☃")),
            (b"", string("empty key")),
            (b"model", string(rng.choice(["gpt-4", "claude", "llama-3 70b"]))),
            (b"tokens", str(rng.randint(0, 10**6)).encode()),
            (b"temperature", b"0.1"),
            (b"b", b"{}"),
            (b"a", b"[]"),
        )
        named = ((b"inputs", inputs), (b"outputs", outputs), (b"metadata", metadata))
        fields = [b'"' + name + b'"' + colon + value for name, value in named]
        tail = sep.join(fields) + (b"\n}" if variant % 5 == 0 else b"}")
        return sep, colon, tail

    def run(self, rng: random.Random, name: str, seq: int, own_id: str | None) -> bytes:
        sep, colon, tail = rng.choice(self.tails)
        trace = b'"trace_id"' + colon + b'"' + str(uuid.uuid4()).encode() + b'"'
        name_part = b'"name"' + colon + json.dumps(name, ensure_ascii=seq % 2 == 0).encode()
        seq_part = b'"seq"' + colon + str(seq).encode()
        parts = [trace, name_part, seq_part]
        if own_id is not None:  # first, or in the middle
            parts.insert(0 if seq % 2 else 2, b'"id"' + colon + b'"' + own_id.encode() + b'"')
        head = sep.join(parts)
        return b"{" + (b"\n " if seq % 7 == 0 else b"") + head + sep + tail


def batch_body(rng: random.Random, runs: list[bytes]) -> bytes:
    joiner = rng.choice([b",", b", ", b",\n", b" ,\r\n\t"])
    return b"[" + (b"\n" if rng.random() < 0.5 else b"") + joiner.join(runs) + b"]"


@dataclass
class Sample:
    sent: bytes
    own_id: str | None
    returned_id: str
    sdk: bool = False  # sent by --sdk: ``sent`` is the JSON of the fields GET must give back


@dataclass
class ClientStats:
    batches: int = 0
    runs: int = 0
    bytes_sent: int = 0
    errors: int = 0
    retried: int = 0  # batches sent again after a worker was killed under them (--kill-worker-after)
    # Of those, runs the killed worker had committed before it could answer (the retry's 409).
    unanswered_runs: int = 0
    connections: int = 0  # opened by a client that keeps them alive
    messages: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    done_at: list[tuple[float, int]] = field(default_factory=list)  # (time, runs) per acked batch
    ids: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.messages) < MAX_ERROR_MESSAGES:
            self.messages.append(message)


class SampleBudget:
    """At most ``limit`` sampled batches over all clients."""

    def __init__(self, limit: int) -> None:
        self.left = limit
        self.lock = threading.Lock()

    def take(self) -> bool:
        with self.lock:
            if self.left <= 0:
                return False
            self.left -= 1
            return True


def client_loop(
    index: int,
    target: tuple[str, int],
    factory: RunFactory,
    runs_per_batch: int,
    deadline: float,
    sample_every: int,
    budget: SampleBudget,
    seed: int,
    stats: ClientStats,
    retries: int = 0,
    sdk_kb: float | None = None,
    keep_alive: bool = True,
) -> None:
    """``sdk_kb``: send SDK-shaped requests (sdk_shaped.py) with runs of about that many KB.
    ``keep_alive``: one connection for every request while the server keeps it, as the SDKs' HTTP
    pools do; otherwise a new connection for each request."""
    rng = random.Random(seed * 1000 + index)
    client = KeepAliveClient(*target) if keep_alive else HttpClient(*target)
    seq = 0
    post_args: tuple = ("/runs", "application/json", None)
    status = 201
    if sdk_kb is not None:
        post_args = (sdk_shaped.PATH, sdk_shaped.CONTENT_TYPE, sdk_shaped.HEADERS)
        status = sdk_shaped.STATUS
    for batch_no in range(MAX_BATCHES_PER_CLIENT):
        if time.monotonic() >= deadline:
            break
        runs: list[bytes] = []
        own_ids: list[str | None] = []
        if sdk_kb is not None:
            body, expected = sdk_shaped.sdk_request(rng, sdk_kb, f"load c{index} b{batch_no}", _text)
            own_ids = [run_id for run_id, _ in expected]
            runs = [fields for _, fields in expected]
        else:
            for i in range(runs_per_batch):
                # When batches are sent again (a killed worker), each carries an id of its own: a
                # batch stored by the attempt whose answer died is then told by the retry's 409,
                # where a batch of server-made ids would be stored twice, which the row check
                # cannot tell from a lost or extra run.
                own_id = str(uuid.uuid4()) if rng.random() < 0.25 or (retries and i == 0) else None
                name = f"load c{index} b{batch_no} r{seq} {rng.choice(_WORDS)}"
                runs.append(factory.run(rng, name, seq, own_id))
                own_ids.append(own_id)
                seq += 1
            body = batch_body(rng, runs)
        chunks = [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)]
        start = time.perf_counter()
        for attempt in range(retries + 1):
            try:
                response = client.post(chunks, *post_args)
                break
            except Exception as e:  # noqa: BLE001 -- every failure is counted, none stops the load
                if attempt < retries:
                    stats.retried += 1  # its connection died with a killed worker: send it again
                    continue
                stats.error(f"client {index} batch {batch_no}: {type(e).__name__}: {e}")
                time.sleep(0.05)
                response = None
        if response is None:
            continue
        if attempt and response.status == 409 and b"already exists" in response.body:
            stats.unanswered_runs += len(runs)  # stored by the attempt whose answer died with the worker
            continue
        elapsed = time.perf_counter() - start
        if response.status != status:
            stats.error(f"client {index} batch {batch_no}: {response.status} {response.body[:300]!r}")
            time.sleep(0.05)
            continue
        try:
            ids = response.json()["ids"]
        except (ValueError, KeyError, TypeError) as e:
            stats.error(f"client {index} batch {batch_no}: bad 201 body {response.body[:300]!r} ({e})")
            continue
        # The server stored whatever ids it answered with: count those, for the row check.
        stats.batches += 1
        stats.runs += len(ids)
        stats.bytes_sent += len(body)
        stats.latencies.append(elapsed)
        stats.done_at.append((time.monotonic(), len(ids)))
        stats.ids.extend(ids)
        if len(ids) != len(runs):
            stats.error(f"client {index} batch {batch_no}: sent {len(runs)} runs, got {len(ids)} ids")
            continue
        pairs = enumerate(zip(own_ids, ids, strict=True))
        wrong = [i for i, (own, got) in pairs if own is not None and own != got]
        if wrong:
            stats.error(f"client {index} batch {batch_no}: runs {wrong[:5]} came back with other ids")
            continue
        if rng.randrange(sample_every) == 0 and budget.take():
            stats.samples.extend(
                Sample(r, own, got, sdk_kb is not None)
                for r, own, got in zip(runs, own_ids, ids, strict=True)
            )
    if keep_alive:
        stats.connections = client.connections
        client.close()


def rss_monitor(rss, stop: threading.Event, max_samples: int, out: list[tuple[float, int]]) -> None:
    t0 = time.monotonic()
    for _ in range(max_samples):
        try:
            out.append((time.monotonic() - t0, rss()))
        except (OSError, KeyError):
            return  # the process is gone
        if stop.wait(1.0):
            return


def verify(target: tuple[str, int], sample: Sample) -> str | None:
    """None if GET returns exactly what was sent (plus the id when the client sent none); for an
    SDK-shaped run, the fields that were sent."""
    if sample.sdk:
        response = HttpClient(*target).get(f"/runs/{sample.returned_id}")
        problem = sdk_shaped.matches(response.body, sample.sent) if response.status == 200 else "not found"
        return None if problem is None else f"{sample.returned_id}: {problem}"
    expected = sample.sent if sample.own_id is not None else with_id(sample.sent, sample.returned_id)
    try:
        response = HttpClient(*target).get(f"/runs/{sample.returned_id}")
    except Exception as e:  # noqa: BLE001
        return f"{sample.returned_id}: GET failed: {type(e).__name__}: {e}"
    if response.status != 200:
        return f"{sample.returned_id}: GET answered {response.status} {response.body[:200]!r}"
    if response.body != expected:
        at = next((i for i, (a, b) in enumerate(zip(response.body, expected, strict=False)) if a != b), None)
        at = at if at is not None else min(len(response.body), len(expected))
        return (
            f"{sample.returned_id}: {len(response.body)} bytes back, {len(expected)} expected, "
            f"first difference at {at}: got {response.body[at : at + 40]!r}, "
            f"expected {expected[at : at + 40]!r}"
        )
    return None


def db_connect(settings: Settings, dbname: str | None = None):
    conn = psycopg2.connect(
        host=settings.db_host,
        port=settings.db_port,
        user=settings.db_user,
        password=settings.db_password,
        dbname=dbname or settings.db_name,
    )
    conn.autocommit = True
    return conn


def ensure_database(settings: Settings) -> None:
    """Create the load test's own database if it is missing (the server migrates it at start)."""
    conn = db_connect(settings, "postgres")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (settings.db_name,))
            if cur.fetchone() is None:
                try:
                    cur.execute(f'CREATE DATABASE "{settings.db_name}"')
                except psycopg2.errors.DuplicateDatabase:
                    pass  # created meanwhile by another load run
    finally:
        conn.close()


def count_rows(conn) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs")
        return cur.fetchone()[0]


def count_ids(conn, ids: list[str]) -> int:
    total = 0
    with conn.cursor() as cur:
        for i in range(0, len(ids), 50_000):
            cur.execute("SELECT count(*) FROM runs WHERE id = ANY(%s::uuid[])", (ids[i : i + 50_000],))
            total += cur.fetchone()[0]
    return total


def clean_up(settings: Settings, bucket: str, conn, ids: list[str]) -> int:
    """Delete the rows and objects of the given ids; returns how many rows went."""
    s3 = s3_client(settings)
    removed = 0
    for i in range(0, len(ids), 1000):
        part = ids[i : i + 1000]
        with conn.cursor() as cur:
            cur.execute("SELECT object_key FROM runs WHERE id = ANY(%s::uuid[])", (part,))
            keys = [row[0] for row in cur.fetchall()]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True})
        with conn.cursor() as cur:
            cur.execute("DELETE FROM runs WHERE id = ANY(%s::uuid[])", (part,))
            removed += cur.rowcount
    return removed


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, help="concurrent clients (default 32, --quick 8)")
    parser.add_argument("--seconds", type=float, help="length of the load (default 60, --quick 10)")
    parser.add_argument("--runs-per-batch", type=int, default=20)
    parser.add_argument("--run-kb", type=float, default=4, help="average run size in KB (0.5x to 1.5x)")
    parser.add_argument("--quick", action="store_true", help="8 clients for 10 s")
    parser.add_argument(
        "--sdk",
        action="store_true",
        help="SDK-shaped requests: multipart, zstd, a post and a patch per run, 1-10 runs each",
    )
    parser.add_argument("--sample-every", type=int, default=50, help="verify about 1 batch in N")
    parser.add_argument("--max-sampled-batches", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="leave the stored rows and objects in place")
    parser.add_argument("--db-name", default="postgres_load", help="database (created if missing)")
    parser.add_argument("--bucket", default="runs-load", help="bucket (the server creates it if missing)")
    parser.add_argument("--workers", type=int, default=1, help="WORKERS of each server (0: one per core)")
    parser.add_argument("--instances", type=int, default=1, help="servers started; more than 1: behind nginx")
    parser.add_argument("--url", help="send to this running server instead of starting one")
    parser.add_argument("--kill-worker-after", type=float, help="kill -9 one worker this many seconds in")
    parser.add_argument(
        "--sdk-numbers",
        action="store_true",
        help="numbers as SDK serializers write them (64-bit integers, finite floats), not 1e400 and "
        "integers past 64 bits in every run",
    )
    parser.add_argument(
        "--new-connection-per-request",
        action="store_true",
        help="open a new connection for every request (default: keep each client's connection alive)",
    )
    args = parser.parse_args(argv)
    if args.kill_worker_after is not None and (args.url or args.workers == 1):
        parser.error("--kill-worker-after needs a server started here with --workers 0 or more than 1")
    args.clients = args.clients or (8 if args.quick else 32)
    args.seconds = args.seconds or (10 if args.quick else 60)
    if args.clients < 1 or args.seconds <= 0 or args.runs_per_batch < 1 or args.run_kb <= 0:
        parser.error("--clients, --seconds, --runs-per-batch and --run-kb must be positive")
    return args


class Target:
    """What the clients send to: servers started here (behind nginx when more than one), or a URL."""

    def __init__(self, args: argparse.Namespace, env: dict[str, str]) -> None:
        self.servers: list[Server] = []
        self.nginx: Nginx | None = None
        if args.url:
            url = urlsplit(args.url)
            self.address = (url.hostname or "127.0.0.1", url.port or 80)
            return
        tmp = Path(tempfile.mkdtemp(prefix="load-"))
        try:
            for i in range(args.instances):
                self.servers.append(start_server(tmp, f"load-{i}", WORKERS=str(args.workers), **env))
            if args.instances > 1:
                self.nginx = start_nginx(tmp / "nginx", [srv.client.port for srv in self.servers])
        except BaseException:
            self.stop()
            raise
        port = self.nginx.port if self.nginx else self.servers[0].client.port
        self.address = ("127.0.0.1", port)

    def describe(self) -> str:
        if not self.servers:
            return f"the server at {self.address[0]}:{self.address[1]} (its CPU and memory not measured)"
        servers = ", ".join(f"pid {srv.process.pid} on port {srv.client.port}" for srv in self.servers)
        front = (
            f"nginx (pid {self.nginx.process.pid}) on port {self.nginx.port} before " if self.nginx else ""
        )
        return f"{front}{len(self.servers)} server(s): {servers}"

    def rss_kb(self, field: str) -> int:
        """``field`` of /proc/<pid>/status summed over every server process (workers included)."""
        total = 0
        for srv in self.servers:
            for pid in [srv.process.pid, *_children(srv.process.pid)]:
                try:
                    total += status_kb(pid, field)
                except (OSError, KeyError):
                    pass
        return total

    def cpu_readers(self) -> dict[str, object]:
        """name -> a function giving that process's (or tree's) CPU seconds so far."""
        readers: dict[str, object] = {}
        for i, srv in enumerate(self.servers):
            readers[f"server {i}"] = lambda pid=srv.process.pid: tree_cpu(pid)
            for w, child in enumerate(_children(srv.process.pid)):
                readers[f"server {i} worker {w}"] = lambda pid=child: process_cpu(pid)
        if self.nginx:
            readers["nginx"] = lambda: tree_cpu(self.nginx.process.pid)
        for name, (pid, _) in services().items():
            if pid is not None:
                readers[name] = (
                    (lambda p=pid: tree_cpu(p)) if name == "postgres" else (lambda p=pid: process_cpu(p))
                )
        readers["load client"] = lambda: process_cpu("self")
        readers["machine"] = machine_cpu
        return readers

    def kill_a_worker(self) -> int:
        pid = _children(self.servers[0].process.pid)[0]
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop(self) -> None:
        if self.nginx:
            self.nginx.stop()
        for srv in self.servers:
            srv.stop()


def read_cpu(readers: dict) -> dict[str, float | None]:
    values: dict[str, float | None] = {}
    for name, read in readers.items():
        try:
            values[name] = read()
        except (OSError, IndexError, ValueError):
            values[name] = None  # gone (a killed worker)
    return values


def cpu_used(start: dict, end: dict) -> dict[str, float]:
    return {n: end[n] - start[n] for n in start if start[n] is not None and end.get(n) is not None}


# The known ERROR line of a worker killed on purpose (--kill-worker-after).
_KILLED_LINE = "killed by SIGKILL; starting a replacement"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run_load(args)
    return 0 if result["ok"] else 1


def run_load(args: argparse.Namespace) -> dict:
    """The load, its report printed; returns its figures (``ok`` False on any failure)."""
    # Our own database and bucket: other sessions run the test suite against the test ones, whose
    # tests assert that no row appears behind their backs, and whose rows would skew our count.
    # API_KEYS is emptied so that the server runs open (tenant "default") whatever .env.test says.
    env = {"DB_NAME": args.db_name, "S3_BUCKET_NAME": args.bucket, "API_KEYS": ""}
    os.environ.update(env)
    settings = Settings.from_env()
    if not args.db_name.replace("_", "").isalnum():
        raise SystemExit(f"--db-name {args.db_name!r}: letters, digits and _ only")
    ensure_database(settings)
    factory = RunFactory(args.run_kb, args.seed, sdk_numbers=args.sdk_numbers)
    failures: list[str] = []
    target = Target(args, env)
    address = target.address
    client = HttpClient(*address)
    conn = db_connect(settings)
    all_ids: list[str] = []
    result: dict = {}
    killed: list[int] = []
    try:
        # Warm up imports, the S3 sessions and the database pools with real batches (one per
        # client, so that every worker and instance gets some).
        warm_rng = random.Random(args.seed)
        for _ in range(min(args.clients, 8)):
            if args.sdk:
                body, _ = sdk_shaped.sdk_request(warm_rng, args.run_kb, "warm-up", _text)
                warm = client.post(body, sdk_shaped.PATH, sdk_shaped.CONTENT_TYPE, sdk_shaped.HEADERS)
            else:
                warm_runs = [factory.run(warm_rng, "warm-up", i, None) for i in range(args.runs_per_batch)]
                warm = client.post(batch_body(warm_rng, warm_runs))
            if warm.status != (sdk_shaped.STATUS if args.sdk else 201):
                raise SystemExit(f"warm-up batch answered {warm.status}: {warm.body[:500]!r}")
            all_ids.extend(warm.json()["ids"])
        rss_before = target.rss_kb("VmRSS")
        rows_before = count_rows(conn)

        shape = (
            f"SDK-shaped: multipart, zstd, a post and a patch per run, 1-10 runs of ~{args.run_kb:g} KB"
            if args.sdk
            else f"{args.runs_per_batch} runs of ~{args.run_kb:g} KB per batch, 25% with their own id"
        )
        print(
            f"{target.describe()}; database {settings.db_name}, bucket {args.bucket}; "
            f"WORKERS={args.workers}, {args.clients} clients for {args.seconds:g} s, {shape}",
            flush=True,
        )
        stats = [ClientStats() for _ in range(args.clients)]
        budget = SampleBudget(args.max_sampled_batches)
        readers = target.cpu_readers()
        start = time.monotonic()
        deadline = start + args.seconds
        retries = 3 if args.kill_worker_after is not None else 0
        threads = [
            threading.Thread(
                target=client_loop,
                args=(
                    i,
                    address,
                    factory,
                    args.runs_per_batch,
                    deadline,
                    args.sample_every,
                    budget,
                    args.seed,
                    stats[i],
                    retries,
                    args.run_kb if args.sdk else None,
                    not args.new_connection_per_request,
                ),
                daemon=True,
            )
            for i in range(args.clients)
        ]
        rss_samples: list[tuple[float, int]] = []
        stop_monitor = threading.Event()
        monitor = threading.Thread(
            target=rss_monitor,
            args=(
                lambda: target.rss_kb("VmRSS"),
                stop_monitor,
                int(args.seconds + JOIN_GRACE_S) + 10,
                rss_samples,
            ),
            daemon=True,
        )
        if target.servers:
            monitor.start()
        cpu_start = read_cpu(readers)
        for t in threads:
            t.start()
        if args.kill_worker_after is not None:
            time.sleep(max(0.0, start + args.kill_worker_after - time.monotonic()))
            killed.append(target.kill_a_worker())
            print(f"killed worker pid {killed[0]} (kill -9) {args.kill_worker_after:g} s in", flush=True)
        for t in threads:
            t.join(timeout=max(0.0, deadline + JOIN_GRACE_S - time.monotonic()))
        duration = time.monotonic() - start
        cpu = cpu_used(cpu_start, read_cpu(readers))
        stop_monitor.set()
        if target.servers:
            monitor.join(timeout=5)
        stuck = sum(t.is_alive() for t in threads)
        if stuck:
            failures.append(f"{stuck} clients still running {JOIN_GRACE_S} s after the deadline")
        rss_end = target.rss_kb("VmRSS")
        peak = target.rss_kb("VmHWM")

        batches = sum(s.batches for s in stats)
        runs = sum(s.runs for s in stats)
        sent = sum(s.bytes_sent for s in stats)
        errors = sum(s.errors for s in stats)
        retried = sum(s.retried for s in stats)
        unanswered = sum(s.unanswered_runs for s in stats)
        latencies = [x for s in stats for x in s.latencies]
        ids = [x for s in stats for x in s.ids]
        all_ids.extend(ids)
        samples = [x for s in stats for x in s.samples]
        messages = [m for s in stats for m in s.messages]

        print(f"clients                {args.clients}")
        print(f"duration               {duration:.1f} s (deadline {args.seconds:g} s)")
        print(f"batches acknowledged   {batches}")
        print(f"runs acknowledged      {runs} (mean {sent / max(runs, 1) / 1024:.1f} KB of body per run)")
        print(f"throughput             {runs / duration:.0f} runs/s, {sent / MB / duration:.1f} MB/s")
        p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
        print(
            f"batch latency          p50 {p50 * 1000:.0f} ms, "
            f"p95 {percentile(latencies, 0.95) * 1000:.0f} ms, "
            f"p99 {p99 * 1000:.0f} ms, "
            f"max {max(latencies, default=float('nan')) * 1000:.0f} ms"
        )
        window = max(1, round(args.seconds / 6))
        buckets = [0] * (int(duration // window) + 1)
        for s in stats:
            for at, n in s.done_at:
                buckets[min(len(buckets) - 1, int((at - start) // window))] += n
        print(
            f"runs/s per {window} s window".ljust(23)
            + " ".join(f"{n / window:.0f}" for n in buckets[: max(1, int(args.seconds // window))])
        )
        per_client = [s.runs for s in stats]
        print(
            f"runs per client        min {min(per_client)}, median {statistics.median(per_client):.0f}, "
            f"max {max(per_client)}"
        )
        if not args.new_connection_per_request:
            print(f"connections opened     {sum(s.connections for s in stats)} (kept alive between requests)")
        print(f"errors                 {errors}")
        for m in messages[:MAX_ERROR_MESSAGES]:
            print(f"    {m}")
        if errors:
            failures.append(f"{errors} errors")
        if retries:
            print(
                f"batches sent again     {retried} (their connection died with the killed worker); "
                f"{unanswered} runs of them had been committed before it died (the retry's 409)"
            )
        cpu["others on the machine"] = cpu["machine"] - sum(
            used for name, used in cpu.items() if name != "machine" and "worker" not in name
        )
        print(
            "CPU, cores busy        "
            + ", ".join(f"{name} {used / duration:.2f}" for name, used in cpu.items())
            + f" (of {os.cpu_count()})"
        )
        server_cpu = sum(
            used for name, used in cpu.items() if name.startswith("server") and "worker" not in name
        )
        if target.servers:
            print(f"server CPU per 1,000 runs  {server_cpu / max(runs, 1) * 1000:.2f} s")
            print(
                f"server RSS             before {rss_before / 1024:.1f} MB, "
                f"peak (VmHWM) {peak / 1024:.1f} MB, at end {rss_end / 1024:.1f} MB (all its processes)"
            )
            step = max(1, len(rss_samples) // 8)
            print(
                "server RSS over time   "
                + ", ".join(f"{t:.0f}s {kb / 1024:.0f}" for t, kb in rss_samples[::step])
                + " MB"
            )

        with ThreadPoolExecutor(max_workers=8) as pool:
            problems = [p for p in pool.map(lambda s: verify(address, s), samples) if p is not None]
        own = sum(s.own_id is not None for s in samples)
        print(
            f"sampled runs verified  {len(samples) - len(problems)} of {len(samples)} "
            f"({own} with their own id, {len({s.returned_id for s in samples})} distinct ids)"
        )
        print(f"mismatches             {len(problems)}")
        for p in problems[:MAX_ERROR_MESSAGES]:
            print(f"    {p}")
        if problems:
            failures.append(f"{len(problems)} sampled runs did not come back as sent")
        if not samples and runs:
            failures.append("no run was sampled; lower --sample-every")

        rows_after = count_rows(conn)
        present = count_ids(conn, ids)
        added = rows_after - rows_before
        print(
            f"rows added             {added} (acknowledged {runs}; "
            f"{present} of the acknowledged ids found, {len(set(ids))} distinct)"
        )
        # A batch whose worker was killed after its commit but before its answer left rows that
        # no client was told of: the retry's 409 accounts for them.
        if added != runs + unanswered:
            hint = " (another writer on this database?)" if present == runs else ""
            failures.append(f"{added} rows added for {runs} acknowledged runs{hint}")
        if present != runs or len(set(ids)) != runs:
            failures.append(f"{present} rows for {runs} acknowledged ids ({len(set(ids))} distinct)")
        for srv in target.servers:
            if srv.process.poll() is not None:
                failures.append(f"server exited with {srv.process.returncode} during the load")
        result = {
            "runs_s": runs / duration,
            "mb_s": sent / MB / duration,
            "run_bytes": sent / max(runs, 1),
            "p50_ms": p50 * 1000,
            "p99_ms": p99 * 1000,
            "server_cpu_per_1000": server_cpu / max(runs, 1) * 1000,
            "cores": {name: used / duration for name, used in cpu.items()},
            "errors": errors,
            "retried": retried,
            "mismatches": len(problems),
            "verified": len(samples) - len(problems),
            "unanswered_runs": unanswered,
        }
    finally:
        try:
            if not args.keep and all_ids:
                removed = clean_up(settings, args.bucket, conn, all_ids)
                print(f"cleaned up             {removed} rows and their objects (--keep to leave them)")
        finally:
            conn.close()
            target.stop()
    for srv in target.servers:
        log = Path(srv.log_path).read_text(errors="replace").splitlines()
        bad = [
            line for line in log if (" ERROR " in line or "Traceback" in line) and _KILLED_LINE not in line
        ]
        print(
            f"server log             {len(log)} lines, {len(bad)} errors ({srv.log_path}); "
            f"exit status {srv.process.returncode}"
        )
        for line in bad[:MAX_ERROR_MESSAGES]:
            print(f"    {line[:300]}")
        if bad:
            failures.append(f"{len(bad)} error lines in the server log")
        if killed and not any(_KILLED_LINE in line for line in log) and srv is target.servers[0]:
            failures.append("the killed worker was not logged as replaced")
        if srv.process.returncode != 0:
            failures.append(f"server exit status {srv.process.returncode}")
    result["ok"] = not failures
    if failures:
        print("FAIL: " + "; ".join(failures))
    else:
        print("OK")
    return result


if __name__ == "__main__":
    sys.exit(main())
