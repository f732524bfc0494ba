"""Tests for common.download against an HTTP server on 127.0.0.1 that the tests start and stop."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import socket
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from common.download import (
    ChecksumError,
    DownloadError,
    HTMLPageError,
    UnsafeArchiveError,
    data_root,
    extract_archive,
    fetch,
    file_checksum,
    mirrors_from_env,
)

pytestmark = pytest.mark.timeout(10)

PAYLOAD = bytes(range(256)) * 64  # 16 KiB, larger than one resume offset below
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
WRONG_PAYLOAD = b"not the file you are looking for" * 100
HTML_PAGE = b"<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head></html>"
RELPATH = "dataset/payload.bin"
DRIVE_PAGE = (b'<!DOCTYPE html><html><body><form id="download-form" action="/drive-download" method="get">'
              b'<input type="hidden" name="id" value="abc"><input type="hidden" name="export" value="download">'
              b'<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="42">'
              b'<input type="submit" value="Download anyway"></form></body></html>')
FAST = {"backoff_s": 0.01, "timeout_s": 5.0}


@dataclass
class ServerState:
    """Requests seen by the test server and hooks that tests add."""

    base_url: str = ""
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    served_truncated: set[str] = field(default_factory=set)
    before_body: dict[str, Callable[[], None]] = field(default_factory=dict)
    release_stalled: threading.Event = field(default_factory=threading.Event)  # set at teardown

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]


def make_handler(state: ServerState) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        timeout = 5  # seconds; bounds a stuck connection

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            state.requests.append((self.path, self.headers.get("Range")))
            hook = state.before_body.get(self.path)
            if hook is not None:
                hook()

            if self.path in ("/file.bin", "/mirror/" + RELPATH):
                self.send_with_range(PAYLOAD)
            elif self.path == "/no-range.bin":
                self.send_bytes(200, PAYLOAD)
            elif self.path == "/truncated-once.bin":
                self.send_truncated_once()
            elif self.path == "/wrong.bin":
                self.send_bytes(200, WRONG_PAYLOAD)
            elif self.path == "/drive-page":
                self.send_bytes(200, DRIVE_PAGE, content_type="text/html; charset=utf-8")
            elif self.path == "/drive-download?id=abc&export=download&confirm=t&uuid=42":
                self.send_with_range(PAYLOAD)
            elif self.path == "/page.html":
                self.send_bytes(200, HTML_PAGE, content_type="text/html; charset=utf-8")
            elif self.path == "/html-as-binary.bin":
                self.send_bytes(200, HTML_PAGE)
            elif self.path == "/unavailable.bin":
                self.send_bytes(503, b"try later")
            elif self.path == "/headers-only.bin":
                self.send_headers_then_stall()
            else:
                self.send_bytes(404, b"not found", content_type="text/plain")

        def send_bytes(self, status: int, body: bytes, content_type: str = "application/octet-stream") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def send_with_range(self, body: bytes) -> None:
            range_header = self.headers.get("Range")
            if range_header is None:
                self.send_bytes(200, body)
                return

            start = int(range_header.removeprefix("bytes=").removesuffix("-"))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            self.wfile.write(body[start:])

        def send_truncated_once(self) -> None:
            if self.path in state.served_truncated:
                self.send_with_range(PAYLOAD)
                return

            # Announce the full length, send a third of it, then close the connection.
            state.served_truncated.add(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 3])
            self.wfile.flush()
            self.close_connection = True

        def send_headers_then_stall(self) -> None:
            # Announce the file, then send no body bytes until the fixture shuts down (at most 5 s).
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.flush()
            state.release_stalled.wait(timeout=5)
            self.close_connection = True

    return Handler


@pytest.fixture
def server() -> Iterator[ServerState]:
    state = ServerState()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    httpd.daemon_threads = True
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release_stalled.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@dataclass
class SilentServer:
    """A TCP server on 127.0.0.1 that accepts connections and never sends a byte, like a hung HTTP server."""

    base_url: str
    connections: list[socket.socket]


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)  # seconds; lets the accept loop notice the stop event
    stop = threading.Event()
    state = SilentServer(base_url=f"http://127.0.0.1:{listener.getsockname()[1]}", connections=[])

    def accept_until_stopped() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            state.connections.append(connection)

    thread = threading.Thread(target=accept_until_stopped, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        stop.set()
        thread.join(timeout=5)
        for connection in state.connections:
            connection.close()
        listener.close()


@pytest.fixture
def getaddrinfo_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, object]]:
    """Record the (host, port) of every name lookup, and fail lookups of hosts under .invalid without a query."""
    calls: list[tuple[object, object]] = []
    real_getaddrinfo = socket.getaddrinfo

    def recording_getaddrinfo(host: object, port: object, *args: object, **kwargs: object) -> object:
        calls.append((host, port))
        if isinstance(host, str) and host.endswith(".invalid"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", recording_getaddrinfo)
    return calls


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep tests independent of the caller's REPRO_MIRROR and REPRO_DATA."""
    monkeypatch.delenv("REPRO_MIRROR", raising=False)
    monkeypatch.setenv("REPRO_DATA", str(tmp_path / "env-data-root"))


def test_fetch_downloads_and_verifies(server: ServerState, tmp_path: Path) -> None:
    url = f"{server.base_url}/file.bin"

    path = fetch(url, RELPATH, md5=PAYLOAD_MD5, sha256=PAYLOAD_SHA256, root=tmp_path, mirrors=[], **FAST)

    assert path == tmp_path / RELPATH
    assert path.read_bytes() == PAYLOAD
    assert not path.with_name(path.name + ".part").exists()
    assert server.requests == [("/file.bin", None)]


def test_fetch_defaults_to_env_data_root(server: ServerState, tmp_path: Path) -> None:
    path = fetch(f"{server.base_url}/file.bin", RELPATH, sha256=PAYLOAD_SHA256, mirrors=[], **FAST)

    assert path == tmp_path / "env-data-root" / RELPATH
    assert path.read_bytes() == PAYLOAD


def test_fetch_requires_checksum(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="md5= or sha256="):
        fetch("http://127.0.0.1:9/unused.bin", RELPATH, root=tmp_path, mirrors=[])


def test_fetch_rejects_malformed_checksum(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="32-character hex digest"):
        fetch("http://127.0.0.1:9/unused.bin", RELPATH, md5="abc", root=tmp_path, mirrors=[])


@pytest.mark.parametrize("relpath", ["../outside.bin", "/absolute.bin", "a/../../b.bin"])
def test_fetch_rejects_relpath_outside_root(tmp_path: Path, relpath: str) -> None:
    with pytest.raises(ValueError, match="relpath"):
        fetch("http://127.0.0.1:9/unused.bin", relpath, md5=PAYLOAD_MD5, root=tmp_path, mirrors=[])


def test_fetch_resumes_partial_file(server: ServerState, tmp_path: Path) -> None:
    part = tmp_path / (RELPATH + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD[:1000])

    path = fetch(f"{server.base_url}/file.bin", RELPATH, md5=PAYLOAD_MD5, root=tmp_path, mirrors=[], **FAST)

    assert path.read_bytes() == PAYLOAD
    assert server.requests == [("/file.bin", "bytes=1000-")]
    assert not part.exists()


def test_fetch_verifies_complete_part_file(server: ServerState, tmp_path: Path) -> None:
    # A .part file that contains the whole file gets HTTP 416 for its Range request.
    part = tmp_path / (RELPATH + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD)

    path = fetch(f"{server.base_url}/file.bin", RELPATH, md5=PAYLOAD_MD5, root=tmp_path, mirrors=[], **FAST)

    assert path.read_bytes() == PAYLOAD
    assert server.requests == [("/file.bin", f"bytes={len(PAYLOAD)}-")]


def test_fetch_restarts_when_range_ignored(server: ServerState, tmp_path: Path) -> None:
    part = tmp_path / (RELPATH + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD[:1000])

    path = fetch(f"{server.base_url}/no-range.bin", RELPATH, md5=PAYLOAD_MD5, root=tmp_path, mirrors=[], **FAST)

    assert path.read_bytes() == PAYLOAD
    assert server.requests == [("/no-range.bin", "bytes=1000-")]


def test_fetch_restarts_after_stale_part(server: ServerState, tmp_path: Path) -> None:
    # A .part file from another version of the file cannot be resumed into the right bytes.
    part = tmp_path / (RELPATH + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 1000)

    path = fetch(f"{server.base_url}/file.bin", RELPATH, md5=PAYLOAD_MD5, root=tmp_path, mirrors=[], **FAST)

    assert path.read_bytes() == PAYLOAD
    assert server.requests == [("/file.bin", "bytes=1000-"), ("/file.bin", None)]


def test_fetch_retries_truncated_body(server: ServerState, tmp_path: Path) -> None:
    path = fetch(
        f"{server.base_url}/truncated-once.bin", RELPATH, md5=PAYLOAD_MD5, root=tmp_path, mirrors=[], **FAST
    )

    assert path.read_bytes() == PAYLOAD
    assert server.requests == [
        ("/truncated-once.bin", None),
        ("/truncated-once.bin", f"bytes={len(PAYLOAD) // 3}-"),
    ]


def test_fetch_gives_up_after_retries(server: ServerState, tmp_path: Path) -> None:
    url = f"{server.base_url}/unavailable.bin"

    with pytest.raises(DownloadError, match="after 3 attempt") as raised:
        fetch(url, RELPATH, md5=PAYLOAD_MD5, root=tmp_path, mirrors=[], retries=2, **FAST)

    assert url in str(raised.value)
    assert "503" in str(raised.value)
    assert server.paths() == ["/unavailable.bin"] * 3


def test_fetch_silent_server_times_out(silent_server: SilentServer, tmp_path: Path) -> None:
    url = f"{silent_server.base_url}/file.bin"

    started = time.monotonic()
    with pytest.raises(DownloadError) as raised:
        fetch(url, RELPATH, md5=PAYLOAD_MD5, root=tmp_path, mirrors=[], retries=3, backoff_s=0.01, timeout_s=0.5)
    elapsed_s = time.monotonic() - started

    message = str(raised.value)
    assert url in message
    assert "timed out" in message
    assert "after 2 attempt(s)" in message
    # Two attempts of 0.5 s each, not the four that retries=3 allows for other transient errors.
    assert len(silent_server.connections) == 2
    assert elapsed_s < 3.0
    assert not (tmp_path / RELPATH).exists()


def test_fetch_stalled_body_times_out(server: ServerState, tmp_path: Path) -> None:
    url = f"{server.base_url}/headers-only.bin"

    started = time.monotonic()
    with pytest.raises(DownloadError) as raised:
        fetch(url, RELPATH, md5=PAYLOAD_MD5, root=tmp_path, mirrors=[], retries=3, backoff_s=0.01, timeout_s=0.5)
    elapsed_s = time.monotonic() - started

    message = str(raised.value)
    assert url in message
    assert "timed out" in message
    assert server.paths() == ["/headers-only.bin"] * 2
    assert elapsed_s < 3.0


def test_fetch_unknown_host_not_retried(
    server: ServerState, tmp_path: Path, getaddrinfo_calls: list[tuple[object, object]]
) -> None:
    unresolvable_mirror = "http://mirror.invalid/data"

    path = fetch(
        f"{server.base_url}/file.bin",
        RELPATH,
        md5=PAYLOAD_MD5,
        root=tmp_path,
        mirrors=[unresolvable_mirror],
        retries=3,
        backoff_s=5.0,  # a retry would run into the test timeout
    )

    assert path.read_bytes() == PAYLOAD
    assert [host for host, _ in getaddrinfo_calls].count("mirror.invalid") == 1
    assert server.paths() == ["/file.bin"]


def test_fetch_unknown_host_error_names_url(tmp_path: Path, getaddrinfo_calls: list[tuple[object, object]]) -> None:
    url = "http://files.invalid/payload.bin"

    with pytest.raises(DownloadError) as raised:
        fetch(url, RELPATH, md5=PAYLOAD_MD5, root=tmp_path, mirrors=[], retries=3, backoff_s=5.0)

    message = str(raised.value)
    assert url in message
    assert "resolve the host name" in message
    assert len(getaddrinfo_calls) == 1


def test_fetch_refused_connection_not_retried(
    server: ServerState, tmp_path: Path, getaddrinfo_calls: list[tuple[object, object]]
) -> None:
    # A bound socket that does not listen makes the kernel refuse connections to its port, and keeps the port taken.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed_port:
        closed_port.bind(("127.0.0.1", 0))
        port = closed_port.getsockname()[1]
        path = fetch(
            f"{server.base_url}/file.bin",
            RELPATH,
            md5=PAYLOAD_MD5,
            root=tmp_path,
            mirrors=[f"http://127.0.0.1:{port}/data"],
            retries=3,
            backoff_s=5.0,  # a retry would run into the test timeout
        )

    assert path.read_bytes() == PAYLOAD
    assert [call_port for _, call_port in getaddrinfo_calls].count(port) == 1
    assert server.paths() == ["/file.bin"]


def test_fetch_wrong_checksum_deletes_download(server: ServerState, tmp_path: Path) -> None:
    with pytest.raises(ChecksumError) as raised:
        fetch(f"{server.base_url}/wrong.bin", RELPATH, md5=PAYLOAD_MD5, root=tmp_path, mirrors=[], **FAST)

    message = str(raised.value)
    assert PAYLOAD_MD5 in message
    assert hashlib.md5(WRONG_PAYLOAD).hexdigest() in message
    assert not (tmp_path / RELPATH).exists()
    assert not (tmp_path / (RELPATH + ".part")).exists()


def test_fetch_wrong_checksum_keeps_good_destination(server: ServerState, tmp_path: Path) -> None:
    # Another process saves the good file while this call downloads wrong bytes.
    dest = tmp_path / RELPATH

    def save_good_file() -> None:
        dest.write_bytes(PAYLOAD)

    server.before_body["/wrong.bin"] = save_good_file

    with pytest.raises(ChecksumError, match="was not changed"):
        fetch(f"{server.base_url}/wrong.bin", RELPATH, md5=PAYLOAD_MD5, root=tmp_path, mirrors=[], **FAST)

    assert dest.read_bytes() == PAYLOAD


def test_fetch_html_content_type_error(server: ServerState, tmp_path: Path) -> None:
    url = f"{server.base_url}/page.html"

    with pytest.raises(HTMLPageError) as raised:
        fetch(url, RELPATH, md5=PAYLOAD_MD5, root=tmp_path, mirrors=[], **FAST)

    message = str(raised.value)
    assert "HTML" in message
    assert url in message
    assert "Google Drive" in message
    assert str(tmp_path / RELPATH) in message
    assert "REPRO_MIRROR" in message
    assert server.paths() == ["/page.html"]
    assert not (tmp_path / (RELPATH + ".part")).exists()


def test_fetch_html_body_error(server: ServerState, tmp_path: Path) -> None:
    with pytest.raises(HTMLPageError, match="HTML"):
        fetch(f"{server.base_url}/html-as-binary.bin", RELPATH, md5=PAYLOAD_MD5, root=tmp_path, mirrors=[], **FAST)

    assert not (tmp_path / RELPATH).exists()


def test_fetch_404_not_retried(server: ServerState, tmp_path: Path) -> None:
    url = f"{server.base_url}/missing.bin"

    with pytest.raises(DownloadError) as raised:
        fetch(url, RELPATH, md5=PAYLOAD_MD5, root=tmp_path, mirrors=[], **FAST)

    message = str(raised.value)
    assert "404" in message
    assert url in message
    assert server.paths() == ["/missing.bin"]


def test_fetch_local_mirror_hit(server: ServerState, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    (mirror / RELPATH).parent.mkdir(parents=True)
    (mirror / RELPATH).write_bytes(PAYLOAD)
    root = tmp_path / "root"

    path = fetch(f"{server.base_url}/file.bin", RELPATH, md5=PAYLOAD_MD5, root=root, mirrors=[str(mirror)], **FAST)

    assert path.read_bytes() == PAYLOAD
    assert server.requests == []


def test_fetch_http_mirror_hit(server: ServerState, tmp_path: Path) -> None:
    mirror = f"{server.base_url}/mirror/"

    path = fetch(f"{server.base_url}/file.bin", RELPATH, md5=PAYLOAD_MD5, root=tmp_path, mirrors=[mirror], **FAST)

    assert path.read_bytes() == PAYLOAD
    assert server.paths() == [f"/mirror/{RELPATH}"]


def test_fetch_mirror_from_env(server: ServerState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty_mirror = tmp_path / "empty-mirror"
    empty_mirror.mkdir()
    monkeypatch.setenv("REPRO_MIRROR", os.pathsep.join([str(empty_mirror), f"{server.base_url}/mirror"]))

    path = fetch(f"{server.base_url}/file.bin", RELPATH, md5=PAYLOAD_MD5, root=tmp_path, **FAST)

    assert path.read_bytes() == PAYLOAD
    assert server.paths() == [f"/mirror/{RELPATH}"]


def test_fetch_mirror_miss_falls_back(server: ServerState, tmp_path: Path) -> None:
    wrong_mirror = tmp_path / "wrong-mirror"
    (wrong_mirror / RELPATH).parent.mkdir(parents=True)
    (wrong_mirror / RELPATH).write_bytes(WRONG_PAYLOAD)
    mirrors = [str(wrong_mirror), f"{server.base_url}/no-such-mirror"]
    root = tmp_path / "root"

    path = fetch(f"{server.base_url}/file.bin", RELPATH, md5=PAYLOAD_MD5, root=root, mirrors=mirrors, **FAST)

    assert path.read_bytes() == PAYLOAD
    assert server.paths() == [f"/no-such-mirror/{RELPATH}", "/file.bin"]


def test_bad_mirror_copy_keeps_the_partial_download(server: ServerState, tmp_path: Path) -> None:
    wrong_mirror = tmp_path / "wrong-mirror"
    (wrong_mirror / RELPATH).parent.mkdir(parents=True)
    (wrong_mirror / RELPATH).write_bytes(WRONG_PAYLOAD)
    root = tmp_path / "root"
    part = (root / RELPATH).with_name(Path(RELPATH).name + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD[:4096])

    with pytest.raises(DownloadError):
        fetch(f"{server.base_url}/missing.bin", RELPATH, md5=PAYLOAD_MD5, root=root, mirrors=[str(wrong_mirror)], **FAST)

    assert part.read_bytes() == PAYLOAD[:4096]


def test_fetch_error_lists_failed_mirrors(server: ServerState, tmp_path: Path) -> None:
    empty_mirror = tmp_path / "empty-mirror"
    empty_mirror.mkdir()

    with pytest.raises(DownloadError) as raised:
        fetch(
            f"{server.base_url}/missing.bin",
            RELPATH,
            md5=PAYLOAD_MD5,
            root=tmp_path / "root",
            mirrors=[str(empty_mirror)],
            **FAST,
        )

    message = str(raised.value)
    assert "404" in message
    assert str(empty_mirror) in message


def test_fetch_existing_file_skips_network(server: ServerState, tmp_path: Path) -> None:
    dest = tmp_path / RELPATH
    dest.parent.mkdir(parents=True)
    dest.write_bytes(PAYLOAD)

    path = fetch(f"{server.base_url}/file.bin", RELPATH, sha256=PAYLOAD_SHA256, root=tmp_path, mirrors=[], **FAST)

    assert path == dest
    assert server.requests == []


def test_fetch_existing_corrupt_file_kept(server: ServerState, tmp_path: Path) -> None:
    dest = tmp_path / RELPATH
    dest.parent.mkdir(parents=True)
    dest.write_bytes(WRONG_PAYLOAD)

    with pytest.raises(ChecksumError) as raised:
        fetch(f"{server.base_url}/file.bin", RELPATH, md5=PAYLOAD_MD5, root=tmp_path, mirrors=[], **FAST)

    message = str(raised.value)
    assert str(dest) in message
    assert PAYLOAD_MD5 in message
    assert hashlib.md5(WRONG_PAYLOAD).hexdigest() in message
    assert "delete" in message
    assert dest.read_bytes() == WRONG_PAYLOAD
    assert server.requests == []


def test_file_checksum_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "payload.bin"
    path.write_bytes(PAYLOAD)

    assert file_checksum(path, "md5") == PAYLOAD_MD5
    assert file_checksum(path, "sha256") == PAYLOAD_SHA256


def test_data_root_env_and_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert data_root() == tmp_path / "env-data-root"

    monkeypatch.delenv("REPRO_DATA")
    assert data_root() == Path.home() / ".cache" / "repro-papers"


def test_mirrors_from_env_unset() -> None:
    assert mirrors_from_env() == []


@pytest.mark.skipif(os.pathsep != ":", reason="URL splitting only matters where os.pathsep is ':'")
def test_mirrors_from_env_keeps_urls_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPRO_MIRROR", "/mnt/data:http://host:8000/data:https://example.org/mirror::relative/dir")

    assert mirrors_from_env() == [
        "/mnt/data",
        "http://host:8000/data",
        "https://example.org/mirror",
        "relative/dir",
    ]


def write_zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zip_file:
        for name, data in members.items():
            zip_file.writestr(zipfile.ZipInfo(name), data)


def write_tar_gz(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar_file:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar_file.addfile(info, io.BytesIO(data))


def test_extract_zip(tmp_path: Path) -> None:
    archive = tmp_path / "good.zip"
    write_zip(archive, {"top/a.txt": b"a", "top/sub/b.txt": b"b"})

    dest = extract_archive(archive, tmp_path / "out")

    assert (dest / "top" / "a.txt").read_bytes() == b"a"
    assert (dest / "top" / "sub" / "b.txt").read_bytes() == b"b"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["good.zip", "out"]


def test_extract_tar_gz(tmp_path: Path) -> None:
    archive = tmp_path / "good.tar.gz"
    write_tar_gz(archive, {"top/a.txt": b"a"})

    dest = extract_archive(archive, tmp_path / "out")

    assert (dest / "top" / "a.txt").read_bytes() == b"a"


def test_extract_existing_dest_kept(tmp_path: Path) -> None:
    archive = tmp_path / "good.zip"
    write_zip(archive, {"a.txt": b"new"})
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "a.txt").write_bytes(b"old")

    assert extract_archive(archive, dest) == dest
    assert (dest / "a.txt").read_bytes() == b"old"


def test_extract_zip_rejects_parent_path(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    write_zip(archive, {"fine.txt": b"ok", "../evil": b"escaped"})
    extract_root = tmp_path / "extract"
    extract_root.mkdir()

    with pytest.raises(UnsafeArchiveError, match=r"\.\./evil"):
        extract_archive(archive, extract_root / "out")

    assert list(extract_root.iterdir()) == []
    assert not (tmp_path / "evil").exists()


def test_extract_tar_rejects_absolute_path(tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar.gz"
    absolute_member = str(tmp_path / "evil-absolute")
    write_tar_gz(archive, {"fine.txt": b"ok", absolute_member: b"escaped"})
    extract_root = tmp_path / "extract"
    extract_root.mkdir()

    with pytest.raises(UnsafeArchiveError, match="absolute path") as raised:
        extract_archive(archive, extract_root / "out")

    assert absolute_member.lstrip("/") in str(raised.value)
    assert list(extract_root.iterdir()) == []
    assert not Path(absolute_member).exists()


def test_extract_tar_rejects_link_outside(tmp_path: Path) -> None:
    archive = tmp_path / "link.tar"
    with tarfile.open(archive, "w") as tar_file:
        link = tarfile.TarInfo("escape")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar_file.addfile(link)
    extract_root = tmp_path / "extract"
    extract_root.mkdir()

    with pytest.raises(UnsafeArchiveError, match="escape"):
        extract_archive(archive, extract_root / "out")

    assert list(extract_root.iterdir()) == []


def test_extract_rejects_unknown_type(tmp_path: Path) -> None:
    archive = tmp_path / "data.rar"
    archive.write_bytes(b"")

    with pytest.raises(ValueError, match=r"\.zip"):
        extract_archive(archive, tmp_path / "out")


def test_drive_confirmation_page_is_followed(server, tmp_path):
    path = fetch(f"{server.base_url}/drive-page", RELPATH, sha256=PAYLOAD_SHA256, root=tmp_path, **FAST)
    assert path.read_bytes() == PAYLOAD
    assert server.paths()[-1] == "/drive-download?id=abc&export=download&confirm=t&uuid=42"


def test_html_page_without_form_fails(server, tmp_path):
    with pytest.raises(HTMLPageError, match="returned an HTML page"):
        fetch(f"{server.base_url}/page.html", RELPATH, sha256=PAYLOAD_SHA256, root=tmp_path, **FAST)

