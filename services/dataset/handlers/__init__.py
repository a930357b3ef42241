"""The dataset service's commands, one function each. Split by subject (import from the
modules; this package re-exports nothing):

* :mod:`.deps` — what they need (:class:`.deps.DatasetDeps`, the :class:`.deps.LabelAuditor` port);
* :mod:`.datasets` — CreateDataset, GetDataset, ListDatasets;
* :mod:`.versions` — Get and List of versions and validation reports;
* :mod:`.ingest` — UploadDatasetVersion and ImportDatasetVersion: validate, then store a report
  or commit a version with its ``DatasetVersioned``;
* :mod:`.audits` — each version's label audit: requested at commit, run by the audit runner,
  GetDatasetAudit.

The Get/List handlers and CreateDataset take the caller's ``Session`` (the entrypoint owns the
transaction). Ingestion and the audit runner take :class:`.deps.DatasetDeps` and open their own
short transactions instead, because their work spans I/O that must not hold one open: an
upload streams for as long as the client sends (validated into a spool outside any
transaction, then committed under the dataset's lock), and an audit embeds a version's texts
between reading the pending audit and storing its verdict (see :mod:`.ingest`, :mod:`.audits`).
"""
