"""S3-compatible object storage for the shared retrieval state (issue 20): where the
endpoint, region and credentials come from, and how LanceDB and pyarrow are told them.

Settings win; what they leave empty comes from the standard AWS environment variables
(AWS_ENDPOINT_URL, AWS_REGION / AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), so a deployment that already sets them for
other tools needs nothing more.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

OBJECT_STORE_SCHEMES = ("s3",)


def is_object_store(uri: str) -> bool:
    """Whether a LanceDB URI names object storage (not a local directory)."""
    return "://" in uri and urlsplit(uri).scheme not in ("", "file")


@dataclass(frozen=True)
class S3Options:
    endpoint: str = ""
    region: str = ""
    access_key_id: str = ""
    secret_access_key: str = ""
    session_token: str = ""

    @classmethod
    def from_env(cls, **settings: str) -> S3Options:
        env = os.environ.get

        def pick(name: str, *variables: str) -> str:
            return settings.get(name) or next((env(v) for v in variables if env(v)), "") or ""

        return cls(
            endpoint=pick("endpoint", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
            region=pick("region", "AWS_REGION", "AWS_DEFAULT_REGION") or "us-east-1",
            access_key_id=pick("access_key_id", "AWS_ACCESS_KEY_ID"),
            secret_access_key=pick("secret_access_key", "AWS_SECRET_ACCESS_KEY"),
            session_token=pick("session_token", "AWS_SESSION_TOKEN"),
        )

    @property
    def _http(self) -> bool:
        return self.endpoint.startswith("http://")

    def lance_options(self) -> dict[str, str]:
        """LanceDB's `storage_options` (the Rust object_store crate's keys)."""
        out = {"aws_region": self.region}
        if self.endpoint:
            out["aws_endpoint"] = self.endpoint
            # S3-compatible servers (SeaweedFS, MinIO) are addressed by path, not by a
            # bucket subdomain.
            out["aws_virtual_hosted_style_request"] = "false"
        if self._http:
            out["allow_http"] = "true"
        if self.access_key_id:
            out["aws_access_key_id"] = self.access_key_id
            out["aws_secret_access_key"] = self.secret_access_key
        if self.session_token:
            out["aws_session_token"] = self.session_token
        return out

    def arrow_filesystem(self) -> Any:
        """A pyarrow S3FileSystem for the uploaded files' bytes."""
        from pyarrow import fs

        kwargs: dict[str, Any] = {"region": self.region}
        if self.endpoint:
            parts = urlsplit(self.endpoint)
            kwargs["endpoint_override"] = parts.netloc
            kwargs["scheme"] = parts.scheme or "https"
            kwargs["force_virtual_addressing"] = False
        if self.access_key_id:
            kwargs["access_key"] = self.access_key_id
            kwargs["secret_key"] = self.secret_access_key
            if self.session_token:
                kwargs["session_token"] = self.session_token
        return fs.S3FileSystem(**kwargs)


def bucket_path(uri: str, *parts: str) -> str:
    """`s3://bucket/prefix` and parts -> `bucket/prefix/part...` (pyarrow's path form)."""
    split = urlsplit(uri)
    if split.scheme not in OBJECT_STORE_SCHEMES:
        raise ValueError(
            f"object storage other than s3:// is not supported for uploaded files: {uri!r}"
        )
    base = f"{split.netloc}/{split.path.strip('/')}".rstrip("/")
    return "/".join([base, *parts])
