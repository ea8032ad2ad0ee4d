"""S3 object store through the ``minio`` SDK (MinIO, Ceph RGW, AWS S3)."""

from __future__ import annotations

import io

import urllib3
from minio import Minio
from minio.error import S3Error

from pacs.errors import StorageError

_MISSING = {"NoSuchKey", "NoSuchObject", "NoSuchBucket"}


class S3Store:
    """Objects in one bucket under an optional key prefix.

    An S3 PUT is atomic and durable once acknowledged, so ``put`` needs no temporary object.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str,
        endpoint: str,
        access_key: str,
        secret_key: str,
        secure: bool = False,
        region: str | None = None,
        create_bucket: bool = True,
    ) -> None:
        if not bucket:
            raise ValueError("s3 storage URL needs a bucket: s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        http = urllib3.PoolManager(
            maxsize=32,
            timeout=urllib3.Timeout(connect=10, read=120),
            retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503]),
        )
        self.client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=http,
        )
        if create_bucket:
            try:
                if not self.client.bucket_exists(bucket):
                    self.client.make_bucket(bucket)
            except S3Error as exc:
                if exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                    raise StorageError(f"cannot open bucket {bucket}: {exc}") from exc
            except Exception as exc:
                raise StorageError(f"cannot reach S3 endpoint {endpoint}: {exc}") from exc

    def _name(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"object key escapes the prefix: {key!r}")
        return self.prefix + key

    def put(self, key: str, data: bytes) -> None:
        name = self._name(key)  # a bad key is the caller's ValueError, not a StorageError
        try:
            self.client.put_object(
                self.bucket,
                name,
                io.BytesIO(data),
                length=len(data),
                content_type="application/dicom",
            )
        except Exception as exc:
            raise StorageError(f"cannot write object {key}: {exc}") from exc

    def get(self, key: str) -> bytes:
        return self._read(key)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        # one ranged GET (HTTP Range: bytes=offset-(offset+length-1))
        return self._read(key, offset=offset, length=length)

    def _read(self, key: str, offset: int = 0, length: int = 0) -> bytes:
        response = None
        try:
            response = self.client.get_object(
                self.bucket, self._name(key), offset=offset, length=length
            )
            return response.read()
        except S3Error as exc:
            if exc.code in _MISSING:
                raise KeyError(key) from None
            raise StorageError(f"cannot read object {key}: {exc}") from exc
        finally:
            if response is not None:
                response.close()
                response.release_conn()

    def exists(self, key: str) -> bool:
        try:
            self.client.stat_object(self.bucket, self._name(key))
        except S3Error as exc:
            if exc.code in _MISSING or exc.code == "NoSuchKey":
                return False
            raise StorageError(f"cannot stat object {key}: {exc}") from exc
        return True

    def delete(self, key: str) -> None:
        try:
            self.client.remove_object(self.bucket, self._name(key))
        except S3Error as exc:
            if exc.code not in _MISSING:
                raise StorageError(f"cannot delete object {key}: {exc}") from exc

    def check(self) -> None:
        try:
            if not self.client.bucket_exists(self.bucket):
                raise StorageError(f"bucket {self.bucket} does not exist")
        except S3Error as exc:
            raise StorageError(f"S3 endpoint check failed: {exc}") from exc
