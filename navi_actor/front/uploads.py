"""Uploaded files: ``POST /sessions/{id}/files``, and the check of a message's ``files``.

Uploads are stored in ``DATA_DIR/uploads/SESSION_ID/`` (``Turn.upload_dir``),
folders 0700 and files 0600, under safe names: the client's file name
reduced to ``A-Z a-z 0-9 . _ -``, without leading dots, at most 100
characters, made unique with ``-1``, ``-2``… Every step is taken relative to
an open folder descriptor with ``O_NOFOLLOW``, so a symlink planted in the
upload tree cannot redirect a write. The upload answers ``{files: [{name,
path}]}``, the entries a message's ``files`` may then name.

:func:`confine` checks a message's ``files``: each path, absolute or relative
to the session's upload folder, must resolve (symlinks included) to a regular
file inside that folder.
"""

from __future__ import annotations

import os
import re
import shutil
import unicodedata
from pathlib import Path
from urllib.parse import unquote

from aiohttp import BodyPartReader, web

from navi_actor import protocol
from navi_actor.protocol import ClientError

UPLOADS = "uploads"
MAX_NAME = 100
MAX_UPLOAD_FILES = 20  # files in one upload request
UPLOAD_TOO_LARGE = "upload_too_large"
INVALID_UPLOAD = "invalid_upload"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class UploadError(Exception):
    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def uploads_root(data_path: Path) -> str:
    """``DATA_DIR/uploads`` with every symlink resolved: the prefix of every upload path."""
    return os.path.join(os.path.realpath(data_path), UPLOADS)


def session_dir(data_path: Path, sid: str) -> str:
    return os.path.join(uploads_root(data_path), sid)


def safe_name(filename: str | None) -> str:
    """A file name that is safe on disk and in a shell: no folders, no leading dot, short."""
    # Some clients percent-encode the name (aiohttp's FormData does): decode once, then cut.
    base = unicodedata.normalize("NFKC", unquote(filename or "")).replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE.sub("_", base).lstrip("._-")
    if not name:
        return "upload"
    if len(name) > MAX_NAME:
        stem, ext = os.path.splitext(name)
        ext = ext[:20]
        name = stem[: MAX_NAME - len(ext)] + ext
    return name


def open_session_dir(data_path: Path, sid: str, create: bool) -> int:
    """An open descriptor of ``DATA_DIR/uploads/SID`` (created 0700 if asked); no symlink followed."""
    fd = os.open(os.path.realpath(data_path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in (UPLOADS, sid):
            if create:
                try:
                    os.mkdir(name, 0o700, dir_fd=fd)
                except FileExistsError:
                    pass
            nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
            if create and os.fstat(fd).st_mode & 0o077:
                os.fchmod(fd, 0o700)  # made earlier by someone else (an agent): private again
        return fd
    except BaseException:
        os.close(fd)
        raise


def _create_unique(dfd: int, name: str) -> tuple[int, str]:
    stem, ext = os.path.splitext(name)
    for n in range(1000):
        candidate = name if n == 0 else f"{stem}-{n}{ext}"
        try:
            return os.open(candidate, _FILE_FLAGS, 0o600, dir_fd=dfd), candidate
        except FileExistsError:
            continue
    raise UploadError(409, "Too many files with this name; rename the file.", INVALID_UPLOAD)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


async def receive(request: web.Request, data_path: Path, sid: str, max_bytes: int) -> list[dict[str, str]]:
    """Store the request's files; return their ``{name, path}``. Raise UploadError when refused.

    Nothing is kept from a refused request: files already written are removed.
    """
    if request.content_length is not None and request.content_length > max_bytes + 64 * 1024:
        raise UploadError(413, f"The upload exceeds the limit of {max_bytes} bytes.", UPLOAD_TOO_LARGE)
    if not request.content_type.startswith("multipart/form-data"):
        raise UploadError(400, "Send the files as multipart/form-data.", INVALID_UPLOAD)
    try:
        dfd = open_session_dir(data_path, sid, create=True)
    except OSError as exc:
        raise UploadError(500, f"The upload folder is unusable: {exc.strerror or exc}", INVALID_UPLOAD) from None
    written: list[str] = []
    total = 0
    try:
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader) or not part.filename:
                    raise UploadError(400, "Each part of the upload must be a file with a file name.", INVALID_UPLOAD)
                if len(written) >= MAX_UPLOAD_FILES:
                    raise UploadError(400, f"At most {MAX_UPLOAD_FILES} files per upload.", INVALID_UPLOAD)
                fd, name = _create_unique(dfd, safe_name(part.filename))
                written.append(name)
                try:
                    while chunk := await part.read_chunk(65536):
                        total += len(chunk)
                        if total > max_bytes:
                            raise UploadError(413, f"The upload exceeds the limit of {max_bytes} bytes.",
                                              UPLOAD_TOO_LARGE)
                        _write_all(fd, chunk)
                finally:
                    os.close(fd)
        except (ValueError, AssertionError, RuntimeError) as exc:  # a malformed multipart body
            raise UploadError(400, f"The upload is not valid multipart/form-data: {exc}"[:300], INVALID_UPLOAD) from None
        if not written:
            raise UploadError(400, "The upload holds no file.", INVALID_UPLOAD)
    except BaseException:
        for name in written:
            try:
                os.unlink(name, dir_fd=dfd)
            except OSError:
                pass
        raise
    finally:
        os.close(dfd)
    base = session_dir(data_path, sid)
    return [{"name": name, "path": os.path.join(base, name)} for name in written]


def confine(data_path: Path, sid: str, files: list[dict[str, str]]) -> list[dict[str, str]]:
    """The files with their paths resolved; ClientError ``invalid_file`` for one outside the session's uploads."""
    if not files:
        return files
    base = session_dir(data_path, sid)
    base_ok = os.path.realpath(base) == base and os.path.isdir(base)
    out = []
    for f in files:
        path = f["path"]
        real = os.path.realpath(path if os.path.isabs(path) else os.path.join(base, path))
        inside = base_ok and real != base and os.path.commonpath([real, base]) == base
        if not inside or not os.path.isfile(real):
            raise ClientError(
                protocol.INVALID_FILE,
                f"File {f['name'][:100]!r} is not an upload of this session; upload it with "
                f"POST /sessions/{sid}/files and use the path that returns.",
            )
        out.append({"name": f["name"], "path": real})
    return out


def remove_session_dir(data_path: Path, sid: str) -> None:
    """Delete a session's upload folder (not through a symlink); nothing if there is none."""
    base = session_dir(data_path, sid)
    if os.path.isdir(base) and not os.path.islink(base):
        shutil.rmtree(base, ignore_errors=True)
