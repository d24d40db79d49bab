"""Frame storage: read frames by URI from shared storage, confined to configured roots.

Services (EEM scoring), the coordinator and the trainer name frames by URI rather than carry
image bytes around. A URI is one of
    /abs/path/frame.png          a local path
    rel/path/frame.png           a local path relative to a root (the roots are tried in order)
    file:///abs/path/frame.png   the same as a local path (file://localhost/... too)
    s3://bucket/key.png, memory://..., gcs://...   any other scheme, read through fsspec

Only what lies under a configured root is readable. Local paths are canonicalised with
`os.path.realpath` (which resolves `..` and every symlink) before the containment check, so
`root/../etc/passwd`, a symlink inside a root pointing out of it, and absolute paths elsewhere
all raise PermissionDenied. Remote URIs are normalised the same way (object stores have no
symlinks) and must share scheme and bucket/prefix with a remote root.
"""
from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence
from urllib.parse import unquote, urlsplit

import numpy as np

from segxal import imageio
from segxal.errors import InvalidInput, NotFound, PermissionDenied, ResourceExhausted

# Schemes that name the local filesystem; everything else goes through fsspec.
_LOCAL_SCHEMES = ("", "file", "local")


@dataclass
class StorageConfig:
    roots: list[str] = field(default_factory=list)  # local folders and/or fsspec URL prefixes
    # A 1024x2048 PNG frame is ~4 MB; anything far larger is not a frame and would only pin
    # memory in a long-running service.
    max_frame_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class Location:
    """Where a URI resolved to: a canonical local path, or an fsspec (protocol, path) pair."""

    uri: str  # as the caller wrote it (used in error messages)
    local_path: str | None = None  # absolute, symlink-free
    protocol: str | None = None  # fsspec protocol, e.g. "s3", "memory"
    remote_path: str | None = None  # normalised path for that protocol, e.g. "bucket/a/b.png"

    def __str__(self) -> str:
        return self.local_path if self.local_path is not None else f"{self.protocol}://{self.remote_path}"


def _split(uri: str) -> tuple[str, str]:
    """URI -> (scheme, path); local schemes come back as ('', absolute-or-relative local path)."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme in _LOCAL_SCHEMES:
        if scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise InvalidInput(f"{uri}: file:// URI names host {parts.netloc!r}; only local files")
            return "", unquote(parts.path)
        if scheme == "local":
            return "", unquote(parts.netloc + parts.path)
        return "", uri
    return scheme, (parts.netloc + parts.path).strip("/")


def _within(path: str, root: str, sep: str) -> bool:
    return path == root or path.startswith(root.rstrip(sep) + sep)


class FrameStorage:
    """Reads frames from the configured roots. Thread-safe; holds no per-frame state."""

    def __init__(self, cfg: StorageConfig | Sequence[str]):
        """Args:
            cfg: a StorageConfig, or just the list of roots.

        Raises:
            InvalidInput: no roots, or a local root that is not an existing folder.
        """
        if not isinstance(cfg, StorageConfig):
            cfg = StorageConfig(roots=list(cfg))
        if not cfg.roots:
            raise InvalidInput("frame storage needs at least one root (e.g. --storage-root DIR)")
        self.cfg = cfg
        self._local_roots: list[str] = []
        self._remote_roots: list[tuple[str, str]] = []  # (protocol, normalised path prefix)
        for root in cfg.roots:
            scheme, path = _split(root)
            if scheme:
                self._remote_roots.append((scheme, posixpath.normpath(path)))
                continue
            real = os.path.realpath(os.path.expanduser(path))
            if not os.path.isdir(real):
                raise InvalidInput(f"storage root {root}: not an existing folder")
            self._local_roots.append(real)

    @property
    def roots(self) -> list[str]:
        return list(self.cfg.roots)

    # -- resolution ---------------------------------------------------------------------------

    def resolve(self, uri: str) -> Location:
        """Canonical location of `uri`, checked against the roots (the file need not exist).

        Raises:
            InvalidInput: empty or malformed URI.
            PermissionDenied: the URI points outside every configured root (via `..`, a
                symlink, an absolute path elsewhere, or an unconfigured scheme/bucket).
        """
        if not uri or not uri.strip():
            raise InvalidInput("frame URI is empty")
        if "\x00" in uri:
            raise InvalidInput(f"{uri!r}: NUL byte in frame URI")
        scheme, path = _split(uri)
        if scheme:
            return self._resolve_remote(uri, scheme, path)
        return self._resolve_local(uri, path)

    def _resolve_local(self, uri: str, path: str) -> Location:
        if not self._local_roots:
            raise PermissionDenied(f"{uri}: local paths are not readable (no local storage root)")
        path = os.path.expanduser(path)
        if os.path.isabs(path):
            candidates = [os.path.realpath(path)]
        else:
            # A relative path is looked up under each root in order (a search path): the first
            # root where it exists wins; if none has it, the first root's answer is kept so a
            # missing file reports NotFound rather than PermissionDenied.
            candidates = [os.path.realpath(os.path.join(r, path)) for r in self._local_roots]
            existing = [c for c in candidates if os.path.exists(c)]
            candidates = existing[:1] + candidates
        real = candidates[0]
        if not any(_within(real, root, os.sep) for root in self._local_roots):
            raise PermissionDenied(f"{uri}: outside the storage roots")
        return Location(uri=uri, local_path=real)

    def _resolve_remote(self, uri: str, scheme: str, path: str) -> Location:
        norm = posixpath.normpath(path) if path else ""
        if norm.startswith("..") or "/../" in f"/{norm}/":
            raise PermissionDenied(f"{uri}: outside the storage roots")
        for protocol, prefix in self._remote_roots:
            if protocol == scheme and _within(norm, prefix, "/"):
                return Location(uri=uri, protocol=protocol, remote_path=norm)
        raise PermissionDenied(f"{uri}: outside the storage roots")

    # -- reading ------------------------------------------------------------------------------

    def read_bytes(self, uri: str) -> bytes:
        """The bytes of the frame at `uri`.

        Raises:
            InvalidInput: malformed URI, a folder, a non-regular file (FIFO, socket, device),
                or an unreadable file.
            PermissionDenied: outside the roots.
            NotFound: no such file.
            ResourceExhausted: larger than StorageConfig.max_frame_bytes.
        """
        loc = self.resolve(uri)
        if loc.local_path is not None:
            return self._read_local(loc)
        return self._read_remote(loc)

    def _read_local(self, loc: Location) -> bytes:
        # no_follow: the path was checked symlink-free; refuse a symlink swapped in since.
        # read_file checks the file type before reading (a FIFO must not stall a worker).
        return imageio.read_file(loc.local_path, where=loc.uri, max_bytes=self.cfg.max_frame_bytes,
                                 no_follow=True)

    def _read_remote(self, loc: Location) -> bytes:
        import fsspec  # imported here: local-only users never pay for it

        try:
            fs = fsspec.filesystem(loc.protocol)
        except (ValueError, ImportError) as e:
            raise InvalidInput(f"{loc.uri}: no filesystem for scheme {loc.protocol!r} ({e})") from None
        try:
            info = fs.info(loc.remote_path)
            if info.get("type") == "directory":
                raise InvalidInput(f"{loc.uri}: is a folder, expected an image file")
            self._check_size(loc, int(info.get("size") or 0))
            return fs.cat_file(loc.remote_path)
        except FileNotFoundError:
            raise NotFound(f"{loc.uri}: no such file") from None
        except PermissionError:
            raise InvalidInput(f"{loc.uri}: not readable (permission denied by the store)") from None

    def _check_size(self, loc: Location, size: int) -> None:
        if size > self.cfg.max_frame_bytes:
            raise ResourceExhausted(
                f"{loc.uri}: {size} bytes, larger than the {self.cfg.max_frame_bytes}-byte frame limit")

    def read_rgb(self, uri: str) -> np.ndarray:
        """Read and decode the frame at `uri` once: uint8 [H, W, 3].

        Raises:
            InvalidInput: not a decodable image (the message names the URI), plus read_bytes' errors.
        """
        return imageio.decode_image(self.read_bytes(uri), where=uri, mode="RGB")

    def exists(self, uri: str) -> bool:
        """True if `uri` is inside the roots and names an existing file."""
        loc = self.resolve(uri)
        if loc.local_path is not None:
            return os.path.isfile(loc.local_path)
        import fsspec

        return fsspec.filesystem(loc.protocol).isfile(loc.remote_path)


def local_uri(path: str | os.PathLike) -> str:
    """A file:// URI for a local path (absolute, percent-encoded)."""
    return Path(path).absolute().as_uri()
