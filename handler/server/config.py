"""Settings from the environment, with `.env` (or `.env.test` when RUN_HANDLER_ENV=test) as defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from handler.server.auth import ApiKeys

REPO_ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
MIN_PART_BYTES = 5 * MIB
DEFAULT_HTTP_HOST = "localhost"  # 127.0.0.1 and ::1, see handler/listen.py


def env_file() -> Path:
    name = ".env.test" if os.environ.get("RUN_HANDLER_ENV") == "test" else ".env"
    return REPO_ROOT / name


def read_env_file(path: Path) -> dict[str, str]:
    """Parse KEY=VALUE lines; blank lines and ``#`` comments are skipped, quotes are stripped."""
    values: dict[str, str] = {}
    if not path.exists():
        return values
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip().strip("'\"")
    return values


@dataclass(frozen=True)
class Settings:
    db_host: str
    db_port: int
    db_user: str
    db_password: str
    db_name: str
    s3_endpoint_url: str
    s3_access_key: str
    s3_secret_key: str
    s3_bucket_name: str
    s3_region: str
    http_port: int
    http_host: str
    open_access: bool
    max_body_bytes: int
    max_run_bytes: int
    max_runs_per_batch: int
    max_depth: int
    upload_concurrency: int
    upload_window_bytes: int
    db_pool_size: int
    object_cache_bytes: int
    stream_part_bytes: int
    segment_bytes: int
    segment_max_wait_ms: int
    pack_max_run_bytes: int
    group_max_bytes: int
    group_max_wait_ms: int
    group_max_requests: int
    api_keys: ApiKeys
    shutdown_timeout: float
    body_idle_timeout: float
    linger_seconds: float
    linger_bytes: int
    workers: int
    max_buffered_bytes: int = 256 * MIB
    budget_wait_seconds: float = 30
    query_timeout_ms: int = 5000  # a filtered read is stopped after this (handler/query/)
    # Of inputs' and of outputs' text, kept for search() (handler/query/extract.py).
    search_text_chars: int = 0
    # Top-level keys of inputs and of outputs kept for input_key / output_key ... (extract.py).
    io_keys: int = 0
    header_timeout: float = 60
    keepalive_timeout: float = 75
    max_connections: int = 0  # 0: derived from the open-file limit (handler/server/connections.py)
    linger_max_seconds: float = 60
    max_feedback_bytes: int = MIB
    otlp_max_body_bytes: int = 32 * MIB
    retention_days: int | None = None
    retention_long_days: int | None = None
    retention_sweep_seconds: int = 3600
    retention_batch_rows: int = 2000
    # Runs found and checked in C (handler/runs/fastpath.py); False: every byte through ijson.
    fast_splitter: bool = True

    @classmethod
    def from_env(cls) -> Settings:
        """Real environment variables win over the env file."""
        values = {**read_env_file(env_file()), **os.environ}

        def get(name: str, default: str | None = None) -> str:
            value = values.get(name, default)
            if value is None:
                raise SystemExit(f"run-handler: missing setting {name} (environment or {env_file()})")
            return value

        def get_int(name: str, default: int) -> int:
            raw = get(name, str(default))
            try:
                return int(raw)
            except ValueError:
                raise SystemExit(f"run-handler: {name} must be an integer, got {raw!r}") from None

        open_access = get("OPEN_ACCESS", "false").lower()
        if open_access not in ("true", "false"):
            raise SystemExit(f"run-handler: OPEN_ACCESS must be true or false, got {open_access!r}")

        stream_part_bytes = get_int("STREAM_PART_BYTES", 8 * MIB)
        if stream_part_bytes and stream_part_bytes < MIN_PART_BYTES:
            # S3 refuses parts under 5 MiB (all but the last).
            raise SystemExit(f"run-handler: STREAM_PART_BYTES must be 0 or at least {MIN_PART_BYTES}")

        for name in (
            "SEGMENT_BYTES",
            "SEGMENT_MAX_WAIT_MS",
            "PACK_MAX_RUN_BYTES",
            "GROUP_MAX_BYTES",
            "GROUP_MAX_WAIT_MS",
            "GROUP_MAX_REQUESTS",
        ):
            if get_int(name, 0) < 0:
                raise SystemExit(f"run-handler: {name} cannot be negative")

        # One request alone must always fit: a run held whole, a full upload window, the open
        # segment and a sealed one, and the chunk being decoded (README: MAX_BUFFERED_BYTES).
        max_buffered = get_int("MAX_BUFFERED_BYTES", 256 * MIB)
        one_request = (
            get_int("MAX_RUN_BYTES", 100 * MIB)
            + get_int("UPLOAD_WINDOW_BYTES", 32 * MIB)
            + 2 * get_int("SEGMENT_BYTES", 4 * MIB)
            + MIB
        )
        if max_buffered < one_request:
            raise SystemExit(
                f"run-handler: MAX_BUFFERED_BYTES ({max_buffered}) must be at least MAX_RUN_BYTES + "
                f"UPLOAD_WINDOW_BYTES + 2 * SEGMENT_BYTES + 1 MiB ({one_request}), so that one "
                "request alone always fits"
            )
        if get_int("BUDGET_WAIT_SECONDS", 30) < 1:
            raise SystemExit("run-handler: BUDGET_WAIT_SECONDS must be at least 1")
        workers = get_int("WORKERS", 1)
        if workers < 0:
            raise SystemExit("run-handler: WORKERS cannot be negative (0 means one per CPU core)")

        if get_int("QUERY_TIMEOUT_MS", 5000) < 1:
            raise SystemExit("run-handler: QUERY_TIMEOUT_MS must be at least 1")
        if not 0 <= get_int("SEARCH_TEXT_CHARS", 0) <= 1_000_000:
            raise SystemExit("run-handler: SEARCH_TEXT_CHARS must be from 0 to 1000000")
        if not 0 <= get_int("IO_KEYS", 0) <= 100:
            raise SystemExit("run-handler: IO_KEYS must be from 0 to 100")
        for name in ("HEADER_TIMEOUT", "KEEPALIVE_TIMEOUT", "MAX_CONNECTIONS", "LINGER_MAX_SECONDS"):
            if get_int(name, 0) < 0:
                raise SystemExit(f"run-handler: {name} cannot be negative")
        retention_days = _days(get("RETENTION_DAYS", ""), "RETENTION_DAYS")
        retention_long_days = _days(get("RETENTION_LONG_DAYS", ""), "RETENTION_LONG_DAYS")
        if get_int("RETENTION_BATCH_ROWS", 2000) < 1:
            raise SystemExit("run-handler: RETENTION_BATCH_ROWS must be at least 1")
        if get_int("RETENTION_SWEEP_SECONDS", 3600) < 0:
            raise SystemExit("run-handler: RETENTION_SWEEP_SECONDS cannot be negative (0: never sweep)")

        try:
            api_keys = ApiKeys(get("API_KEYS", ""))
        except ValueError as e:
            raise SystemExit(f"run-handler: {e}") from None

        return cls(
            db_host=get("DB_HOST", "localhost"),
            db_port=get_int("DB_PORT", 5432),
            db_user=get("DB_USER", "postgres"),
            db_password=get("DB_PASSWORD", "postgres"),
            db_name=get("DB_NAME", "postgres"),
            s3_endpoint_url=get("S3_ENDPOINT_URL", "http://localhost:9000"),
            s3_access_key=get("S3_ACCESS_KEY", "minioadmin"),
            s3_secret_key=get("S3_SECRET_KEY", "minioadmin"),
            s3_bucket_name=get("S3_BUCKET_NAME", "runs"),
            s3_region=get("S3_REGION", "us-east-1"),
            http_port=get_int("HTTP_PORT", 8000),
            http_host=get("HTTP_HOST", DEFAULT_HTTP_HOST),
            open_access=open_access == "true",
            max_body_bytes=get_int("MAX_BODY_BYTES", 4096 * MIB),
            max_run_bytes=get_int("MAX_RUN_BYTES", 100 * MIB),
            max_runs_per_batch=get_int("MAX_RUNS_PER_BATCH", 100_000),
            max_depth=get_int("MAX_DEPTH", 512),
            upload_concurrency=get_int("UPLOAD_CONCURRENCY", 16),
            upload_window_bytes=get_int("UPLOAD_WINDOW_BYTES", 32 * MIB),
            db_pool_size=get_int("DB_POOL_SIZE", 10),
            object_cache_bytes=get_int("OBJECT_CACHE_BYTES", 32 * MIB),
            stream_part_bytes=stream_part_bytes,
            segment_bytes=get_int("SEGMENT_BYTES", 4 * MIB),
            segment_max_wait_ms=get_int("SEGMENT_MAX_WAIT_MS", 1000),
            pack_max_run_bytes=get_int("PACK_MAX_RUN_BYTES", MIB),
            group_max_bytes=get_int("GROUP_MAX_BYTES", 4 * MIB),
            group_max_wait_ms=get_int("GROUP_MAX_WAIT_MS", 20),
            group_max_requests=get_int("GROUP_MAX_REQUESTS", 64),
            api_keys=api_keys,
            shutdown_timeout=get_int("SHUTDOWN_TIMEOUT", 30),
            body_idle_timeout=get_int("BODY_IDLE_TIMEOUT", 60),
            linger_seconds=get_int("LINGER_SECONDS", 10),
            linger_bytes=get_int("LINGER_BYTES", 64 * MIB),
            max_buffered_bytes=max_buffered,
            budget_wait_seconds=get_int("BUDGET_WAIT_SECONDS", 30),
            max_feedback_bytes=get_int("MAX_FEEDBACK_BYTES", MIB),
            otlp_max_body_bytes=get_int("OTLP_MAX_BODY_BYTES", 32 * MIB),
            workers=workers,
            query_timeout_ms=get_int("QUERY_TIMEOUT_MS", 5000),
            search_text_chars=get_int("SEARCH_TEXT_CHARS", 0),
            io_keys=get_int("IO_KEYS", 0),
            header_timeout=get_int("HEADER_TIMEOUT", 60),
            keepalive_timeout=get_int("KEEPALIVE_TIMEOUT", 75),
            max_connections=get_int("MAX_CONNECTIONS", 0),
            linger_max_seconds=get_int("LINGER_MAX_SECONDS", 60),
            retention_days=retention_days,
            retention_long_days=retention_long_days,
            retention_sweep_seconds=get_int("RETENTION_SWEEP_SECONDS", 3600),
            retention_batch_rows=get_int("RETENTION_BATCH_ROWS", 2000),
            fast_splitter=get_int("FAST_SPLITTER", 1) != 0,
        )

    @property
    def db_url(self) -> str:
        """The form yoyo-migrations wants."""
        user, password = quote(self.db_user, safe=""), quote(self.db_password, safe="")
        return f"postgresql://{user}:{password}@{self.db_host}:{self.db_port}/{self.db_name}"


def _days(raw: str, name: str) -> int | None:
    """A retention period in whole days; empty: for ever."""
    if not raw:
        return None
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= 36500:
        raise SystemExit(f"run-handler: {name} must be a whole number of days from 1 to 36500, got {raw!r}")
    return int(raw)
