"""segxal.storage: frames by URI, confined to the configured roots (no gRPC here)."""
from __future__ import annotations

import os

import fsspec
import numpy as np
import pytest

from segxal import imageio
from segxal.errors import InvalidInput, NotFound, PermissionDenied, ResourceExhausted
from segxal.storage import FrameStorage, StorageConfig, local_uri


@pytest.fixture
def tree(tmp_path):
    """root/ with a frame and a sub-folder, a secret beside the root, and a second root."""
    root = tmp_path / "root"
    (root / "city").mkdir(parents=True)
    img = np.random.default_rng(0).integers(0, 256, (8, 16, 3), dtype=np.uint8)
    imageio.write_png(root / "city" / "a.png", img)
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    secret = tmp_path / "secret.png"
    imageio.write_png(secret, img)
    other = tmp_path / "other"
    other.mkdir()
    imageio.write_png(other / "b.png", img[:4])
    return root, other, secret, img


def test_reads_local_path_file_uri_and_relative_path(tree):
    root, other, _, img = tree
    st = FrameStorage([str(root), str(other)])
    np.testing.assert_array_equal(st.read_rgb(str(root / "city" / "a.png")), img)
    np.testing.assert_array_equal(st.read_rgb(local_uri(root / "city" / "a.png")), img)
    np.testing.assert_array_equal(st.read_rgb("file://localhost" + str(root / "city" / "a.png")), img)
    np.testing.assert_array_equal(st.read_rgb("city/a.png"), img)
    # relative paths search the roots in order
    assert st.read_rgb("b.png").shape == (4, 16, 3)
    # `..` that stays inside a root is fine
    np.testing.assert_array_equal(st.read_rgb(str(root / "city" / ".." / "city" / "a.png")), img)


def test_file_uri_percent_decoding(tmp_path):
    (tmp_path / "with space").mkdir()
    imageio.write_png(tmp_path / "with space" / "x y.png", np.zeros((2, 2, 3), np.uint8))
    st = FrameStorage([str(tmp_path)])
    uri = local_uri(tmp_path / "with space" / "x y.png")
    assert "%20" in uri
    assert st.read_rgb(uri).shape == (2, 2, 3)


@pytest.mark.parametrize("how", ["dotdot", "dotdot_relative", "absolute_elsewhere", "file_uri_elsewhere",
                                 "symlink_out", "symlinked_dir_out", "root_prefix_sibling"])
def test_path_traversal_is_permission_denied(tree, how):
    root, _, secret, _ = tree
    st = FrameStorage([str(root)])
    if how == "dotdot":
        uri = str(root / ".." / "secret.png")
    elif how == "dotdot_relative":
        uri = "../secret.png"
    elif how == "absolute_elsewhere":
        uri = str(secret)
    elif how == "file_uri_elsewhere":
        uri = local_uri(secret)
    elif how == "symlink_out":
        os.symlink(secret, root / "link.png")
        uri = str(root / "link.png")
    elif how == "symlinked_dir_out":
        os.symlink(secret.parent, root / "up")
        uri = "up/secret.png"
    else:  # "/x/root2" must not count as inside "/x/root"
        sibling = root.parent / (root.name + "2")
        sibling.mkdir()
        imageio.write_png(sibling / "s.png", np.zeros((2, 2, 3), np.uint8))
        uri = str(sibling / "s.png")
    with pytest.raises(PermissionDenied, match="outside the storage roots"):
        st.read_bytes(uri)
    with pytest.raises(PermissionDenied):
        st.resolve(uri)


def test_symlink_inside_root_is_allowed(tree):
    root, _, _, img = tree
    os.symlink(root / "city" / "a.png", root / "alias.png")
    st = FrameStorage([str(root)])
    np.testing.assert_array_equal(st.read_rgb(str(root / "alias.png")), img)


def test_missing_folder_corrupt_and_too_large(tree):
    root, _, _, _ = tree
    st = FrameStorage(StorageConfig(roots=[str(root)], max_frame_bytes=10_000))
    with pytest.raises(NotFound, match="nope.png"):
        st.read_rgb("nope.png")
    with pytest.raises(InvalidInput, match="is a folder"):
        st.read_bytes("city")
    with pytest.raises(InvalidInput, match="corrupt.png.*not a readable image"):
        st.read_rgb("corrupt.png")
    (root / "big.png").write_bytes(b"\0" * 10_001)
    with pytest.raises(ResourceExhausted, match="big.png"):
        st.read_bytes("big.png")
    with pytest.raises(InvalidInput, match="empty"):
        st.read_bytes("")


def test_unconfigured_scheme_and_remote_host_refused(tree):
    root, _, _, _ = tree
    st = FrameStorage([str(root)])
    with pytest.raises(PermissionDenied):
        st.read_bytes("s3://bucket/a.png")
    with pytest.raises(InvalidInput, match="host"):
        st.read_bytes("file://otherhost/etc/passwd")


def test_bad_roots_refused(tmp_path):
    with pytest.raises(InvalidInput, match="at least one root"):
        FrameStorage([])
    with pytest.raises(InvalidInput, match="not an existing folder"):
        FrameStorage([str(tmp_path / "missing")])


def test_fsspec_memory_root():
    fs = fsspec.filesystem("memory")
    img = np.full((4, 6, 3), 7, np.uint8)
    fs.pipe_file("/frames/x/a.png", imageio.encode_png(img))
    fs.pipe_file("/private/b.png", imageio.encode_png(img))
    try:
        st = FrameStorage(["memory://frames"])
        np.testing.assert_array_equal(st.read_rgb("memory://frames/x/a.png"), img)
        with pytest.raises(PermissionDenied):
            st.read_bytes("memory://frames/../private/b.png")
        with pytest.raises(PermissionDenied):
            st.read_bytes("memory://private/b.png")
        with pytest.raises(NotFound):
            st.read_bytes("memory://frames/x/missing.png")
        with pytest.raises(PermissionDenied, match="no local storage root"):
            st.read_bytes("/etc/passwd")
    finally:
        fs.rm("/frames", recursive=True)
        fs.rm("/private", recursive=True)
