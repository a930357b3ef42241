"""Typed client of the splitter service (``tuneline.splitter.v1.SplitterService``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from shared.names import DATASET, SPLIT_POLICY
from tuneline.client.base import DEFAULT_PAGE_SIZE, ServiceClient
from tuneline.client.names import id_of
from tuneline.splitter.v1 import resources_pb2, service_pb2, service_pb2_grpc

#: Splitting reads the whole version and writes its manifest: allow it more than a lookup.
CREATE_SPLIT_TIMEOUT_SECONDS = 300.0


class SplitterClient(ServiceClient):
    """Create, read and list splits; read and set a dataset's split policy.

    >>> with SplitterClient("127.0.0.1:50052") as splitter:
    ...     split, created = splitter.create_split("datasets/reviews/versions/v1")
    """

    service = service_pb2.DESCRIPTOR.services_by_name["SplitterService"]

    def __init__(self, target: str | None = None, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self._stub = service_pb2_grpc.SplitterServiceStub(self.channel)

    def create_split(
        self,
        dataset_version: str,
        spec: resources_pb2.SplitSpec | None = None,
        *,
        timeout: float = CREATE_SPLIT_TIMEOUT_SECONDS,
    ) -> tuple[resources_pb2.Split, bool]:
        """Split ``dataset_version`` (``datasets/{d}/versions/{v}``) with ``spec``, or with the
        dataset's policy when ``spec`` is None. Returns the split and whether this call made it
        (False: the same version and spec had been split already)."""
        request = service_pb2.CreateSplitRequest(parent=dataset_version)
        if spec is not None:
            request.spec.CopyFrom(spec)
        response = self._call(self._stub.CreateSplit, request, timeout=timeout)
        return response.split, response.created

    def get_split(self, name: str) -> resources_pb2.Split:
        """The split ``datasets/{d}/versions/{v}/splits/{s}``."""
        request = service_pb2.GetSplitRequest(name=name)
        return self._call(self._stub.GetSplit, request).split

    def list_splits(
        self, parent: str, *, page_size: int = DEFAULT_PAGE_SIZE
    ) -> Iterator[resources_pb2.Split]:
        """Every split of ``parent`` (``datasets/{d}/versions/{v}``, or ``…/versions/-`` for
        all versions of a dataset), newest first, fetched page by page."""
        request = service_pb2.ListSplitsRequest(parent=parent)
        return self._paginate(self._stub.ListSplits, request, "splits", page_size=page_size)

    def set_split_policy(
        self,
        dataset: str,
        spec: resources_pb2.SplitSpec | None = None,
        *,
        auto_split_disabled: bool = False,
        request_id: str = "",
    ) -> resources_pb2.SplitPolicy:
        """Create or replace the split policy of ``dataset`` (``datasets/{d}``); returns it with
        its defaults resolved. A retry with the same ``request_id`` (one is generated when
        empty) changes nothing twice."""
        policy = resources_pb2.SplitPolicy(
            name=SPLIT_POLICY.format(dataset=id_of(DATASET, dataset)),
            auto_split_disabled=auto_split_disabled,
        )
        if spec is not None:
            policy.spec.CopyFrom(spec)
        request = service_pb2.SetSplitPolicyRequest(split_policy=policy, request_id=request_id)
        return self._call(self._stub.SetSplitPolicy, request).split_policy

    def get_split_policy(self, dataset: str) -> resources_pb2.SplitPolicy:
        """The split policy of ``dataset`` (``datasets/{d}``), or the defaults if none was set."""
        request = service_pb2.GetSplitPolicyRequest(
            name=SPLIT_POLICY.format(dataset=id_of(DATASET, dataset))
        )
        return self._call(self._stub.GetSplitPolicy, request).split_policy
