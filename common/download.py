"""Download dataset files with checksum verification, resume, retries and mirrors.

`fetch` stores each file at ``<root>/<relpath>``, where root defaults to
``$REPRO_DATA`` (or ``~/.cache/repro-papers``). Mirrors listed in
``$REPRO_MIRROR`` are tried before the official URL, so machines without
internet can point it at a local copy laid out as ``<mirror>/<relpath>``.
`extract_archive` unpacks zip and tar archives and rejects members that would
land outside the destination folder.
"""

from __future__ import annotations

import hashlib
import html.parser
import http.client
import logging
import os
import re
import shutil
import socket
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from tqdm import tqdm

__all__ = [
    "ChecksumError",
    "DownloadError",
    "HTMLPageError",
    "UnsafeArchiveError",
    "data_root",
    "extract_archive",
    "fetch",
    "file_checksum",
    "mirrors_from_env",
]

logger = logging.getLogger(__name__)

DATA_ROOT_ENV = "REPRO_DATA"
MIRROR_ENV = "REPRO_MIRROR"
DEFAULT_DATA_ROOT = Path("~/.cache/repro-papers")

_CHUNK_BYTES = 1 << 20
_MAX_CONFIRMATION_PAGE_BYTES = 1 << 20  # a confirmation page is a few kB
_USER_AGENT = "repro-papers-downloader/1.0 (Python urllib)"
# HTTP statuses worth retrying because they report a temporary state (timeout, rate limit, overload, gateway error).
_TRANSIENT_HTTP_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
# Maximum attempts per source that time out before any body byte arrives. A server that accepted the
# connection but sent nothing twice is treated as down, so it costs about 2 * timeout_s instead of a full retry cycle.
_MAX_STALLED_ATTEMPTS = 2
_HEX_DIGEST_LENGTHS = {"md5": 32, "sha256": 64}
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


class DownloadError(RuntimeError):
    """A file could not be downloaded, copied from a mirror or verified."""


class ChecksumError(DownloadError):
    """A file's checksum differs from the expected one."""


class HTMLPageError(DownloadError):
    """A server returned an HTML page (confirmation page, login wall, error page) instead of the file."""

    page: str = ""  # the start of the HTML page, read so that a download confirmation form can be followed


class UnsafeArchiveError(ValueError):
    """An archive member has an absolute path or would be written outside the destination folder."""


class _TransientError(Exception):
    """A network failure that a later attempt may not hit again (timeout, reset, truncated body)."""


class _StalledError(_TransientError):
    """A timeout before any body byte arrived: no connection, no response headers or no first body bytes."""


def data_root() -> Path:
    """Return the cache folder for downloads: ``$REPRO_DATA`` if set, else ``~/.cache/repro-papers``."""
    configured = os.environ.get(DATA_ROOT_ENV)
    if configured:
        return Path(configured).expanduser()
    return DEFAULT_DATA_ROOT.expanduser()


def mirrors_from_env() -> list[str]:
    """Return the mirrors listed in ``$REPRO_MIRROR``, or an empty list if it is unset.

    Entries are separated by ``os.pathsep``. Each entry is a local folder or an
    http(s) URL prefix. On POSIX the separator ``:`` also occurs inside URLs, so
    ``http://host:8000/data:/mnt/data`` is parsed as the two entries
    ``http://host:8000/data`` and ``/mnt/data``.
    """
    value = os.environ.get(MIRROR_ENV, "")
    if os.pathsep != ":":
        return [entry for entry in value.split(os.pathsep) if entry]

    # A URL entry is the scheme, the host, an optional numeric port, then the path up to the next ":".
    # NOTE: IPv6 hosts in brackets ("http://[::1]/") are not recognised.
    return re.findall(r"https?://[^/:]+(?::\d+)?[^:]*|[^:]+", value)


def file_checksum(path: str | os.PathLike[str], algorithm: str) -> str:
    """Return the lowercase hex digest of the file at ``path`` (``algorithm`` is a hashlib name, e.g. "md5")."""
    with open(path, "rb") as file:
        # usedforsecurity=False keeps MD5 available on FIPS-enabled systems. The digest only detects corruption.
        digest = hashlib.file_digest(file, lambda: hashlib.new(algorithm, usedforsecurity=False))
    return digest.hexdigest()


def fetch(
    url: str,
    relpath: str,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    root: Path | None = None,
    mirrors: list[str] | None = None,
    retries: int = 3,
    backoff_s: float = 1.0,
    timeout_s: float = 20.0,
) -> Path:
    """Download ``url`` to ``root / relpath`` unless a verified copy is already there, and return that path.

    Sources are tried in order: each mirror as ``<mirror>/<relpath>`` (a local
    folder is copied, a URL prefix is downloaded), then ``url``. The first
    source whose file matches every given checksum wins.

    Bytes go to ``<dest>.part`` first. A ``.part`` left by an interrupted run is
    resumed with an HTTP Range request, and the download restarts from byte 0
    when the server ignores the range. Only a verified file is renamed to the
    destination, atomically. When a source delivers bytes with the wrong
    checksum, the ``.part`` file is deleted, the destination is not touched and
    the next source is tried.

    ``timeout_s`` is the number of seconds to wait for the connection and for
    each read from the socket. It does not limit the total download time, so a
    server that keeps sending bytes slowly is not cut off.

    Timeouts, dropped connections, transient HTTP statuses (429, 5xx) and
    truncated bodies are retried up to ``retries`` times, waiting
    ``backoff_s * 2**n`` seconds before retry n + 1. Attempts that time out
    before any body byte arrives are retried only once per source, so a server
    that accepts connections and never sends a response costs about ``2 * timeout_s``.
    Host name resolution failures, refused connections, HTTP 404 and other
    client errors are not retried, and fetch moves on to the next source.

    A file already at the destination that verifies is returned without network
    access. One that does not verify is never deleted or overwritten: fetch
    raises ChecksumError and leaves the decision to the user.

    Raises:
        ValueError: neither ``md5`` nor ``sha256`` is given, a checksum is not a
            hex digest, or ``relpath`` is absolute or contains "..".
        ChecksumError: the existing destination does not verify, or no mirror
            provided the file and ``url`` delivered bytes with the wrong checksum.
        HTMLPageError: no mirror provided the file and ``url`` returned an HTML page.
        DownloadError: no mirror provided the file and ``url`` failed for another
            reason (HTTP 404, unknown host, refused connection, timeout after the
            retries). The message names the URL and lists the mirror failures.

    NOTE: concurrent calls for the same destination share one ``.part`` file
    and can corrupt it. Under torchrun, fetch on rank 0 and let the other ranks
    wait at a barrier.
    """
    checksums = _expected_checksums(url, md5=md5, sha256=sha256)
    relative = _validated_relpath(relpath)
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")

    dest = (data_root() if root is None else Path(root)) / relative
    if dest.exists():
        return _verified_existing(dest, checksums)

    dest.parent.mkdir(parents=True, exist_ok=True)
    target = _Target(
        dest=dest,
        part=dest.with_name(dest.name + ".part"),
        relpath=relative.as_posix(),
        checksums=checksums,
    )
    options = _HTTPOptions(retries=retries, backoff_s=backoff_s, timeout_s=timeout_s)
    mirror_list = mirrors_from_env() if mirrors is None else list(mirrors)

    failures: list[tuple[str, DownloadError]] = []
    for mirror in mirror_list:
        try:
            if _is_url(mirror):
                mirror_url = f"{mirror.rstrip('/')}/{target.relpath}"
                _fetch_from_url(mirror_url, target, options)
            else:
                _copy_from_folder(Path(mirror).expanduser(), target)
        except DownloadError as error:
            logger.info("Mirror %s did not provide %s: %s", mirror, target.relpath, error)
            failures.append((mirror, error))
            continue
        logger.info("Mirror hit: %s provided %s", mirror, target.relpath)
        return dest

    try:
        _fetch_from_url(url, target, options)
    except DownloadError as error:
        if not failures:
            raise
        mirror_notes = "\n".join(f"  {mirror}: {failure}" for mirror, failure in failures)
        raise type(error)(f"{error}\nMirrors tried before {url}:\n{mirror_notes}") from error
    return dest


@dataclass(frozen=True)
class _Target:
    dest: Path
    part: Path
    relpath: str
    checksums: dict[str, str]


@dataclass(frozen=True)
class _HTTPOptions:
    retries: int
    backoff_s: float
    timeout_s: float


def _expected_checksums(url: str, *, md5: str | None, sha256: str | None) -> dict[str, str]:
    checksums = {name: value for name, value in (("md5", md5), ("sha256", sha256)) if value is not None}
    if not checksums:
        raise ValueError(
            f"fetch({url!r}) needs md5= or sha256= to verify the download. Pass the checksum that the "
            "dataset publishes, or compute one from a trusted copy with file_checksum(path, 'sha256')."
        )

    normalized = {}
    for algorithm, value in checksums.items():
        digest = value.strip().lower()
        expected_length = _HEX_DIGEST_LENGTHS[algorithm]
        if len(digest) != expected_length or not re.fullmatch(r"[0-9a-f]+", digest):
            raise ValueError(f"{algorithm}={value!r} is not a {expected_length}-character hex digest")
        normalized[algorithm] = digest
    return normalized


def _validated_relpath(relpath: str) -> PurePosixPath:
    """Return relpath as a POSIX path, rejecting paths that would leave the data root."""
    relative = PurePosixPath(str(relpath).replace("\\", "/"))
    if relative.is_absolute() or PureWindowsPath(relpath).drive or ".." in relative.parts or not relative.parts:
        raise ValueError(f"relpath must be a relative path inside the data root without '..', got {relpath!r}")
    return relative


def _first_mismatch(path: Path, checksums: dict[str, str]) -> tuple[str, str, str] | None:
    """Return (algorithm, expected, actual) for the first checksum that path fails, or None if all match."""
    for algorithm, expected in checksums.items():
        actual = file_checksum(path, algorithm)
        if actual != expected:
            return algorithm, expected, actual
    return None


def _verified_existing(dest: Path, checksums: dict[str, str]) -> Path:
    mismatch = _first_mismatch(dest, checksums)
    if mismatch is None:
        logger.debug("Using verified file %s", dest)
        return dest

    algorithm, expected, actual = mismatch
    raise ChecksumError(
        f"{dest} already exists but does not match the expected checksum "
        f"({algorithm} expected {expected}, actual {actual}). It may be truncated, corrupt or a different "
        "version of the file. It was left untouched: delete it to download it again, or replace it with a "
        "correct copy."
    )


def _is_url(location: str) -> bool:
    return location.lower().startswith(("http://", "https://"))


def _copy_from_folder(folder: Path, target: _Target) -> None:
    """Copy ``folder / relpath`` to the destination if it verifies, else raise DownloadError."""
    source = folder / target.relpath
    if not source.is_file():
        raise DownloadError(f"{source} not found")

    # A copy of its own, so that a bad mirror file never overwrites a partial download kept for resuming.
    copy = target.part.with_name(target.dest.name + ".mirror")
    shutil.copyfile(source, copy)
    mismatch = _first_mismatch(copy, target.checksums)
    if mismatch is not None:
        copy.unlink()
        raise _checksum_error(str(source), target, mismatch)
    os.replace(copy, target.dest)
    target.part.unlink(missing_ok=True)  # a partial download of the same file is no longer needed


def _fetch_from_url(url: str, target: _Target, options: _HTTPOptions) -> None:
    """Download url to the destination through the .part file, verify it and rename it into place."""
    resumed_previous_run = target.part.exists() and target.part.stat().st_size > 0
    try:
        _download_with_retries(url, target, options)
    except HTMLPageError as error:
        confirmed = _confirmation_url(url, error.page)
        if confirmed is None:
            raise
        logger.info("%s returned a download confirmation page (Google Drive's large-file warning); following its form", url)
        url = confirmed
        _download_with_retries(url, target, options)
    mismatch = _first_mismatch(target.part, target.checksums)

    if mismatch is not None and resumed_previous_run:
        # The .part file may come from another version of the file or another source, so
        # resuming it cannot give the right bytes. A fresh download can.
        logger.warning(
            "Resumed download of %s does not match its checksum. Discarding %s and downloading from byte 0",
            url,
            target.part,
        )
        target.part.unlink()
        _download_with_retries(url, target, options)
        mismatch = _first_mismatch(target.part, target.checksums)

    if mismatch is not None:
        target.part.unlink()
        raise _checksum_error(url, target, mismatch)

    os.replace(target.part, target.dest)
    logger.info("Saved verified %s to %s", url, target.dest)


class _ConfirmationForm(html.parser.HTMLParser):
    """Collects the action and hidden inputs of a page's form that has a `confirm` input."""

    def __init__(self):
        super().__init__()
        self.forms: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form":
            self.forms.append((values.get("action", ""), {}))
        elif tag == "input" and self.forms and values.get("type") == "hidden" and values.get("name"):
            self.forms[-1][1][values["name"]] = values.get("value", "")


def _confirmation_url(url: str, page: str) -> str | None:
    """Return the URL that Google Drive's download confirmation form on `page` points to, or None.

    Drive replies to a request for a large file with an HTML page whose form
    (hidden inputs id, export, confirm, uuid) leads to the file itself.
    """
    parser = _ConfirmationForm()
    parser.feed(page)
    for action, inputs in parser.forms:
        if "confirm" in inputs and action:
            return urllib.parse.urljoin(url, action) + "?" + urllib.parse.urlencode(inputs)
    return None


def _checksum_error(source: str, target: _Target, mismatch: tuple[str, str, str]) -> ChecksumError:
    algorithm, expected, actual = mismatch
    return ChecksumError(
        f"The file from {source} does not match the expected checksum ({algorithm} expected {expected}, "
        f"actual {actual}). The received bytes were deleted and {target.dest} was not changed. Check the URL "
        f"and the expected checksum, or place a verified copy at {target.dest}."
    )


def _download_with_retries(url: str, target: _Target, options: _HTTPOptions) -> None:
    attempts = options.retries + 1
    stalled_attempts = 0
    for attempt in range(1, attempts + 1):
        try:
            _download_once(url, target, options.timeout_s)
            return
        except _TransientError as error:
            if isinstance(error, _StalledError):
                stalled_attempts += 1
            if attempt == attempts or stalled_attempts == _MAX_STALLED_ATTEMPTS:
                raise DownloadError(f"Downloading {url} failed after {attempt} attempt(s): {error}") from error
            delay_s = options.backoff_s * 2 ** (attempt - 1)
            logger.warning(
                "Attempt %d/%d for %s failed: %s. Retrying in %.3g s", attempt, attempts, url, error, delay_s
            )
            time.sleep(delay_s)


def _download_once(url: str, target: _Target, timeout_s: float) -> None:
    """Make one HTTP request for url and append the body to the .part file.

    Raises _TransientError for failures worth retrying. The bytes received
    before a failure stay in the .part file so that the next attempt resumes.
    """
    offset = target.part.stat().st_size if target.part.exists() else 0
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        logger.info("Resuming %s at byte %d", url, offset)
    else:
        logger.info("Downloading %s to %s", url, target.dest)

    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as error:
        error.close()
        if error.code == 416 and offset:
            # The server has no bytes past the offset, so the .part file is probably complete.
            # The checksum decides, and a mismatch restarts from byte 0.
            logger.info("%s has no bytes after offset %d, so verifying %s as is", url, offset, target.part)
            return
        _raise_for_http_status(url, error.code, error.reason)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        raise _request_error(url, error, timeout_s) from error

    with response:
        _check_not_html_content_type(url, response, target)
        append = _resume_position_accepted(url, response, offset, target)
        _copy_body(url, response, target, append=append, timeout_s=timeout_s)


def _request_error(url: str, error: Exception, timeout_s: float) -> Exception:
    """Return the exception for a request that got no HTTP response.

    Returns a DownloadError, which ends the attempts on this source, when a
    retry cannot help: the host name does not resolve or the connection is
    refused. Returns a _TransientError otherwise.
    """
    # urllib wraps errors from connecting and sending in URLError, but errors while waiting for the headers are raw.
    cause = error.reason if isinstance(error, urllib.error.URLError) else error
    if isinstance(cause, socket.gaierror):
        return DownloadError(
            f"Could not resolve the host name in {url} ({cause}). Check the URL and the network connection, "
            f"or set {MIRROR_ENV} to a folder that contains the file."
        )
    if isinstance(cause, ConnectionRefusedError):
        return DownloadError(
            f"{url} refused the connection ({cause}). Check that the server is running and that the URL's "
            f"host and port are right, or set {MIRROR_ENV} to a folder that contains the file."
        )
    if isinstance(cause, TimeoutError):
        return _StalledError(f"timed out after {timeout_s:g} s waiting for a connection or a response")
    return _TransientError(f"request failed: {cause}")


def _raise_for_http_status(url: str, status: int, reason: str) -> None:
    message = f"{url} returned HTTP {status} {reason}"
    if status in _TRANSIENT_HTTP_STATUSES:
        raise _TransientError(message)
    if status == 404:
        raise DownloadError(f"{message}: the file is not at this URL. Check the URL, or set {MIRROR_ENV}.")
    raise DownloadError(f"{message}. Check the URL and whether the server requires a login.")


def _check_not_html_content_type(url: str, response: http.client.HTTPResponse, target: _Target) -> None:
    content_type = response.headers.get("Content-Type", "")
    if "text/html" in content_type.lower():
        error = _html_page_error(url, f"Content-Type {content_type!r}", target)
        try:
            error.page = response.read(_MAX_CONFIRMATION_PAGE_BYTES).decode("utf-8", errors="replace")
        except (http.client.HTTPException, OSError):
            pass
        raise error


def _html_page_error(url: str, evidence: str, target: _Target) -> HTMLPageError:
    return HTMLPageError(
        f"{url} returned an HTML page ({evidence}) instead of the file. This is usually Google Drive's "
        "virus-scan or download confirmation page, a login wall or an error page. Download the file "
        f"manually in a browser and save it as {target.dest}, or set {MIRROR_ENV} to a folder or URL "
        f"prefix that contains {target.relpath}."
    )


def _resume_position_accepted(url: str, response: http.client.HTTPResponse, offset: int, target: _Target) -> bool:
    """Return True if the body continues the .part file at offset, False if it is the whole file."""
    if not offset:
        return False
    if response.status != 206:
        logger.info("%s ignored the Range request (HTTP %d), so restarting from byte 0", url, response.status)
        return False

    content_range = response.headers.get("Content-Range", "")
    if not content_range.startswith(f"bytes {offset}-"):
        target.part.unlink()
        raise _TransientError(
            f"requested bytes from offset {offset} but got Content-Range {content_range!r}. "
            "Discarded the partial file to restart from byte 0"
        )
    return True


def _copy_body(
    url: str, response: http.client.HTTPResponse, target: _Target, *, append: bool, timeout_s: float
) -> None:
    """Write the response body to the .part file, raising _TransientError if it is shorter than announced."""
    length_header = response.headers.get("Content-Length")
    expected_bytes = int(length_header) if length_header and length_header.isdigit() else None
    offset = target.part.stat().st_size if append else 0
    received = 0

    try:
        first_chunk = response.read(_CHUNK_BYTES)
    except TimeoutError as error:
        raise _StalledError(f"timed out after {timeout_s:g} s waiting for the first body bytes") from error
    except (http.client.HTTPException, OSError) as error:
        raise _TransientError(f"reading the response failed: {error}") from error

    if not append and _looks_like_html(first_chunk):
        error = _html_page_error(url, "the body starts with an HTML tag", target)
        error.page = first_chunk.decode("utf-8", errors="replace")
        raise error

    progress = tqdm(
        total=None if expected_bytes is None else offset + expected_bytes,
        initial=offset,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=target.dest.name,
        disable=None,  # Shown on a terminal only.
    )
    with progress, open(target.part, "ab" if append else "wb") as part_file:
        chunk = first_chunk
        while chunk:
            part_file.write(chunk)
            received += len(chunk)
            progress.update(len(chunk))
            try:
                chunk = response.read(_CHUNK_BYTES)
            except (http.client.HTTPException, OSError) as error:
                raise _TransientError(f"connection lost after {received} bytes: {error}") from error

    if expected_bytes is not None and received < expected_bytes:
        raise _TransientError(f"truncated body: received {received} of {expected_bytes} bytes")


def _looks_like_html(chunk: bytes) -> bool:
    start = chunk[:512].lstrip().lower()
    return start.startswith((b"<!doctype html", b"<html"))


def extract_archive(archive: Path, dest: Path) -> Path:
    """Extract a .zip or tar archive (.tar, .tar.gz, .tgz, .tar.bz2, .tar.xz) into the folder dest.

    Members with absolute paths or ".." components raise UnsafeArchiveError
    naming the member. Tar members also pass tarfile's "data" filter, which
    rejects links out of dest and device files. Extraction goes to a temporary
    folder beside dest that is renamed to dest only on success, so a failure
    leaves nothing behind.

    An existing dest folder counts as a complete earlier extraction (this
    function never leaves a partial one) and is returned unchanged. Delete it
    to extract again.
    """
    archive = Path(archive)
    dest = Path(dest)
    name = archive.name.lower()
    if not name.endswith((".zip", *_TAR_SUFFIXES)):
        raise ValueError(f"Unsupported archive type for {archive}. Expected .zip or one of {', '.join(_TAR_SUFFIXES)}")
    if dest.is_dir():
        logger.info("%s already exists, so skipping extraction of %s", dest, archive)
        return dest
    if dest.exists():
        raise FileExistsError(f"Cannot extract {archive} to {dest}: a file with that name exists. Remove it first.")

    dest.parent.mkdir(parents=True, exist_ok=True)
    # A unique name created with mkdir (not mkdtemp, which uses mode 0o700) so dest gets the usual umask permissions.
    staging = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.extracting")
    staging.mkdir()
    logger.info("Extracting %s to %s", archive, dest)
    try:
        if name.endswith(".zip"):
            _extract_zip(archive, staging)
        else:
            _extract_tar(archive, staging)
        os.rename(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


def _unsafe_member_reason(member_name: str) -> str | None:
    """Return why an archive member name would escape the destination folder, or None if it is safe."""
    if member_name.startswith(("/", "\\")) or PureWindowsPath(member_name).drive:
        return "has an absolute path"
    if ".." in re.split(r"[/\\]", member_name):
        return "contains '..'"
    return None


def _extract_zip(archive: Path, folder: Path) -> None:
    with zipfile.ZipFile(archive) as zip_file:
        for member_name in zip_file.namelist():
            reason = _unsafe_member_reason(member_name)
            if reason is not None:
                raise UnsafeArchiveError(f"Rejected {archive}: member {member_name!r} {reason}")
        zip_file.extractall(folder)


def _extract_tar(archive: Path, folder: Path) -> None:
    with tarfile.open(archive) as tar_file:
        for member in tar_file.getmembers():
            reason = _unsafe_member_reason(member.name)
            if reason is not None:
                raise UnsafeArchiveError(f"Rejected {archive}: member {member.name!r} {reason}")
        try:
            tar_file.extractall(folder, filter="data")
        except tarfile.FilterError as error:
            raise UnsafeArchiveError(f"Rejected {archive}: {error}") from error
