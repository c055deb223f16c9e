"""MpsLogReader: real-format lines (from public MPS logs) and the fake's, read incrementally."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from colo.gpu.mps.fake import FakeMpsControl
from colo.gpu.mps.log import MpsLogKind, MpsLogReader, parse_line

# Lines as real daemons write them (driver 580 / CUDA 13 and older), including padded pids.
REAL_CONTROL = """\
[2026-05-31 23:46:49.893 Control 11107] Starting control daemon using socket /tmp/nvidia-mps/control
[2026-05-31 23:46:49.893 Control 11107] To connect CUDA applications to this daemon, set env CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps
[2026-05-31 23:46:49.893 Control 11107] CUDA MPS Control binary version: 13030
[2026-05-31 23:48:21.671 Control 11107] Accepting connection...
[2026-05-31 23:48:21.671 Control 11107] User did not send valid credentials
[2026-05-31 23:48:21.671 Control 11107] NEW CLIENT 11801 from user 1000: Server is not ready, push client to pending list
[2026-05-31 23:48:21.671 Control 11803] Starting new server 11803 for user 1000
[2026-05-31 23:48:21.748 Control 11107] NEW SERVER 11803: Ready
[2024-04-29 11:22:10.441 Control    73] Server encountered a fatal exception. Shutting down
[2024-04-29 11:22:10.446 Control    73] Server 95 exited with status 1
[2026-11-21 17:38:28.403 Control 439] NEW CLIENT 670 from user 0: Server already exists
"""

REAL_SERVER = """\
[2026-04-28 18:20:41.704 Other 4428] Startup
[2026-04-28 18:20:41.855 Server 4428] Creating server context on device 0 (Tesla T4)
[2026-04-28 18:20:41.986 Server 4428] Active Threads Percentage set to 33.0
[2026-04-28 18:20:41.986 Server 4428] Server has started
[2026-04-28 18:20:41.986 Server 4428] Received new client request for {PID: 4267, Context ID: 0}
[2026-04-28 18:20:41.986 Server 4428] Client {PID: 4267, Context ID: 0} connected
[2026-04-28 18:20:41.986 Server 4428] Creating worker thread for client {PID: 4267, Context ID: 0}
[2021-12-19 16:30:00.000 Server    17] Status of client {81, 1} is ACTIVE
[2021-12-19 16:31:00.000 Server    17] Receive command failed, assuming client exit
[2021-12-19 16:31:00.000 Server    17] Client process disconnected
[2026-04-28 18:25:00.000 Server 4428] Client {PID: 4267, Context ID: 0} disconnected
"""


def kinds(events: list) -> list[tuple[MpsLogKind, int | None]]:  # type: ignore[type-arg]
    return [(e.kind, e.client_pid) for e in events]


def test_real_control_log_lines(tmp_path: Path) -> None:
    (tmp_path / "control.log").write_text(REAL_CONTROL)
    events = MpsLogReader(tmp_path).read_new()
    assert [e.kind for e in events] == [
        MpsLogKind.DAEMON_STARTED,
        MpsLogKind.CLIENT_CONNECTED,
        MpsLogKind.SERVER_STARTED,
        MpsLogKind.SERVER_STARTED,
        MpsLogKind.FAULT,
        MpsLogKind.SERVER_EXITED,
        MpsLogKind.CLIENT_CONNECTED,
    ]
    assert events[0].time == datetime(2026, 5, 31, 23, 46, 49, 893000) and events[0].pid == 11107
    assert events[1].client_pid == 11801
    assert events[2].server_pid == 11803
    assert (events[5].server_pid, events[5].exit_status, events[5].pid) == (95, 1, 73)
    assert events[6].client_pid == 670


def test_real_server_log_lines(tmp_path: Path) -> None:
    (tmp_path / "server.log").write_text(REAL_SERVER)
    events = MpsLogReader(tmp_path).read_new()
    assert kinds(events) == [
        (MpsLogKind.SERVER_STARTED, None),
        (MpsLogKind.CLIENT_CONNECTED, 4267),
        (MpsLogKind.CLIENT_CONNECTED, 81),
        (MpsLogKind.CLIENT_DISCONNECTED, None),
        (MpsLogKind.CLIENT_DISCONNECTED, None),
        (MpsLogKind.CLIENT_DISCONNECTED, 4267),
    ]
    assert all(e.source == "server" for e in events)
    assert events[1].server_pid == 4428


def test_incremental_partial_lines_and_truncation(tmp_path: Path) -> None:
    log = tmp_path / "control.log"
    reader = MpsLogReader(tmp_path)
    assert reader.read_new() == []  # no file yet
    log.write_text("[2026-05-31 23:48:21.671 Control 1] NEW CLIENT 5 from us")
    assert reader.read_new() == []  # half a line is kept back
    with log.open("a") as fh:
        fh.write("er 0: Server already exists\n")
    assert kinds(reader.read_new()) == [(MpsLogKind.CLIENT_CONNECTED, 5)]
    assert reader.read_new() == []
    log.write_text("[2026-05-31 23:48:22.000 Control 1] Server 9 exited with status 0\n")  # rotated
    assert [e.kind for e in reader.read_new()] == [MpsLogKind.SERVER_EXITED]


def test_noise_and_garbage_are_skipped() -> None:
    assert parse_line("not a log line") is None
    assert parse_line("[2026-05-31 23:48:21.671 Control 1] User did not send valid credentials") is None
    assert parse_line("[2026-05-31 23:48:21.671 Control 1] Accepting connection...") is None


def test_reader_sees_what_the_fake_writes(tmp_path: Path) -> None:
    fake = FakeMpsControl()
    pipe, logs = tmp_path / "pipe", tmp_path / "log"
    fake.add_daemon(pipe, logs, "GPU-x")
    reader = MpsLogReader(logs)
    assert [e.kind for e in reader.read_new()] == [MpsLogKind.DAEMON_STARTED]
    spid = fake.connect_client(pipe, 321)
    events = reader.read_new()
    assert (MpsLogKind.CLIENT_CONNECTED, 321) in kinds(events)
    assert any(e.kind is MpsLogKind.SERVER_STARTED and e.server_pid == spid for e in events)
    fake.fault(pipe)
    fake.connect_client(pipe, 322)
    fake._run(fake.daemon_at(pipe), ["terminate_client", str(spid), "322"])
    fake.disconnect_client(pipe, 321)
    # control.log's new lines come first, then server.log's.
    assert kinds(reader.read_new()) == [
        (MpsLogKind.CLIENT_CONNECTED, 322),
        (MpsLogKind.FAULT, None),
        (MpsLogKind.CLIENT_CONNECTED, 322),
        (MpsLogKind.CLIENT_TERMINATED, 322),
        (MpsLogKind.CLIENT_DISCONNECTED, 321),
    ]


def test_other_client_exit_wordings() -> None:
    for text, pid in (
        ("Client {81, 1} exit", 81),
        ("Client 670 exited", 670),
        ("Client {PID: 9, Context ID: 0} detached", 9),
    ):
        e = parse_line(f"[2026-05-31 23:48:21.671 Server 17] {text}", "server")
        assert e is not None and e.kind is MpsLogKind.CLIENT_DISCONNECTED and e.client_pid == pid, text
    shutdown = parse_line("[2026-05-31 23:48:21.671 Control 1] Exit")
    assert shutdown is not None and shutdown.kind is MpsLogKind.DAEMON_EXITED
