"""Put together what a GPU machine without network needs to build and measure Hearth, in
`.gpu/` (ignored by git; the device tool carries it):

- `src.tar.gz`: llama-cpp-python's Python package and its vendored llama.cpp, without what
  a CUDA build of libllama and llama-server does not use (test models, docs, other GPU
  backends): ~10 MB instead of the 77 MB sdist;
- `sdist/`: the same, as an sdist, for checking there the wheel build `make install` runs;
- `standin.gguf.gz`: the chat model with every weight zeroed: the same architecture, shapes
  and quantization, so the same compute, and it compresses to almost nothing (a zero model's
  logits are all equal, so the benchmark ignores EOS, as it does anyway);
- `wheels/`: the Python packages Hearth's server needs that the machine's image lacks.

For the functional check (functional.py: every feature with the models on the GPU),
`--functional` adds what retrieval needs, too big for one call, so it travels in two:

- `minilm.gguf.gz` and `reference.json`: the embedding model and the CPU's results for it
  (carry with the build call);
- `retrieval.tar.xz`: LanceDB (abi3, so this machine's installed copy runs on the GPU
  machine's Python 3.12) and the other pure-Python packages retrieval needs, as installed
  here (~48 MB; carry with the functional call).

    python -m bench.gpu.prepare [--functional]     then run bench/gpu/run.sh there
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from bench.peer_build import unpacked_sdist
from bench.servers import ROOT, hearth_model_file
from server.model_files import resolve_embedding_model
from server.settings import load_settings

OUT = ROOT / ".gpu"
LLAMA_CPP_PYTHON = "0.3.36"
# What the image lacks, at the versions constraints.txt pins (Python 3.12, x86-64).
WHEELS = [
    "starlette==1.10.0",
    "sse-starlette==3.7.0",
    "uvicorn==0.54.0",
    "httptools==0.9.0",
    "pydantic==2.14.4",
    "pydantic_core==2.50.5",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "python-multipart==0.0.34",
    "diskcache==5.6.3",
    "sniffio==1.3.1",
]
PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
]
# What retrieval needs beyond the server's wheels, copied from this machine's installation.
RETRIEVAL_DISTRIBUTIONS = [
    "lancedb",
    "lance-namespace",
    "lance-namespace-urllib3-client",
    "deprecation",
    "packaging",
    "tqdm",
    "pypdf",
    "python-dateutil",
    "urllib3",
]
# Left out of the vendored llama.cpp: not built for a CUDA libllama and llama-server.
EXCLUDED = (
    "models",
    "docs",
    "benches",
    "tests",
    "examples",
    ".github",
    "ggml/src/ggml-sycl",
    "ggml/src/ggml-opencl",
    "ggml/src/ggml-hexagon",
    "ggml/src/ggml-vulkan",
)


def source_tarball(target: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = unpacked_sdist(LLAMA_CPP_PYTHON, Path(tmp))
        with tarfile.open(target, "w:gz") as out:
            out.add(root / "llama_cpp", "llama_cpp")

            def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
                inside = info.name.removeprefix("llama.cpp").lstrip("/")
                return None if inside.startswith(EXCLUDED) else info

            out.add(root / "vendor" / "llama.cpp", "llama.cpp", filter=keep)


def stripped_sdist(target_dir: Path) -> None:
    """llama-cpp-python's sdist without what the build leaves out (as above), still an
    sdist `pip wheel` builds: to check there the command `make install` runs."""
    with tempfile.TemporaryDirectory() as tmp:
        root = unpacked_sdist(LLAMA_CPP_PYTHON, Path(tmp))
        target_dir.mkdir(parents=True, exist_ok=True)
        name = root.name

        def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
            inside = info.name.removeprefix(name).lstrip("/")
            vendored = inside.removeprefix("vendor/llama.cpp").lstrip("/")
            if inside.startswith(("docs", "tests", "examples")) or "/.git" in f"/{inside}":
                return None
            if inside.startswith("vendor/llama.cpp/") and vendored.startswith(EXCLUDED):
                return None
            return info

        with tarfile.open(target_dir / f"{name}.tar.gz", "w:gz") as out:
            out.add(root, name, filter=keep)


def zero_weights(source: Path, target: Path) -> None:
    """A copy of a GGUF whose tensor data is all zeros, gzip-compressed."""
    import gguf

    reader = gguf.GGUFReader(source)
    ranges = sorted(
        (int(t.data_offset), int(t.data_offset) + int(t.n_bytes)) for t in reader.tensors
    )
    with source.open("rb") as f, gzip.open(target, "wb", compresslevel=6) as out:
        pos = 0
        for start, end in ranges:
            out.write(f.read(start - pos))
            out.write(bytes(end - start))
            f.seek(end)
            pos = end
        shutil.copyfileobj(f, out)


def wheels(target: Path) -> None:
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.12",
            "--implementation",
            "cp",
            *platforms,
            "-d",
            str(target),
            *WHEELS,
        ],
        check=True,
    )


def retrieval_site(target: Path) -> None:
    """The installed files of RETRIEVAL_DISTRIBUTIONS (packages and their dist-info), as a
    tree to put on PYTHONPATH."""
    partial = target.with_suffix(".partial")
    with tarfile.open(partial, "w:xz", preset=6) as out:
        for name in RETRIEVAL_DISTRIBUTIONS:
            dist = importlib.metadata.distribution(name)
            for file in dist.files or []:
                if file.parts[0] in ("..", "__pycache__") or file.suffix == ".pyc":
                    continue
                out.add(dist.locate_file(file), str(file), recursive=False)
    partial.rename(target)


def functional_parts(target: Path) -> None:
    from bench.gpu.functional import main as functional

    settings = load_settings()
    model = resolve_embedding_model(settings.embedding.path, settings.storage.resolved_data_dir())
    with model.open("rb") as f, gzip.open(target / "minilm.gguf.gz", "wb", compresslevel=6) as out:
        shutil.copyfileobj(f, out)
    standin = target / "standin.gguf"
    with gzip.open(target / "standin.gguf.gz", "rb") as f, standin.open("wb") as out:
        shutil.copyfileobj(f, out)
    # The CPU's vectors and rankings for the same GGUF, for the GPU run to compare with.
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["--chat", str(standin), "--embedding", str(model), "--out", tmp]
        functional([*argv, "--write-reference", str(target / "reference.json")])
    standin.unlink()
    if not (target / "retrieval.tar.xz").exists():
        retrieval_site(target / "retrieval.tar.xz")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu.prepare")
    p.add_argument("--functional", action="store_true", help="also what functional.py needs")
    args = p.parse_args(argv)
    OUT.mkdir(exist_ok=True)
    git_dir = subprocess.run(
        ["git", "rev-parse", "--git-dir"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    if git_dir:
        exclude = (ROOT / git_dir / "info" / "exclude").resolve()
        exclude.parent.mkdir(parents=True, exist_ok=True)
        if "/.gpu/" not in (exclude.read_text() if exclude.exists() else ""):
            with exclude.open("a") as f:
                f.write("/.gpu/\n")
    if not (OUT / "src.tar.gz").exists():
        source_tarball(OUT / "src.tar.gz")
    if not list((OUT / "sdist").glob("*.tar.gz")):
        stripped_sdist(OUT / "sdist")
    model = hearth_model_file()
    zero_weights(model, OUT / "standin.gguf.gz")
    (OUT / "standin.name").write_text(model.name + "\n")
    wheels(OUT / "wheels")
    if args.functional:
        functional_parts(OUT)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"{OUT}: {total / 2**20:.1f} MiB (stand-in for {model.name})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
