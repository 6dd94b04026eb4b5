"""The documents of the Debian-manuals evaluation set (questions.json beside this file).

Four manuals installed by Debian documentation packages (Debian 12), 668 pages in all:
the Debian Policy Manual (193 pages) and the Filesystem Hierarchy Standard 3.0 (50) from
debian-policy, the Developer's Reference (114) from developers-reference, and the gnuplot
5.4 manual (311) from gnuplot-doc. They are typeset by LaTeX and Sphinx (word gaps as
kerning, outlines, tables, code), unlike the generated PDFs of Hearth's own set. The
questions were written from their text as a user would ask: paraphrases, exact option
names and numbers, answers inside lists and tables.

`fetch(directory)` downloads the packages with `apt-get download` (no root needed),
unpacks them with dpkg-deb and leaves the four PDFs in the directory; it does nothing when
they are there already.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
QUESTIONS = HERE / "questions.json"
# file name in the set -> (package, path inside it)
DOCUMENTS = {
    "policy.pdf": ("debian-policy", "usr/share/doc/debian-policy/policy.pdf.gz"),
    "fhs-3.0.pdf": ("debian-policy", "usr/share/doc/debian-policy/fhs/fhs-3.0.pdf.gz"),
    "developers-reference.pdf": (
        "developers-reference",
        "usr/share/developers-reference/developers-reference.pdf",
    ),
    "gnuplot.pdf": ("gnuplot-doc", "usr/share/doc/gnuplot/gnuplot.pdf"),
}


class FetchError(RuntimeError):
    pass


def fetch(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    wanted = [directory / name for name in DOCUMENTS]
    if all(p.is_file() for p in wanted):
        return wanted
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise FetchError("the Debian-manuals set needs apt-get and dpkg-deb (a Debian system)")
    packages = sorted({package for package, _ in DOCUMENTS.values()})
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        r = subprocess.run(
            ["apt-get", "download", *packages], cwd=work, capture_output=True, text=True
        )
        if r.returncode != 0:
            raise FetchError(f"apt-get download failed: {r.stderr.strip()[-500:]}")
        for deb in work.glob("*.deb"):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(work / "root")], check=True)
        for name, (_, inside) in DOCUMENTS.items():
            source = work / "root" / inside
            if not source.is_file():
                raise FetchError(f"{inside} is not in the downloaded package")
            target = directory / name
            if source.suffix == ".gz":
                with gzip.open(source, "rb") as f, target.open("wb") as out:
                    shutil.copyfileobj(f, out)
            else:
                shutil.copyfile(source, target)
    return wanted


if __name__ == "__main__":
    import sys

    for path in fetch(Path(sys.argv[1] if len(sys.argv) > 1 else "debian-docs")):
        print(path)
