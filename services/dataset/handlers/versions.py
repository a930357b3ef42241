"""The read side of versions and validation reports: GetDatasetVersion, ListDatasetVersions,
GetValidationReport and ListValidationReports."""

from __future__ import annotations

from sqlalchemy.orm import Session

from services.dataset.adapters.repository import DatasetRepository
from services.dataset.domain.datasets import DatasetVersion
from services.dataset.domain.reports import Outcome, ValidationReport
from shared import names
from shared.errors import NotFound
from shared.pagination import decode_page_token, encode_page_token, resolve_page_size


def get_version(session: Session, name: str) -> DatasetVersion:
    dataset_id, version_id = names.DATASET_VERSION.ids(name)
    version = DatasetRepository(session).get_version(dataset_id, version_id)
    if version is None:
        raise NotFound("dataset version", name)
    return version


def list_versions(
    session: Session, *, parent: str, page_size: int, page_token: str
) -> tuple[list[DatasetVersion], str]:
    dataset_id = names.DATASET.parse(parent, field="parent")["dataset"]
    limit = resolve_page_size(page_size)
    query = {"parent": parent}
    position = decode_page_token(page_token, query)
    repo = DatasetRepository(session)
    if repo.get_dataset(dataset_id) is None:
        raise NotFound("dataset", parent)
    rows = repo.list_versions(
        dataset_id, before_seq=int(position[0]) if position else None, limit=limit + 1
    )
    if len(rows) <= limit:
        return [version for _, version in rows], ""
    page = rows[:limit]
    return [version for _, version in page], encode_page_token(query, [page[-1][0]])


def get_report(session: Session, name: str) -> ValidationReport:
    dataset_id, report_id = names.VALIDATION_REPORT.ids(name)
    report = DatasetRepository(session).get_report(dataset_id, report_id)
    if report is None:
        raise NotFound("validation report", name)
    return report


def list_reports(
    session: Session, *, parent: str, page_size: int, page_token: str, outcome: Outcome | None
) -> tuple[list[ValidationReport], str]:
    dataset_id = names.DATASET.parse(parent, field="parent")["dataset"]
    limit = resolve_page_size(page_size)
    query = {"parent": parent, "outcome": outcome.value if outcome else ""}
    position = decode_page_token(page_token, query)
    repo = DatasetRepository(session)
    if repo.get_dataset(dataset_id) is None:
        raise NotFound("dataset", parent)
    rows = repo.list_reports(
        dataset_id,
        outcome=outcome,
        before_seq=int(position[0]) if position else None,
        limit=limit + 1,
    )
    if len(rows) <= limit:
        return [report for _, report in rows], ""
    page = rows[:limit]
    return [report for _, report in page], encode_page_token(query, [page[-1][0]])
