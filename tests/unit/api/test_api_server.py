"""Serving: loopback checks, the non-loopback warning, a busy port, and a real uvicorn thread."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
from api_fakes import TOKEN, newsroom_source

from colo.api.app import create_app
from colo.api.server import ApiThread, bind_socket, binding_for, exposure_warning, is_loopback
from colo.errors import UsageError
from colo.spec.config import ApiSettings


@pytest.mark.parametrize(
    ("host", "loop"),
    [
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("10.0.0.5", False),
        ("::", False),
        ("example.com", False),
    ],
)
def test_is_loopback(host: str, loop: bool) -> None:
    assert is_loopback(host) is loop


def test_warning_only_off_loopback() -> None:
    assert exposure_warning("127.0.0.1", True) is None
    text = exposure_warning("0.0.0.0", False)
    assert text is not None and "0.0.0.0" in text and "reads too, needs the token" in text
    assert "read routes are open" in (exposure_warning("0.0.0.0", True) or "")


def test_busy_port_is_a_usage_error() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        with pytest.raises(UsageError) as err:
            bind_socket("127.0.0.1", port)
    assert err.value.exit_code == 2
    assert f"port {port} on 127.0.0.1 is already in use" in str(err.value)


def test_binding_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLO_API_TOKEN", raising=False)
    b = binding_for(ApiSettings(), tmp_path)
    assert (b.host, b.port, b.open_reads) == ("127.0.0.1", 8014, True)
    assert (tmp_path / "api-token").read_text().strip() == b.token
    assert b.url == "http://127.0.0.1:8014"
    off = binding_for(ApiSettings(), tmp_path, host="0.0.0.0", port=9000)
    assert (off.host, off.port, off.open_reads) == ("0.0.0.0", 9000, False)  # reads need the token off loopback
    assert binding_for(ApiSettings(), tmp_path, host="0.0.0.0", open_reads=True).open_reads is True
    assert binding_for(ApiSettings(open_reads=False), tmp_path).open_reads is False
    assert binding_for(ApiSettings(), tmp_path, open_reads=False).open_reads is False


def test_api_thread_serves_http() -> None:
    source = newsroom_source()
    thread = ApiThread(create_app(source, token=TOKEN), host="127.0.0.1", port=0).start()
    try:
        base = f"http://127.0.0.1:{thread.port}"
        assert httpx.get(f"{base}/healthz", timeout=5).json()["status"] == "ok"
        r = httpx.post(f"{base}/agents/critic/restart", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
        assert r.status_code == 200
        assert source.calls == [("restart", "critic")]
    finally:
        thread.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/healthz", timeout=2)


def test_listening_socket_says_tcp() -> None:
    """asyncio sets TCP_NODELAY only on sockets whose proto is TCP; without it keep-alive answers wait ~40 ms."""
    sock = bind_socket("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
