"""The typed Python client SDK: one class per service over the generated stubs.

Deadlines and retries are built in (``shared.grpc.create_channel``), ``List`` methods are
iterators over every page, and errors are :class:`~tuneline.client.errors.TunelineError`
subclasses carrying the gRPC status details. The CLI and the services themselves (e.g. the
evaluator asking the registry for production) use these classes; nobody else builds stubs.

One surface for all six clients:

* methods are the RPCs in snake case (``PromoteCheckpoint`` → ``promote_checkpoint``), plus
  ``wait(name, timeout=…)`` on the clients whose resource ends in a terminal state (training
  jobs, evaluations, dataset audits);
* resources are named in full (``datasets/{d}``, ``models/{m}/checkpoints/{c}``); a bare id is
  taken only where the RPC takes one (``create_dataset(dataset_id, …)``);
* every ``list_*`` is an iterator over all pages, asking for :data:`DEFAULT_PAGE_SIZE` items a
  page unless given ``page_size``.

>>> from tuneline.client import TrainerClient
>>> with TrainerClient("127.0.0.1:50053") as trainer:
...     job = trainer.wait("trainingJobs/j-1", timeout=3600)
"""

from tuneline.client.base import DEFAULT_PAGE_SIZE, ServiceClient
from tuneline.client.dataset import DatasetClient
from tuneline.client.errors import (
    AbortedError,
    AlreadyExistsError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    TunelineError,
    UnavailableError,
)
from tuneline.client.evaluator import EvaluatorClient
from tuneline.client.registry import RegistryClient
from tuneline.client.serving import ServingClient
from tuneline.client.splitter import SplitterClient
from tuneline.client.trainer import TrainerClient

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "AbortedError",
    "AlreadyExistsError",
    "DatasetClient",
    "DeadlineExceededError",
    "EvaluatorClient",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "NotFoundError",
    "RegistryClient",
    "ResourceExhaustedError",
    "ServiceClient",
    "ServingClient",
    "SplitterClient",
    "TrainerClient",
    "TunelineError",
    "UnavailableError",
]
