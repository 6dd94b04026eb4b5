"""Build llama.cpp's `llama-server` once, from the llama.cpp sources vendored in the
llama-cpp-python sdist Hearth pins, so the peer runs exactly the llama.cpp Hearth runs.

The build lives in the user's cache (`$XDG_CACHE_HOME/hearth/peers`, else
`~/.cache/hearth/peers`), beside pip's own cache, so a fresh clone (or CI) reuses it instead of
spending another ~6 minutes of two cores. It is linked statically, so the binary does not
depend on the build tree. `python -m bench.peer_build` builds it ahead of time.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hearth" / "peers"


def llama_server_path() -> Path:
    version = metadata.version("llama-cpp-python")
    return cache_dir() / f"llama.cpp-{version}" / "build" / "bin" / "llama-server"


def build_llama_server(quiet: bool = False) -> Path | None:
    """The llama-server binary, built first if missing; None (with the reason on stderr)
    when it cannot be built here."""
    binary = llama_server_path()
    if binary.exists():
        return binary
    if shutil.which("cmake") is None:
        print("llama-server: cmake is not installed", file=sys.stderr)
        return None
    cache_dir().mkdir(parents=True, exist_ok=True)
    # One build at a time, even across processes (two test workers, bench + test).
    with (cache_dir() / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.exists():
            return binary
        try:
            _build(binary.parent.parent.parent, quiet)
        except (subprocess.CalledProcessError, OSError, tarfile.TarError) as e:
            print(f"llama-server: build failed: {e}", file=sys.stderr)
            return None
    return binary if binary.exists() else None


def unpacked_sdist(version: str, directory: Path) -> Path:
    """llama-cpp-python's source distribution (its vendored llama.cpp included), downloaded
    and unpacked into directory; returns its root."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-binary",
            ":all:",
            "--no-deps",
            f"llama-cpp-python=={version}",
            "-d",
            str(directory),
        ],
        check=True,
    )
    (sdist,) = directory.glob("llama_cpp_python-*.tar.gz")
    with tarfile.open(sdist) as tar:
        tar.extractall(directory, filter="data")
    return directory / f"llama_cpp_python-{version}"


def _build(src: Path, quiet: bool) -> None:
    version = metadata.version("llama-cpp-python")
    out = subprocess.DEVNULL if quiet else None
    if not (src / "CMakeLists.txt").exists():
        with tempfile.TemporaryDirectory() as tmp:
            root = unpacked_sdist(version, Path(tmp))
            shutil.rmtree(src, ignore_errors=True)
            shutil.move(root / "vendor" / "llama.cpp", src)
    build = src / "build"
    subprocess.run(
        [
            "cmake",
            "-S",
            str(src),
            "-B",
            str(build),
            "-DCMAKE_BUILD_TYPE=Release",
            "-DBUILD_SHARED_LIBS=OFF",
            "-DLLAMA_CURL=OFF",
            "-DLLAMA_BUILD_SERVER=ON",
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=OFF",
        ],
        check=True,
        stdout=out,
    )
    subprocess.run(
        ["cmake", "--build", str(build), "--target", "llama-server", "-j", str(os.cpu_count())],
        check=True,
        stdout=out,
    )


if __name__ == "__main__":
    path = build_llama_server()
    print(path or "llama-server could not be built")
    raise SystemExit(0 if path else 1)
