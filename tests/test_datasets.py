"""`seqmodels data`: manifests, resumable verified downloads over real HTTP on 127.0.0.1."""

from __future__ import annotations

import gzip
import hashlib
import io
import subprocess
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from seqmodels import datasets
from seqmodels.paths import data_root as _data_root


@pytest.fixture
def data_root() -> Path:
    root = _data_root()
    if root is None:
        pytest.skip("no shared data (../shared/data or SEQMODELS_DATA) on this machine")
    return root


class _Server:
    """Serves `files` {name: bytes}; honours `Range: bytes=N-`; can cut the first reply short."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.cut_after: int | None = None  # bytes sent before the connection drops (once)
        self.ranges: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                body = outer.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                rng = self.headers.get("Range")
                outer.ranges.append(rng)
                start = int(rng.split("=")[1].rstrip("-")) if rng else 0
                self.send_response(206 if rng else 200)
                self.send_header("Content-Length", str(len(body) - start))
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                chunk = body[start:]
                if outer.cut_after is not None:
                    chunk, outer.cut_after = chunk[: outer.cut_after], None
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    self.connection.shutdown(2)  # the client sees a short read
                    return
                self.wfile.write(chunk)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _manifest(folder: Path, name: str, files: list[dict], **extra) -> Path:
    doc = {
        "name": name,
        "title": f"test set {name}",
        "licence": "CC0",
        "citation": "nobody",
        "provides": extra.pop("provides", [f["path"] for f in files]),
        "files": files,
        **extra,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


BIG = bytes(range(256)) * 4096  # 1 MiB: several read chunks


def test_interrupted_download_resumes_with_range_and_verifies(tmp_path):
    with _Server({"big.bin": BIG}) as srv:
        man = _manifest(
            tmp_path,
            "big",
            [
                {
                    "url": f"{srv.url}/big.bin",
                    "path": "x/big.bin",
                    "sha256": _sha(BIG),
                    "size": len(BIG),
                }
            ],
        )
        m = datasets.load_manifest(man)
        srv.cut_after = 300_000
        first = datasets.fetch(m, tmp_path / "root", progress=False)
        assert "x/big.bin" in first.failed and "interrupted" in first.failed["x/big.bin"]
        part = tmp_path / "root/.downloads/big/big.bin.part"
        assert 0 < part.stat().st_size < len(BIG)
        have = part.stat().st_size
        second = datasets.fetch(m, tmp_path / "root", progress=False)
        assert second.failed == {} and second.fetched == ["x/big.bin"]
        assert srv.ranges[-1] == f"bytes={have}-"  # resumed, not restarted
        assert (tmp_path / "root/x/big.bin").read_bytes() == BIG
        third = datasets.fetch(m, tmp_path / "root", progress=False)
        assert third.skipped == ["x/big.bin"] and len(srv.ranges) == 2  # nothing downloaded


def test_checksum_mismatch_names_the_file_and_keeps_what_the_user_had(tmp_path):
    good, evil = b"the real file\n" * 100, b"something else\n" * 100
    with _Server({"a.txt": evil, "b.txt": good}) as srv:
        man = _manifest(
            tmp_path,
            "two",
            [
                {"url": f"{srv.url}/a.txt", "path": "a.txt", "sha256": _sha(good)},
                {"url": f"{srv.url}/b.txt", "path": "b.txt", "sha256": _sha(good)},
            ],
        )
        root = tmp_path / "root"
        root.mkdir()
        (root / "a.txt").write_bytes(b"my own edits")  # the user's file, not upstream's
        res = datasets.fetch(datasets.load_manifest(man), root, progress=False)
        assert "left untouched" in res.failed["a.txt"]
        assert (root / "a.txt").read_bytes() == b"my own edits"
        assert res.fetched == ["b.txt"]  # the batch went on
        (root / "a.txt").unlink()
        res = datasets.fetch(datasets.load_manifest(man), root, progress=False)
        assert "checksum mismatch" in res.failed["a.txt"] and "a.txt" in res.failed["a.txt"]
        assert not (root / "a.txt").exists()  # an unverified download never lands
        assert (root / ".downloads/two/a.txt.corrupt").read_bytes() == evil


def test_git_blob_checksum_gunzip_and_zip_members(tmp_path):
    text = b"id,seq\n1,ACGT\n"
    blob = hashlib.sha1(f"blob {len(text)}\0".encode() + text).hexdigest()
    gz = gzip.compress(text)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("pkg/data/inner.csv", text)
    with _Server({"t.csv": text, "t.csv.gz": gz, "w.zip": buf.getvalue()}) as srv:
        man = _manifest(
            tmp_path,
            "forms",
            [
                {"url": f"{srv.url}/t.csv", "path": "plain.csv", "git_blob_sha1": blob},
                {
                    "url": f"{srv.url}/t.csv.gz",
                    "path": "gz.csv",
                    "sha256": _sha(gz),
                    "unpack": "gunzip",
                },
                {
                    "url": f"{srv.url}/w.zip",
                    "path": "zip.csv",
                    "sha256": _sha(buf.getvalue()),
                    "unpack": "zip:pkg/data/inner.csv",
                },
            ],
        )
        res = datasets.fetch(datasets.load_manifest(man), tmp_path / "r", progress=False)
    assert res.failed == {}
    for name in ("plain.csv", "gz.csv", "zip.csv"):
        assert (tmp_path / "r" / name).read_bytes() == text


def test_bad_manifests_name_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "title": "t", "licence": "l", "citation": "c"}))
    with pytest.raises(datasets.DataError, match=r"bad\.yaml.*provides"):
        datasets.load_manifest(bad)
    _manifest(tmp_path, "nosum", [{"url": "http://127.0.0.1/x", "path": "x"}])
    with pytest.raises(datasets.DataError, match=r"nosum\.yaml.*no checksum"):
        datasets.load_manifest(tmp_path / "nosum.yaml")


def test_shipped_manifests_load_and_match_the_shared_copies(data_root):
    """Every manifest in data/ parses; where ../shared has a file, its bytes match."""
    found = datasets.manifests()
    assert {"mp20", "mp20_mini", "perov5", "carbon24", "isbi2012", "mnist"} <= set(found)
    assert {"modelnet10_pcd", "modelnet10_voxels", "promoters", "gb_coordinates"} <= set(found)
    checked = 0
    for m in found.values():
        for spec in m.files[:3]:
            local = data_root / spec.path
            if spec.unpack is None and local.is_file():
                assert datasets.verify(local, spec) is None, spec.path
                checked += 1
    assert checked >= 10


def test_missing_data_says_which_fetch_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQMODELS_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"seqmodels data fetch mp20_mini"):
        datasets.require("crystals/mp20_mini.csv")
    with pytest.raises(FileNotFoundError, match=r"seqmodels data fetch modelnet10_pcd"):
        datasets.require("points/modelnet10_pcd/chair_train/chair_0001.pcd")


def test_cli_list_and_fetch_exit_codes(tmp_path):
    body = b"hello\n"
    with _Server({"h.txt": body}) as srv:
        _manifest(
            tmp_path, "hello", [{"url": f"{srv.url}/h.txt", "path": "h.txt", "sha256": _sha(body)}]
        )
        _manifest(
            tmp_path, "wrong", [{"url": f"{srv.url}/h.txt", "path": "w.txt", "sha256": "0" * 64}]
        )
        run = [sys.executable, "-m", "seqmodels", "data"]
        ok = subprocess.run(
            [*run, "fetch", "hello", "--to", str(tmp_path / "r"), "--manifests", str(tmp_path)],
            capture_output=True,
            text=True,
        )
        assert ok.returncode == 0, ok.stderr
        assert (tmp_path / "r/h.txt").read_bytes() == body
        bad = subprocess.run(
            [*run, "fetch", "wrong", "--to", str(tmp_path / "r"), "--manifests", str(tmp_path)],
            capture_output=True,
            text=True,
        )
        assert bad.returncode != 0 and "w.txt" in bad.stderr and "checksum mismatch" in bad.stderr
        listed = subprocess.run(
            [*run, "list", "--root", str(tmp_path / "r"), "--manifests", str(tmp_path)],
            capture_output=True,
            text=True,
        )
    assert listed.returncode == 0
    rows = {line.split()[0]: line.split()[1] for line in listed.stdout.splitlines()[2:]}
    assert rows == {"hello": "present", "wrong": "missing"}
