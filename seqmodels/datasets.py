"""Dataset manifests (`data/*.yaml`) and a verified, resumable fetch.

A manifest names one data set: where each file comes from (a URL pinned to a commit or a
release), its checksum, size, licence, citation, and the layout under the data root that
recipes read (`data:crystals/mp20_mini.csv`). `seqmodels data list` shows every manifest
and what is present; `seqmodels data fetch NAME` downloads, resumes, verifies and unpacks.

Hand-written on the standard library (urllib, hashlib) rather than pooch or fsspec: the
fetch must resume with HTTP Range requests, verify git blob hashes (the pin GitHub files
carry) as well as sha256, and never replace a user's file with an unverified one; pooch
re-downloads whole files and knows no blob hashes.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .commands import CLIError
from .paths import REPO_ROOT, data_root

MANIFEST_DIR = REPO_ROOT / "data"
CHUNK = 1 << 16


class DataError(CLIError):
    """A manifest or a download that cannot be used; the message names the file (a CLIError:
    one line and exit code 2 from the command line)."""


@dataclass
class FileSpec:
    url: str
    path: str  # where the verified file (or its unpacked form) lands, under the data root
    sha256: str | None = None
    git_blob_sha1: str | None = None  # git's object id of the file: sha1("blob <size>\0" + bytes)
    size: int | None = None
    unpack: str | None = None  # None (copy), "gunzip", or "zip:<member>"

    @property
    def download_name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1].split("?")[0]


@dataclass
class Manifest:
    name: str
    title: str
    licence: str
    citation: str
    files: list[FileSpec]
    provides: list[str]  # paths under the data root that recipes read
    description: str = ""
    convert: str | None = None  # a named step run after all files are in place
    source: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _file_specs(raw: list, where: Path) -> list[FileSpec]:
    specs = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or "url" not in item or "path" not in item:
            raise DataError(f"{where}: files[{i}] needs `url` and `path`")
        if not item.get("sha256") and not item.get("git_blob_sha1"):
            raise DataError(f"{where}: files[{i}] ({item['path']}) has no checksum")
        unknown = set(item) - set(FileSpec.__dataclass_fields__)
        if unknown:
            raise DataError(f"{where}: files[{i}] has unknown keys {sorted(unknown)}")
        specs.append(FileSpec(**item))
    return specs


def load_manifest(path: str | Path) -> Manifest:
    """Read and check one manifest; errors name the file and the key."""
    import yaml  # here, not at the top: building the CLI parser imports this module

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise DataError(f"{path}: cannot read manifest: {err}") from err
    if not isinstance(raw, dict):
        raise DataError(f"{path}: a manifest is a mapping")
    missing = [k for k in ("name", "title", "licence", "citation", "provides") if k not in raw]
    if missing:
        raise DataError(f"{path}: missing keys {missing}")
    files = list(raw.get("files") or [])
    listing = raw.get("files_from")  # a TSV beside the manifest: url, path, sha256, size
    if listing:
        tsv = path.parent / listing
        try:
            lines = tsv.read_text(encoding="utf-8").splitlines()
        except OSError as err:
            raise DataError(f"{path}: files_from {tsv}: {err}") from err
        for n, line in enumerate(lines, 1):
            cols = line.split("\t")
            if len(cols) != 4:
                raise DataError(f"{tsv}:{n}: expected url, path, sha256, size")
            files.append({"url": cols[0], "path": cols[1], "sha256": cols[2], "size": int(cols[3])})
    if not files:
        raise DataError(f"{path}: no files (give `files` or `files_from`)")
    known = {"name", "title", "licence", "citation", "provides", "files", "files_from"}
    known |= {"description", "convert"}
    return Manifest(
        name=str(raw["name"]),
        title=str(raw["title"]),
        licence=str(raw["licence"]),
        citation=str(raw["citation"]),
        files=_file_specs(files, path),
        provides=[str(p) for p in raw["provides"]],
        description=str(raw.get("description", "")),
        convert=raw.get("convert"),
        source=path,
        extra={k: v for k, v in raw.items() if k not in known},
    )


def manifests(folder: str | Path | None = None) -> dict[str, Manifest]:
    """Every manifest in `folder` (default: the repository's data/), by name."""
    folder = Path(folder) if folder else MANIFEST_DIR
    out = {}
    for path in sorted(folder.glob("*.yaml")):
        m = load_manifest(path)
        if m.name in out:
            raise DataError(f"{path}: name {m.name!r} is also used by {out[m.name].source}")
        out[m.name] = m
    return out


def present(m: Manifest, root: Path | None) -> list[bool]:
    """For each path the manifest provides, whether it exists under `root`."""
    return [root is not None and (root / p).exists() for p in m.provides]


def fetch_hint(rel: str, folder: str | Path | None = None) -> str:
    """What to run when `rel` (a path under the data root) is missing."""
    try:
        found = manifests(folder)
    except DataError:
        found = {}
    for m in found.values():
        if any(rel == p or rel.startswith(p.rstrip("/") + "/") for p in m.provides):
            return f"run `seqmodels data fetch {m.name}` (or set SEQMODELS_DATA to a folder that has it)"
    return "set SEQMODELS_DATA to the folder that holds it (`seqmodels data list` shows the known sets)"


def require(rel: str) -> Path:
    """The path `rel` under the data root, or FileNotFoundError saying how to get it."""
    root = data_root()
    if root is not None and (root / rel).exists():
        return root / rel
    where = f"under {root}" if root else "(no data root: SEQMODELS_DATA is unset)"
    raise FileNotFoundError(f"data:{rel} not found {where}; {fetch_hint(rel)}")


# ---------------------------------------------------------------- checksums and downloads


def checksums(path: Path) -> tuple[str, str]:
    """(sha256, git blob sha1) of a file, in one read."""
    sha = hashlib.sha256()
    blob = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            sha.update(chunk)
            blob.update(chunk)
    return sha.hexdigest(), blob.hexdigest()


def verify(path: Path, spec: FileSpec) -> str | None:
    """None when `path` matches the spec's size and checksums, else why not."""
    size = path.stat().st_size
    if spec.size is not None and size != spec.size:
        return f"size {size} bytes, expected {spec.size}"
    sha, blob = checksums(path)
    if spec.sha256 and sha != spec.sha256.lower():
        return f"sha256 {sha}, expected {spec.sha256}"
    if spec.git_blob_sha1 and blob != spec.git_blob_sha1.lower():
        return f"git blob sha1 {blob}, expected {spec.git_blob_sha1}"
    return None


def download(url: str, part: Path, total: int | None = None, progress: bool = True) -> None:
    """Download `url` into `part`, resuming from its current size with a Range request.

    A server that ignores Range (200 instead of 206) restarts the file from byte 0.
    """
    have = part.stat().st_size if part.exists() else 0
    if total is not None and have == total:
        return
    req = urllib.request.Request(url, headers={"User-Agent": "seqmodels-data"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=60)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # asked past the end: the part is complete
            return
        raise DataError(f"{url}: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError) as err:
        raise DataError(f"{url}: {err}") from err
    with resp:
        if have and resp.status != 206:
            have = 0  # no resume support: start over
        length = resp.headers.get("Content-Length")
        expected = total if total is not None else (have + int(length) if length else None)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=expected, initial=have, unit="B", unit_scale=True, desc=part.name[:-5])
        try:
            with open(part, "ab" if have else "wb") as fh:
                while True:
                    try:
                        chunk = resp.read(CHUNK)
                    except OSError as err:  # connection cut: keep what arrived for a resume
                        raise DataError(f"{url}: interrupted ({err}); rerun to resume") from err
                    if not chunk:
                        break
                    fh.write(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
    got = part.stat().st_size
    if expected is not None and got < expected:
        raise DataError(f"{url}: interrupted at {got} of {expected} bytes; rerun to resume")


def _write_atomic(dest: Path, writer: Callable[[Path], None]) -> None:
    """Write through a temporary file beside `dest`, then rename: a crash leaves no half file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide data from other users
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _unpack(download: Path, spec: FileSpec, dest: Path) -> None:
    def write(tmp: Path) -> None:
        if spec.unpack is None:
            shutil.copyfile(download, tmp)
        elif spec.unpack == "gunzip":
            with gzip.open(download, "rb") as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out)
        elif spec.unpack.startswith("zip:"):
            member = spec.unpack[4:]
            with zipfile.ZipFile(download) as zf, zf.open(member) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out)
        else:
            raise DataError(f"{spec.path}: unknown unpack {spec.unpack!r}")

    _write_atomic(dest, write)


@dataclass
class FetchResult:
    name: str
    fetched: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already present and verified
    failed: dict[str, str] = field(default_factory=dict)  # path -> why


def fetch(m: Manifest, to: Path, progress: bool = True) -> FetchResult:
    """Download, verify and unpack every file of `m` under `to`; a failed file is reported
    and the rest go on. Verified downloads are kept in `to/.downloads/` (a rerun resumes or
    skips them); a user's existing file is replaced only by a verified one."""
    result = FetchResult(m.name)
    cache = to / ".downloads" / m.name
    cache.mkdir(parents=True, exist_ok=True)
    for spec in m.files:
        dest = to / spec.path
        if spec.unpack is None and dest.exists():
            why = verify(dest, spec)
            if why is None:
                result.skipped.append(spec.path)
            else:  # never overwrite a file the user has: they move it away first
                result.failed[spec.path] = f"{dest} exists and differs ({why}); left untouched"
            continue
        done = cache / spec.download_name
        part = done.with_name(done.name + ".part")
        try:
            if not done.exists():
                download(spec.url, part, spec.size, progress)
                why = verify(part, spec)
                if why is not None:
                    bad = part.with_name(done.name + ".corrupt")
                    os.replace(part, bad)
                    raise DataError(f"{spec.url}: checksum mismatch ({why}); kept as {bad}")
                os.replace(part, done)
            elif (why := verify(done, spec)) is not None:
                raise DataError(f"{done}: cached download no longer verifies ({why})")
            if dest.exists() and spec.unpack is not None:
                result.skipped.append(spec.path)
                continue
            _unpack(done, spec, dest)
            result.fetched.append(spec.path)
        except (DataError, OSError, zipfile.BadZipFile, KeyError) as err:
            result.failed[spec.path] = str(err)
    if m.convert and not result.failed and not all(present(m, to)):
        try:
            CONVERTERS[m.convert](to, m)
        except KeyError as err:
            result.failed[m.convert] = f"unknown convert step {m.convert!r}"
            raise DataError(f"{m.source}: unknown convert step {m.convert!r}") from err
    return result


# ---------------------------------------------------------------- conversions after download


def _mnist_npz(to: Path, m: Manifest) -> None:
    """mnist.pkl.gz (float32 pixel/256, train/val/test tuples) -> uint8 npz per split, read
    without pickle's code execution: only numpy arrays and tuples may be unpickled."""
    import pickle

    import numpy as np

    class OnlyArrays(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            allowed = {("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray")}
            allowed |= {("numpy", "dtype"), ("numpy._core.multiarray", "_reconstruct")}
            if (module, name) in allowed:
                return super().find_class(module, name)
            raise pickle.UnpicklingError(f"mnist.pkl.gz: refusing to load {module}.{name}")

    pkl = next(to / f.path for f in m.files if f.path.endswith(".pkl.gz"))
    with gzip.open(pkl, "rb") as fh:
        train, _val, test = OnlyArrays(fh, encoding="latin1").load()
    folder = pkl.parent
    for split, (x, y) in (("train", train), ("test", test)):
        images = np.rint(np.asarray(x) * 256).astype(np.uint8).reshape(-1, 28, 28)

        def write(tmp: Path, images=images, y=y) -> None:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, images=images, labels=np.asarray(y, dtype=np.uint8))

        _write_atomic(folder / f"mnist_{split}.npz", write)


def _png_stacks(to: Path, m: Manifest) -> None:
    """PNG sections -> multi-page TIFF stacks in numeric (physical z) order: the manifest's
    `stacks` maps each PNG folder to its stack (ISBI 2012 ships sections as 0.png ... 29.png)."""
    import numpy as np
    import tifffile
    from PIL import Image

    stacks = m.extra.get("stacks")
    if not isinstance(stacks, dict) or not stacks:
        raise DataError(f"{m.source}: convert png_stacks needs `stacks: {{png folder: tif}}`")
    for folder, out in stacks.items():
        pngs = sorted((to / folder).glob("*.png"), key=lambda p: int(p.stem))
        if not pngs:
            raise DataError(f"{m.source}: no PNG sections in {to / folder}")
        stack = np.stack([np.asarray(Image.open(p)) for p in pngs])
        _write_atomic(to / out, lambda tmp, s=stack: tifffile.imwrite(tmp, s, compression="zlib"))


CONVERTERS: dict[str, Callable[[Path, Manifest], None]] = {
    "mnist_npz": _mnist_npz,
    "png_stacks": _png_stacks,
}


# ---------------------------------------------------------------- the command


def _target(to: str | None) -> Path:
    if to:
        return Path(to)
    root = data_root()
    if root is None:
        raise DataError("no data root: pass --to DIR or set SEQMODELS_DATA")
    return root


def cmd_list(args: argparse.Namespace) -> dict:
    found = manifests(args.manifests)
    root = Path(args.root) if args.root else data_root()
    print(f"data root: {root if root else '(none: set SEQMODELS_DATA)'}")
    rows = []
    for m in found.values():
        have = present(m, root)
        size = sum(f.size or 0 for f in m.files)
        state = "present" if all(have) else ("partial" if any(have) else "missing")
        rows.append((m.name, state, f"{size / 1e6:.1f} MB", m.licence, m.title))
    widths = [
        max(len(r[i]) for r in rows + [("name", "state", "size", "licence", "")]) for i in range(4)
    ]
    print(
        "  ".join(h.ljust(w) for h, w in zip(("name", "state", "size", "licence"), widths))
        + "  title"
    )
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[4])
    return {"datasets": len(rows), "present": sum(r[1] == "present" for r in rows)}


def cmd_fetch(args: argparse.Namespace) -> dict:
    found = manifests(args.manifests)
    if args.name not in found:
        raise DataError(f"unknown data set {args.name!r}; known: {', '.join(sorted(found))}")
    m = found[args.name]
    to = _target(args.to)
    print(f"{m.name}: {m.title}\n  licence: {m.licence}\n  cite: {m.citation}")
    res = fetch(m, to, progress=not args.quiet)
    for path in res.fetched:
        print(f"  fetched  {to / path}")
    for path in res.skipped:
        print(f"  present  {to / path}")
    for path, why in res.failed.items():
        print(f"  FAILED   {path}: {why}", file=sys.stderr)
    if res.failed:
        raise DataError(f"{m.name}: {len(res.failed)} of {len(m.files)} files failed (see above)")
    return {"fetched": len(res.fetched), "present": len(res.skipped)}
