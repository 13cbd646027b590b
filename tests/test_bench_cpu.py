"""The benchmarks' CPU meter (benchmarks/cpu.py) finds a service by the port it listens on, and says
why when it cannot, instead of failing the benchmarks."""

from __future__ import annotations

import os
import socket

from benchmarks.cpu import CpuMeter, find_service, summary_lines
from tests.server import free_port


def test_a_listening_socket_is_traced_to_its_process():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        pid, reason = find_service("minio", "localhost", port)
    # This process holds the socket, and it is not MinIO: a forwarder's port is not taken for it.
    assert pid is None
    assert f"pid {os.getpid()}" in reason and "not minio itself" in reason


def test_services_out_of_sight_are_not_measured_and_say_why():
    assert find_service("minio", "s3.example", 9000) == (
        None,
        "minio runs on s3.example, not on this machine",
    )
    pid, reason = find_service("postgres", "localhost", free_port())
    assert pid is None and "listens on port" in reason


def test_the_meter_measures_the_services_of_the_test_settings():
    meter = CpuMeter(server_pid=None)
    with meter:
        pass
    used = meter.per_round()
    # make test and tox run against local services: both are found, whoever started them.
    assert meter.not_measured == {}
    assert {"client", "minio", "postgres", "machine"} <= set(used)
    assert all(isinstance(v, float) for v in used.values())


def test_the_report_shows_n_a_for_a_service_not_measured():
    used = {"client": 0.001, "minio": None, "postgres": 0.002, "machine": 0.01}
    (line, *_) = summary_lines({"case": used}, {"case": 0.01})
    assert "minio      n/a" in line and "server        -" in line and "postgres      2.0" in line


def test_the_profile_counts_a_sample_for_the_job_of_its_deepest_known_frame():
    from benchmarks.cpu_profile import job_of

    loop = ["run_forever (asyncio/base_events.py:600)", "Handle._run (asyncio/events.py:80)"]
    tornado = "HTTP1Connection._read_body (tornado/http1connection.py:10)"
    splitter = "RunSplitter.feed (handler/runs/splitter.py:120)"
    # uuid called by the splitter is the splitter's; the splitter called under Tornado is too.
    assert job_of([*loop, tornado, splitter, "uuid4 (uuid.py:720)"]) == "JSON: splitting and checking runs"
    # A socket write of aiohttp's (through asyncio) is S3's, not the event loop's.
    aiohttp = "StreamWriter.write (aiohttp/http_writer.py:90)"
    transport = "_SelectorSocketTransport.write (asyncio/selector_events.py:1000)"
    assert job_of([*loop, aiohttp, transport]) == "S3: PUT (aiohttp, signing, CRC32)"
    assert job_of(loop) == "HTTP: Tornado and the event loop"
    # A handler's finish() writing the answer is HTTP; a thread waiting on its queue is not counted.
    assert job_of([*loop, "RunsHandler.post (handler/runs/handlers.py:25)", tornado]).startswith("HTTP")
    assert job_of(["Thread.run (threading.py:982)", "_worker (concurrent/futures/thread.py:81)"]) is None
