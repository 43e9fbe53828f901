"""Common Crawl fetcher: a crawl's list of WET files, then the first N of them, over HTTP(S).

`https://data.commoncrawl.org/crawl-data/CC-MAIN-2024-22/wet.paths.gz` lists the crawl's WET files, one path per
line, each relative to the same base URL. It is kept as `CC-MAIN-2024-22.wet.paths.gz`, named by its crawl, so
that fetching another crawl into the same folder downloads that crawl's files; a bare `wet.paths.gz` could be any
crawl's and is never read. Every download goes to `NAME.part` first and is renamed only once it is known whole:
its size matches what the server announced, or, when the server announced none, its gzip stream ends with a
complete member. A `.part` left by an interrupted run is resumed with an HTTP Range request; a failed attempt (a
dropped connection, a stall longer than the timeout, a body shorter than its Content-Length or a gzip stream cut
short, a 5xx) is retried after a growing pause with jitter, or after the server's Retry-After for a 429 or 503. A
4xx other than 408 and 429 will not change on retry, so it fails at once. The files download `parallel` at a time
(threads: the work is waiting on the network), each with its own retries.
"""

from __future__ import annotations

import email.utils
import gzip
import http.client
import random
import re
import time
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from nextword.errors import ConfigError, DataError, make_folder

DEFAULT_BASE_URL = "https://data.commoncrawl.org/"
CHUNK_BYTES = 1 << 20
USER_AGENT = "nextword-fetch-cc"
MAX_RETRY_AFTER_S = 600.0  # a server asking for a longer pause than this is treated as down
RETRYABLE_CLIENT_ERRORS = (408, 429)
CRAWL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # CC-MAIN-2024-22; it becomes part of a file name


@dataclass
class FetchOptions:
    base_url: str = DEFAULT_BASE_URL
    retries: int = 5
    backoff_s: float = 2.0  # the pause before retry k is backoff_s · 2**k
    timeout_s: float = 60.0
    parallel: int = 4  # files downloading at once


def fetch_cc(crawl: str, files: int, out_dir: str | Path, options: FetchOptions | None = None,
             log: Callable[[str], None] = print) -> list[Path]:
    """Download the first `files` WET files of `crawl` into `out_dir`; files already complete are kept."""
    options = options or FetchOptions()
    if files < 1:  # a negative count would slice the listing from its end: the whole crawl but a few files
        raise ConfigError(f"--files {files}: give the number of WET files to download, 1 or more")
    if options.retries < 0:
        raise ConfigError(f"--retries {options.retries}: give 0 or more")
    if options.parallel < 1:
        raise ConfigError(f"--parallel {options.parallel}: give the number of files to download at once, 1 or more")
    if not CRAWL_NAME.fullmatch(crawl):
        raise ConfigError(f"--crawl {crawl!r}: give a crawl name such as CC-MAIN-2024-22 (letters, digits, '.', "
                          "'_' and '-')")
    out = Path(out_dir)
    make_folder(out, "download", "--out")
    listing = download(_url(options, f"crawl-data/{crawl}/wet.paths.gz"), out / f"{crawl}.wet.paths.gz", options, log)
    try:
        text = gzip.decompress(listing.read_bytes()).decode("utf-8")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        listing.unlink()
        raise DataError(f"{listing}: not a gzip list of paths ({e}); removed, run again to download it anew") from None
    paths = [line.strip() for line in text.splitlines() if line.strip()]
    if files > len(paths):
        raise DataError(f"{crawl}: the crawl lists {len(paths)} WET files, fewer than --files {files}")
    wanted = [(_url(options, p), local_name(p, out)) for p in paths[:files]]
    with ThreadPoolExecutor(max_workers=min(options.parallel, files)) as pool:
        downloads = [pool.submit(download, url, dest, options, log) for url, dest in wanted]
    return [finished.result() for finished in downloads]  # all have ended: the first failure, in listing order


def local_name(remote_path: str, out: Path) -> Path:
    """Where a listed file goes: its last path part inside `out`, never a name that would leave `out`."""
    name = remote_path.rstrip().rsplit("/", 1)[-1]
    if name in ("", ".", "..") or "\\" in name or "\0" in name:
        raise DataError(f"{remote_path!r}: the listing gives no usable file name; the listing is damaged")
    return out / name


def _url(options: FetchOptions, path: str) -> str:
    return options.base_url.rstrip("/") + "/" + path.lstrip("/")


def download(url: str, dest: Path, options: FetchOptions, log: Callable[[str], None] = print) -> Path:
    """`url` to `dest`, resuming a `.part` file and retrying; raises DataError when every attempt failed."""
    if dest.exists():
        log(f"fetch: {dest.name} already complete")
        return dest
    partial = dest.with_name(dest.name + ".part")
    last_error = ""
    pause = 0.0
    for attempt in range(options.retries + 1):
        time.sleep(pause)
        try:
            _download_once(url, partial, options.timeout_s)
            partial.replace(dest)
            log(f"fetch: {dest.name} ({dest.stat().st_size} bytes)")
            return dest
        except urllib.error.HTTPError as e:
            last_error = str(e)
            if 400 <= e.code < 500 and e.code not in RETRYABLE_CLIENT_ERRORS:
                break
            pause = _retry_after(e) or _backoff(options, attempt)
        except (OSError, http.client.HTTPException, _Incomplete) as e:
            last_error = str(e) or type(e).__name__
            pause = _backoff(options, attempt)
        log(f"fetch: {url}: attempt {attempt + 1} failed: {last_error}")
    raise DataError(f"{url}: download failed after {attempt + 1} attempts ({last_error}); "
                    "check the network or --base-url, then run again to resume")


def _backoff(options: FetchOptions, attempt: int) -> float:
    """backoff_s · 2**attempt, times a random factor in [0.5, 1.5) so that many clients do not retry in step."""
    return options.backoff_s * 2 ** attempt * random.uniform(0.5, 1.5)


def _retry_after(error: urllib.error.HTTPError) -> float | None:
    """The pause a 429 or 503 asks for (seconds or an HTTP date, RFC 9110 §10.2.3), capped; None if none."""
    value = (error.headers or {}).get("Retry-After", "").strip()
    if not value or error.code not in (429, 503):
        return None
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


class _Incomplete(Exception):
    """The download ended before the whole file arrived; the part is kept to resume from, unless it is unusable."""


def _download_once(url: str, partial: Path, timeout_s: float) -> None:
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the part already holds every byte; it is checked below on the next try
            partial.unlink()
        raise
    with response:
        if response.status == 206:
            total = _announced_size(response.headers.get("Content-Range", "").rpartition("/")[2])
            mode = "ab"
        else:  # the server ignored the Range header: start again
            total = _announced_size(response.headers.get("Content-Length", ""))
            mode = "wb"
        with open(partial, mode) as f:
            while chunk := response.read1(CHUNK_BYTES):  # what has arrived: a stall keeps it
                f.write(chunk)
    size = partial.stat().st_size
    if total is None:
        _check_gzip_ends(partial)
        return
    if size > total:
        partial.unlink()  # more bytes than the file has: the part is not this file, start again
    if size != total:
        raise _Incomplete(f"got {size} of {total} bytes")


def _announced_size(value: str) -> int | None:
    """The size a Content-Length or a Content-Range's complete length gives; None when the server gave none
    ("*" in a Content-Range, RFC 9110 §14.4)."""
    value = value.strip()
    return int(value) if value.isascii() and value.isdigit() else None


def _check_gzip_ends(partial: Path) -> None:
    """Raise _Incomplete unless the file's gzip stream ends with a whole member.

    Without a length, a connection that closes early looks like the end of the body; every file the crawl lists
    is gzip, whose members end with a trailer, so a stream cut short inside a member shows (one cut exactly
    between two members cannot be told from the end). A part that is not gzip at all is removed, as resuming it
    could never make it whole.
    """
    if not partial.name.endswith(".gz.part"):
        return
    if partial.stat().st_size == 0:
        raise _Incomplete("an empty body and no length")
    try:
        with gzip.open(partial, "rb") as stream:
            while stream.read(CHUNK_BYTES):
                pass
    except EOFError:  # gzip: "Compressed file ended before the end-of-stream marker was reached"
        raise _Incomplete(f"the gzip stream ends part way after {partial.stat().st_size} bytes and the server "
                          "gave no length") from None
    except (OSError, zlib.error) as e:
        partial.unlink()
        raise _Incomplete(f"not a gzip file ({e}); removed, to download again") from None
