"""CreateDataset, GetDataset and ListDatasets."""

from __future__ import annotations

from sqlalchemy.orm import Session

from services.dataset.adapters.repository import DatasetRepository
from services.dataset.domain.datasets import Dataset
from services.dataset.domain.policy import SchemaPolicy
from services.dataset.handlers.deps import DatasetDeps
from shared import names
from shared.errors import AlreadyExists, FieldViolation, InvalidArgument, NotFound
from shared.ownership import Owner
from shared.pagination import decode_page_token, encode_page_token, resolve_page_size
from shared.task_types import TaskType


def create_dataset(
    session: Session,
    deps: DatasetDeps,
    *,
    dataset_id: str,
    task_type: TaskType,
    policy: SchemaPolicy,
    display_name: str = "",
    description: str = "",
    owner: Owner | None = None,
) -> Dataset:
    names.check_resource_id(dataset_id, field="dataset_id")
    owner = owner or Owner()
    violations = owner.problems("dataset.owner")
    if len(display_name) > 200:
        violations.append(
            FieldViolation("dataset.display_name", "at most 200 characters", "TOO_LONG")
        )
    if len(description) > 4000:
        violations.append(
            FieldViolation("dataset.description", "at most 4000 characters", "TOO_LONG")
        )
    if violations:
        raise InvalidArgument("invalid dataset", violations)
    now = deps.clock()
    dataset = Dataset(
        dataset_id=dataset_id,
        task_type=task_type,
        policy=policy.resolved(task_type),
        display_name=display_name,
        description=description,
        create_time=now,
        update_time=now,
        owner=owner,
    )
    repo = DatasetRepository(session)
    if repo.get_dataset(dataset_id) is not None:
        raise AlreadyExists("dataset", dataset.name)
    repo.add_dataset(dataset)
    return dataset


def get_dataset(session: Session, name: str) -> Dataset:
    dataset_id = names.DATASET.parse(name)["dataset"]
    dataset = DatasetRepository(session).get_dataset(dataset_id)
    if dataset is None:
        raise NotFound("dataset", name)
    return dataset


def list_datasets(
    session: Session, *, page_size: int, page_token: str, task_type: TaskType | None
) -> tuple[list[Dataset], str]:
    limit = resolve_page_size(page_size)
    query = {"task_type": task_type.value if task_type else ""}
    position = decode_page_token(page_token, query)
    datasets = DatasetRepository(session).list_datasets(
        task_type=task_type, after_id=str(position[0]) if position else None, limit=limit + 1
    )
    if len(datasets) <= limit:
        return datasets, ""
    page = datasets[:limit]
    return page, encode_page_token(query, [page[-1].dataset_id])
