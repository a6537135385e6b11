"""The ``s3`` step (get, put, list, delete, copy, head) and the ``s3`` trigger's config.

The step talks to AWS S3 or any S3-compatible store (``endpoint_url``) through boto3, on
worker threads. Its result (``steps.<id>``):

* ``get``: ``{bucket, key, size, etag, content_type, last_modified, metadata, body}``,
  ``body`` read per ``format`` (see ``objects.py``); objects above ``max_bytes`` fail the
  event. With ``file:`` the object is streamed into that local file instead (ranged,
  parallel parts; written to a temporary name and renamed when complete), and the
  result has ``file`` and no ``body``.
* ``put``: ``{bucket, key, etag, size}``; the body is ``content`` (default the payload)
  written per ``format``, or the local ``file`` streamed up (multipart above
  ``part_size``).
* ``list``: ``{bucket, prefix, objects: [{key, size, etag, last_modified}], prefixes,
  count, truncated}``; at most ``max_keys`` objects (pages followed).
* ``delete``: ``{bucket, key, deleted: true}`` (S3 answers the same for a missing key).
* ``copy``: ``{bucket, key, source_bucket, source_key, etag}`` (CopyObject; a source above
  its 5 GiB limit is copied in parts); ``head``: ``get`` without the body.

With ``replace_payload: true`` the body (get) or the result (others) becomes the payload.
Failures: see ``aws.py`` (throttling and 5xx retriable; NoSuchKey, AccessDenied and
other 4xx answers dead-letter the event).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from streamflow.connectors.aws import (
    AwsSettings,
    aws_masker,
    s3_client,
    s3_failure,
    s3_fields,
)
from streamflow.connectors.connections import ConnectedStep, FieldsOf, fill_from_connection
from streamflow.connectors.connections import check_connection as _check
from streamflow.connectors.objects import (
    ObjectFields,
    ObjectStep,
    decode_body,
    encode_body,
    local_path,
)
from streamflow.envelope import Envelope
from streamflow.errors import PoisonMessageError
from streamflow.steps.base import Outcome, StepContext
from streamflow.topology.expressions import compile_value
from streamflow.topology.models import Duration, TriggerConfig
from streamflow.topology.registry import step_type, trigger_type

_KINDS = ("s3",)
_SETTINGS = ("endpoint_url", "region", "access_key_id", "secret_access_key", "session_token",
             "addressing_style")  # fmt: skip


class S3Config(ConnectedStep, AwsSettings, ObjectFields):
    """Get, put, list, delete, copy or head objects in AWS S3 or an S3-compatible store."""

    type: Literal["s3"]
    connection: str | None = Field(None, description="a `connections:` entry of type s3")
    operation: Literal["get", "put", "list", "delete", "copy", "head"] = "get"
    bucket: str = Field(description="a template, e.g. ${config.bucket}")
    key: str | None = Field(None, description="the object's key (a template); not for list")
    prefix: str = Field("", description="list: keys starting with this")
    delimiter: str | None = Field(None, description="list: e.g. / to group keys into prefixes")
    max_keys: int = Field(1000, ge=1, le=1_000_000, description="list: at most this many")
    content: Any = Field("${payload}", description="put: the body (without `file`)")
    content_type: str | None = Field(None, description="put: default from the format")
    metadata: dict[str, str] = Field(default_factory=dict, description="put: x-amz-meta-*")
    source_bucket: str | None = Field(None, description="copy: default: `bucket`")
    source_key: str | None = Field(None, description="copy: the object copied")
    part_size: int = Field(
        8 * 1024 * 1024, ge=5 * 1024 * 1024, description="multipart part size (bytes)"
    )
    timeout: Duration = Field(60.0, description="connect and read timeout per request")
    replace_payload: bool = Field(False, description="the body (get) or result is the payload")

    connection_kinds: ClassVar[tuple[str, ...]] = _KINDS

    @classmethod
    def connection_fields(cls, info: ValidationInfo) -> FieldsOf:
        return s3_fields

    @model_validator(mode="after")
    def _needs(self) -> S3Config:
        if self.operation != "list" and not self.key:
            raise ValueError(f"operation {self.operation} needs `key`")
        if self.operation == "copy" and not self.source_key:
            raise ValueError("operation copy needs `source_key`")
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("give both access_key_id and secret_access_key, or neither")
        return self


def iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def etag(value: Any) -> str | None:
    return str(value).strip('"') if value else None


@step_type(
    "s3",
    S3Config,
    category="storage",
    since="0.1.0",
    example="""- id: fetch
  type: s3
  region: eu-west-1              # or connection: <an s3 connection>
  access_key_id: ${config.aws_key_id}
  secret_access_key: ${config.aws_secret}
  operation: get
  bucket: ${trigger.bucket}
  key: ${payload.key}
  format: csv                    # body: a list of rows
  csv: {delimiter: ";"}
  max_bytes: 20000000            # larger objects: use `file:` to stream to disk""",
)
class S3Step(ObjectStep):
    cfg: S3Config

    def __init__(self, config: S3Config, ctx: StepContext) -> None:
        super().__init__(config, ctx, _SETTINGS)
        self.bucket = compile_value(config.bucket)
        self.key = compile_value(config.key)
        self.source_bucket = compile_value(config.source_bucket)
        self.source_key = compile_value(config.source_key)

    async def process(self, env: Envelope) -> Outcome:
        scope = self.ctx.scope(env)
        settings = self.settings.render(scope)
        masker = aws_masker(settings)
        bucket = str(self.bucket.render(scope) or "")
        if not bucket:
            raise PoisonMessageError("the bucket is empty")
        op = self.cfg.operation
        key = str(self.key.render(scope) or "") if op != "list" else ""
        if op != "list" and not key:
            raise PoisonMessageError("the key is empty")
        client = s3_client(self.ctx.resources, settings, self.cfg.timeout)
        what = f"s3 {op} s3://{bucket}/{key}"
        try:
            result = await asyncio.to_thread(self.run, client, op, bucket, key, scope)
        except Exception as exc:
            raise s3_failure(exc, what, masker) from None
        if not self.cfg.replace_payload:
            return Outcome(env.payload, result, note=op)
        return Outcome(result.get("body") if op == "get" else result, result, note=op)

    # -- on a worker thread --------------------------------------------------------

    def run(self, client: Any, op: str, bucket: str, key: str, scope: Mapping[str, Any]) -> Any:
        if op == "get":
            return self.get(client, bucket, key, scope)
        if op == "head":
            return self.head(client, bucket, key)
        if op == "put":
            return self.put(client, bucket, key, scope)
        if op == "list":
            return self.list(client, bucket, str(self.prefix.render(scope) or ""))
        if op == "delete":
            client.delete_object(Bucket=bucket, Key=key)
            return {"bucket": bucket, "key": key, "deleted": True}
        source_bucket = str(self.source_bucket.render(scope) or bucket)
        source_key = str(self.source_key.render(scope) or "")
        if not source_key:
            raise PoisonMessageError("the source key is empty")
        return self.copy(client, bucket, key, source_bucket, source_key)

    def copy(self, client: Any, bucket: str, key: str, src_bucket: str, src_key: str) -> Any:
        """One CopyObject; a source above its 5 GiB limit is copied in parts instead."""
        from botocore.exceptions import ClientError

        source = {"Bucket": src_bucket, "Key": src_key}
        try:
            done = client.copy_object(CopySource=source, Bucket=bucket, Key=key)
            tag = (done.get("CopyObjectResult") or {}).get("ETag")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "InvalidRequest":
                raise
            client.copy(source, bucket, key, Config=self.transfer())
            tag = client.head_object(Bucket=bucket, Key=key).get("ETag")
        return {"bucket": bucket, "key": key, "source_bucket": src_bucket,
                "source_key": src_key, "etag": etag(tag)}  # fmt: skip

    def transfer(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        size = self.cfg.part_size
        return TransferConfig(multipart_threshold=size, multipart_chunksize=size, max_concurrency=4)

    def facts(self, bucket: str, key: str, head: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "bucket": bucket,
            "key": key,
            "size": head.get("ContentLength"),
            "etag": etag(head.get("ETag")),
            "content_type": head.get("ContentType"),
            "last_modified": iso(head.get("LastModified")),
            "metadata": dict(head.get("Metadata") or {}),
        }

    def head(self, client: Any, bucket: str, key: str) -> dict[str, Any]:
        return self.facts(bucket, key, client.head_object(Bucket=bucket, Key=key))

    def get(self, client: Any, bucket: str, key: str, scope: Mapping[str, Any]) -> dict[str, Any]:
        cfg = self.cfg
        if cfg.file is not None:
            path = local_path(self.file.render(scope), self.local, scope)
            path.parent.mkdir(parents=True, exist_ok=True)
            head = client.head_object(Bucket=bucket, Key=key)
            client.download_file(bucket, key, str(path), Config=self.transfer())
            return {**self.facts(bucket, key, head), "file": str(path)}
        resp = client.get_object(Bucket=bucket, Key=key)
        size = int(resp.get("ContentLength") or 0)
        body = resp["Body"]
        try:
            if size > cfg.max_bytes:
                raise PoisonMessageError(
                    f"s3://{bucket}/{key} has {size} bytes, more than max_bytes={cfg.max_bytes} "
                    "(use `file:` to stream it to disk)"
                )
            data = body.read()
        finally:
            body.close()
        out = self.facts(bucket, key, resp)
        out["body"] = decode_body(
            data, key, cfg.format, str(resp.get("ContentType") or ""), cfg.encoding, cfg.csv
        )
        return out

    def put(self, client: Any, bucket: str, key: str, scope: Mapping[str, Any]) -> dict[str, Any]:
        cfg = self.cfg
        extra: dict[str, Any] = {}
        metadata = {str(k): str(v) for k, v in self.metadata.render(scope).items()}
        if metadata:
            extra["Metadata"] = metadata
        content_type = self.content_type.render(scope)
        if cfg.file is not None:
            path = local_path(self.file.render(scope), self.local, scope)
            if not path.is_file():
                raise PoisonMessageError(f"{path}: no such file")
            if content_type:
                extra["ContentType"] = str(content_type)
            client.upload_file(str(path), bucket, key, ExtraArgs=extra, Config=self.transfer())
            tag = client.head_object(Bucket=bucket, Key=key).get("ETag")
            return {"bucket": bucket, "key": key, "etag": etag(tag), "size": path.stat().st_size}
        data, default_type = encode_body(
            self.content.render(scope), key, cfg.format, cfg.encoding, cfg.csv
        )
        extra["ContentType"] = str(content_type or default_type)
        done = client.put_object(Bucket=bucket, Key=key, Body=data, **extra)
        return {"bucket": bucket, "key": key, "etag": etag(done.get("ETag")), "size": len(data)}

    def list(self, client: Any, bucket: str, prefix: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        if self.cfg.delimiter:
            kwargs["Delimiter"] = self.cfg.delimiter
        objects: list[dict[str, Any]] = []
        prefixes: list[str] = []
        truncated = False
        for page in client.get_paginator("list_objects_v2").paginate(**kwargs):
            prefixes.extend(p["Prefix"] for p in page.get("CommonPrefixes", []))
            for obj in page.get("Contents", []):
                if len(objects) >= self.cfg.max_keys:
                    truncated = True
                    break
                objects.append(object_facts(obj))
            if truncated:
                break
        return {"bucket": bucket, "prefix": prefix, "objects": objects, "prefixes": prefixes,
                "count": len(objects), "truncated": truncated}  # fmt: skip


def object_facts(obj: Mapping[str, Any]) -> dict[str, Any]:
    """One entry of a listing, as events and results show it."""
    return {
        "key": obj["Key"],
        "size": obj.get("Size"),
        "etag": etag(obj.get("ETag")),
        "last_modified": iso(obj.get("LastModified")),
    }


# --------------------------------------------------------------------------- trigger


@trigger_type(
    "s3",
    category="storage",
    since="0.1.0",
    example="""trigger:
  type: s3
  connection: store              # a connections: entry of type s3
  bucket: ${config.bucket}
  prefix: incoming/
  pattern: "*.csv"               # glob on the key after the prefix
  every: 30s""",
)
class S3Trigger(TriggerConfig, AwsSettings):
    """Poll an S3 prefix: each new object (or new version of a key) becomes one event, once across restarts and gateway processes."""  # noqa: E501

    type: Literal["s3"]
    connection: str | None = Field(None, description="a `connections:` entry of type s3")
    bucket: str = Field(description="${config.*} and ${env.*} only")
    prefix: str = Field("", description="only keys starting with this")
    pattern: str = Field("*", description="glob on the key after the prefix, e.g. *.csv")
    every: Duration = Field(30.0, description="time between listings")
    skip_existing: bool = Field(
        False, description="the first listing only records what exists, emitting nothing"
    )
    max_per_poll: int = Field(
        1000, ge=1, le=100_000, description="emit at most this many objects per listing"
    )
    timeout: Duration = Field(60.0, description="connect and read timeout per request")

    @model_validator(mode="before")
    @classmethod
    def _from_connection(cls, data: Any, info: ValidationInfo) -> Any:
        return fill_from_connection(data, info, _KINDS, s3_fields)

    @field_validator("connection")
    @classmethod
    def _connection_exists(cls, v: str | None, info: ValidationInfo) -> str | None:
        _check(v, info, _KINDS)
        return v

    @model_validator(mode="after")
    def _checks(self) -> S3Trigger:
        if self.every < 1:
            raise ValueError("`every` is at least 1s")
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("give both access_key_id and secret_access_key, or neither")
        return self
