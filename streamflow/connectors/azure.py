"""The ``azure_blob`` step: get, put, list and delete blobs in Azure Blob Storage (or
Azurite) with azure-storage-blob's asyncio client; and the ``azure_blob`` connection.

Credentials: a ``connection_string``, or ``account_url`` with ``account_name`` +
``account_key`` (shared key) or a ``sas_token``. One client per distinct settings per App.
The SDK retries once itself (after about 1s); then the step's retry policy decides.

Results (``steps.<id>``):

* ``get``: ``{container, blob, size, etag, content_type, last_modified, metadata, body}``
  (``body`` per ``format``, see ``objects.py``; above ``max_bytes`` the event fails). With
  ``file:`` the blob is streamed into that local file (a temporary name, renamed when
  complete), and the result has ``file`` instead of ``body``.
* ``put``: ``{container, blob, etag, size}``; ``content`` (default the payload) written per
  ``format``, or the local ``file`` streamed up in blocks of ``part_size``. An existing
  blob is replaced unless ``overwrite: false`` (then it fails the event).
* ``list``: ``{container, prefix, blobs: [{name, size, etag, last_modified,
  content_type}], count, truncated}``; at most ``max_keys``.
* ``delete``: ``{container, blob, deleted}``; ``deleted`` is false when it was already gone
  (a retried execution is not an error).

Failures: 408, 429, 5xx and connection errors are retriable; a missing container or blob,
403 (authentication) and any other 4xx fail the event for good. Messages are masked.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import parse_qsl

from pydantic import Field, ValidationInfo, model_validator

from streamflow.connectors.aws import quiet_sdk_loggers
from streamflow.connectors.connections import ConnectedStep, FieldsOf
from streamflow.connectors.objects import (
    ObjectFields,
    ObjectStep,
    decode_body,
    encode_body,
    local_path,
)
from streamflow.envelope import Envelope
from streamflow.errors import PoisonMessageError, RetriableError, StreamFlowError
from streamflow.steps.base import Outcome, Resources, StepContext
from streamflow.topology.expressions import compile_value
from streamflow.topology.models import ConnectionConfig, Duration, Model, Secret, marked
from streamflow.topology.registry import (
    connection_type,
    step_type,
)
from streamflow.util.secrets import Masker

_SETTINGS = ("connection_string", "account_url", "account_name", "account_key", "sas_token")
_KINDS = ("azure_blob",)


class AzureSettings(Model):
    """Where a Blob Storage account is and how to authenticate to it."""

    connection_string: Annotated[str | None, Secret] = Field(
        None, description="DefaultEndpointsProtocol=...;AccountName=...;AccountKey=...;"
    )
    account_url: str | None = Field(
        None, description="e.g. https://<account>.blob.core.windows.net (with a key or SAS)"
    )
    account_name: str | None = Field(None, description="shared key: the account's name")
    account_key: Annotated[str | None, Secret] = Field(
        None, description="shared key: the account key"
    )
    sas_token: Annotated[str | None, Secret] = Field(
        None, description="a shared access signature (sv=...&sig=...)"
    )

    @model_validator(mode="after")
    def _one_way(self) -> Any:
        if self.connection_string is None and self.account_url is None:
            return self  # a step may get them from its connection; checked at run time
        if self.connection_string is not None and self.account_url is not None:
            raise ValueError("give connection_string or account_url, not both")
        if self.account_key is not None and self.account_name is None:
            raise ValueError("account_key needs account_name")
        return self


@connection_type("azure_blob", category="storage", since="0.1.0")
class AzureBlobConnection(ConnectionConfig, AzureSettings):
    """An Azure Blob Storage account (or Azurite): connection string, or URL with key or SAS; for `azure_blob` steps."""  # noqa: E501

    type: Literal["azure_blob"]
    timeout: Duration | None = Field(None, description="connect and read timeout (default 60s)")


def azure_fields(conn: ConnectionConfig) -> dict[str, Any]:
    assert isinstance(conn, AzureBlobConnection)
    return {**{k: getattr(conn, k) for k in _SETTINGS}, "timeout": conn.timeout}


class AzureBlobConfig(ConnectedStep, AzureSettings, ObjectFields):
    """Get, put, list or delete blobs in Azure Blob Storage (or Azurite)."""

    type: Literal["azure_blob"]
    connection: str | None = Field(None, description="a `connections:` entry of type azure_blob")
    operation: Literal["get", "put", "list", "delete"] = "get"
    container: str = Field(description="a template, e.g. ${config.container}")
    blob: str | None = Field(None, description="the blob's name (a template); not for list")
    prefix: str = Field("", description="list: names starting with this")
    max_keys: int = Field(1000, ge=1, le=1_000_000, description="list: at most this many")
    content: Any = Field("${payload}", description="put: the body (without `file`)")
    content_type: str | None = Field(None, description="put: default from the format")
    metadata: dict[str, str] = Field(default_factory=dict, description="put: blob metadata")
    overwrite: bool = Field(True, description="put: replace an existing blob")
    part_size: int = Field(
        4 * 1024 * 1024, ge=64 * 1024, le=100 * 1024 * 1024, description="block size (bytes)"
    )
    timeout: Duration = Field(60.0, description="connect and read timeout per request")
    replace_payload: bool = Field(False, description="the body (get) or result is the payload")

    connection_kinds: ClassVar[tuple[str, ...]] = _KINDS

    @classmethod
    def connection_fields(cls, info: ValidationInfo) -> FieldsOf:
        return azure_fields

    @model_validator(mode="after")
    def _needs(self) -> AzureBlobConfig:
        if self.operation != "list" and not self.blob:
            raise ValueError(f"operation {self.operation} needs `blob`")
        if self.connection_string is None and self.account_url is None:
            raise ValueError("needs `connection`, `connection_string` or `account_url`")
        return self


def azure_failure(exc: BaseException, what: str, masker: Masker) -> StreamFlowError:
    """The StreamFlow error for an exception of the Azure SDK raised while doing ``what``."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceExistsError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )

    if isinstance(exc, StreamFlowError):
        return exc
    if isinstance(exc, HttpResponseError):
        status = int(exc.status_code or 0)
        raw = getattr(exc, "error_code", None) or getattr(exc, "reason", "") or ""
        code = str(getattr(raw, "value", raw))
        first = str(exc.message or "").splitlines()[0] if exc.message else ""
        head = " ".join(str(x) for x in (status or "", code) if x)
        text = masker.mask(f"{what}: " + ": ".join(x for x in (head, first) if x))
        poison = (ResourceNotFoundError, ResourceExistsError, ClientAuthenticationError)
        if not isinstance(exc, poison) and (status in (408, 429) or status >= 500):
            return RetriableError(text)
        return PoisonMessageError(text)
    if isinstance(exc, ServiceRequestError | ServiceResponseError | OSError):
        return RetriableError(masker.mask(f"{what}: {exc.__class__.__name__}: {exc}"))
    if isinstance(exc, ValueError):
        return PoisonMessageError(masker.mask(f"{what}: {exc}"))
    return RetriableError(masker.mask(f"{what}: {exc.__class__.__name__}: {exc}"))


def azure_client(
    resources: Resources, settings: Mapping[str, Any], timeout: float, part_size: int
) -> Any:
    """The App's BlobServiceClient for these settings (created on first use)."""
    ident = "\x00".join(str(settings.get(k) or "") for k in _SETTINGS)
    digest = hashlib.sha256(f"{ident}\x00{timeout}\x00{part_size}".encode()).hexdigest()

    def create() -> Any:
        from azure.storage.blob.aio import BlobServiceClient, ExponentialRetry

        quiet_sdk_loggers("azure", level=logging.WARNING)  # INFO: every request, URL, headers

        options: dict[str, Any] = {
            # one quick retry (the SDK's default waits 15s first); then the step's policy
            "retry_policy": ExponentialRetry(initial_backoff=1, increment_base=1, retry_total=1),
            "connection_timeout": timeout,
            "read_timeout": timeout,
            "max_block_size": part_size,
            "max_single_put_size": part_size,
            "max_single_get_size": part_size,
            "max_chunk_get_size": part_size,
        }
        if settings.get("connection_string"):
            return BlobServiceClient.from_connection_string(
                str(settings["connection_string"]), **options
            )
        if not settings.get("account_url"):
            raise PoisonMessageError("azure_blob: no connection_string or account_url")
        credential: Any = None
        if settings.get("account_key"):
            credential = {
                "account_name": str(settings.get("account_name") or ""),
                "account_key": str(settings["account_key"]),
            }
        elif settings.get("sas_token"):
            credential = str(settings["sas_token"]).lstrip("?")
        return BlobServiceClient(str(settings["account_url"]), credential=credential, **options)

    async def close(client: Any) -> None:
        await client.close()

    return resources.get("azure-blob\x00" + digest, create, close)


def azure_masker(settings: Mapping[str, Any]) -> Masker:
    """The secrets of these settings, and their parts that a message may quote alone: the
    AccountKey and SharedAccessSignature of a connection string, the sig of a SAS."""
    masker = Masker(str(settings[k]) for k in marked(AzureSettings, Secret) if settings.get(k))
    for part in str(settings.get("connection_string") or "").split(";"):
        name, _, value = part.partition("=")
        if name.strip().lower() in ("accountkey", "sharedaccesssignature"):
            masker.add(value.strip())
            masker.add(*(v for k, v in parse_qsl(value.strip().lstrip("?")) if k == "sig"))
    sas = str(settings.get("sas_token") or "").lstrip("?")
    masker.add(*(v for k, v in parse_qsl(sas) if k == "sig"))
    return masker


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _facts(container: str, name: str, props: Any) -> dict[str, Any]:
    settings = getattr(props, "content_settings", None)
    return {
        "container": container,
        "blob": name,
        "size": getattr(props, "size", None),
        "etag": str(getattr(props, "etag", "") or "").strip('"') or None,
        "content_type": getattr(settings, "content_type", None),
        "last_modified": _iso(getattr(props, "last_modified", None)),
        "metadata": dict(getattr(props, "metadata", None) or {}),
    }


@step_type(
    "azure_blob",
    AzureBlobConfig,
    category="storage",
    since="0.1.0",
    example="""- id: archive
  type: azure_blob
  connection_string: ${config.lake_connection_string}   # or connection: <name>
  operation: put
  container: exports
  blob: orders/${payload.id}.json
  content: ${payload}
  metadata: {source: streamflow}""",
)
class AzureBlobStep(ObjectStep):
    cfg: AzureBlobConfig

    def __init__(self, config: AzureBlobConfig, ctx: StepContext) -> None:
        super().__init__(config, ctx, _SETTINGS)
        self.container = compile_value(config.container)
        self.blob = compile_value(config.blob)

    async def process(self, env: Envelope) -> Outcome:
        scope = self.ctx.scope(env)
        settings = self.settings.render(scope)
        masker = azure_masker(settings)
        container = str(self.container.render(scope) or "")
        op = self.cfg.operation
        name = str(self.blob.render(scope) or "") if op != "list" else ""
        if not container or (op != "list" and not name):
            raise PoisonMessageError("the container or blob name is empty")
        if "/" in container or "." in container or {".", ".."} & set(name.split("/")):
            # URLs collapse ./.. segments: `../other/x` would address another container's blob
            raise PoisonMessageError(
                f"{container}/{name[:200]} has a '.' or '..' path segment "
                "(or a container name with '/' or '.'): it would address another place"
            )
        what = f"azure_blob {op} {container}/{name}"
        try:
            client = azure_client(
                self.ctx.resources, settings, self.cfg.timeout, self.cfg.part_size
            )
            result = await self.run(client, op, container, name, scope)
        except Exception as exc:
            raise azure_failure(exc, what, masker) from None
        if not self.cfg.replace_payload:
            return Outcome(env.payload, result, note=op)
        return Outcome(result.get("body") if op == "get" else result, result, note=op)

    async def run(
        self, client: Any, op: str, container: str, name: str, scope: Mapping[str, Any]
    ) -> dict[str, Any]:
        if op == "list":
            return await self.list(client, container, str(self.prefix.render(scope) or ""))
        blob = client.get_blob_client(container, name)
        if op == "get":
            return await self.get(blob, container, name, scope)
        if op == "put":
            return await self.put(blob, container, name, scope)
        from azure.core.exceptions import ResourceNotFoundError

        try:
            await blob.delete_blob()
        except ResourceNotFoundError as exc:
            if getattr(exc, "error_code", None) == "ContainerNotFound":
                raise
            return {"container": container, "blob": name, "deleted": False}
        return {"container": container, "blob": name, "deleted": True}

    async def get(
        self, blob: Any, container: str, name: str, scope: Mapping[str, Any]
    ) -> dict[str, Any]:
        cfg = self.cfg
        props = await blob.get_blob_properties()
        facts = _facts(container, name, props)
        if cfg.file is not None:
            path = local_path(self.file.render(scope), self.local, scope)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as fh:
                    downloader = await blob.download_blob(etag=props.etag, match_condition=_same())
                    await downloader.readinto(fh)
                os.replace(tmp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            return {**facts, "file": str(path)}
        if int(props.size or 0) > cfg.max_bytes:
            raise PoisonMessageError(
                f"{container}/{name} has {props.size} bytes, more than max_bytes="
                f"{cfg.max_bytes} (use `file:` to stream it to disk)"
            )
        data = await (await blob.download_blob()).readall()
        facts["body"] = decode_body(
            data, name, cfg.format, str(facts["content_type"] or ""), cfg.encoding, cfg.csv
        )
        return facts

    async def put(
        self, blob: Any, container: str, name: str, scope: Mapping[str, Any]
    ) -> dict[str, Any]:
        from azure.storage.blob import ContentSettings

        cfg = self.cfg
        metadata = {str(k): str(v) for k, v in self.metadata.render(scope).items()} or None
        content_type = self.content_type.render(scope)
        if cfg.file is not None:
            path: Path = local_path(self.file.render(scope), self.local, scope)
            if not path.is_file():
                raise PoisonMessageError(f"{path}: no such file")
            size = path.stat().st_size
            settings = ContentSettings(content_type=str(content_type)) if content_type else None
            with path.open("rb") as fh:
                done = await blob.upload_blob(
                    fh, length=size, overwrite=cfg.overwrite, metadata=metadata,
                    content_settings=settings, max_concurrency=4,
                )  # fmt: skip
        else:
            data, default_type = encode_body(
                self.content.render(scope), name, cfg.format, cfg.encoding, cfg.csv
            )
            size = len(data)
            done = await blob.upload_blob(
                data, overwrite=cfg.overwrite, metadata=metadata,
                content_settings=ContentSettings(content_type=str(content_type or default_type)),
            )  # fmt: skip
        etag = str(done.get("etag") or "").strip('"') or None
        return {"container": container, "blob": name, "etag": etag, "size": size}

    async def list(self, client: Any, container: str, prefix: str) -> dict[str, Any]:
        blobs: list[dict[str, Any]] = []
        truncated = False
        async for item in client.get_container_client(container).list_blobs(
            name_starts_with=prefix or None
        ):
            if len(blobs) >= self.cfg.max_keys:
                truncated = True
                break
            facts = _facts(container, item.name, item)
            blobs.append({"name": item.name, **{k: facts[k] for k in
                          ("size", "etag", "last_modified", "content_type")}})  # fmt: skip
        return {"container": container, "prefix": prefix, "blobs": blobs,
                "count": len(blobs), "truncated": truncated}  # fmt: skip


def _same() -> Any:
    from azure.core import MatchConditions

    return MatchConditions.IfNotModified
