"""Authorisation: roles, the role → RPC table, and identity → role bindings. Deny by default.

An RPC is allowed when one of the caller's roles lists its full name
(``tuneline.registry.v1.RegistryService/PromoteCheckpoint``) or its service with ``/*``. An RPC
no role lists is denied to everyone, so a new RPC stays closed until someone decides who may
call it (``tests/integration/test_authz_matrix.py`` fails until they do).

Where roles come from:

* a bearer token's roles claim;
* ``bindings`` in the policy file (identity → roles), for certificate users and proxied callers;
* service certificates: ``spiffe://<trust domain>/service/<name>`` holds ``service:<name>``.

The policy file (``TUNELINE_AUTH_POLICY_FILE``, JSON) may replace roles of the default table
and add bindings::

    {"roles": {"viewer": ["tuneline.registry.v1.RegistryService/GetAlias"]},
     "bindings": {"spiffe://tuneline.local/user/alice": ["reviewer"]}}
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

_DATASET = "tuneline.dataset.v1.DatasetService"
_SPLITTER = "tuneline.splitter.v1.SplitterService"
_TRAINER = "tuneline.trainer.v1.TrainerService"
_EVALUATOR = "tuneline.evaluator.v1.EvaluatorService"
_REGISTRY = "tuneline.registry.v1.RegistryService"
_SERVING = "tuneline.serving.v1.ServingService"


def _rpcs(service: str, *methods: str) -> frozenset[str]:
    return frozenset(f"{service}/{method}" for method in methods)


#: Reads and watches of every service.
_READS = (
    _rpcs(
        _DATASET,
        "GetDataset",
        "ListDatasets",
        "GetDatasetVersion",
        "ListDatasetVersions",
        "GetValidationReport",
        "ListValidationReports",
        "GetDatasetAudit",
    )
    | _rpcs(_SPLITTER, "GetSplit", "ListSplits", "GetSplitPolicy")
    | _rpcs(
        _TRAINER,
        "GetTrainingJob",
        "ListTrainingJobs",
        "WatchTrainingJob",
        "GetCheckpoint",
        "ListCheckpoints",
        "GetTrainingPolicy",
        "ListTrainingPolicies",
    )
    | _rpcs(_EVALUATOR, "GetEvaluation", "ListEvaluations", "GetEvaluationPolicy")
    | _rpcs(
        _REGISTRY,
        "GetModel",
        "ListModels",
        "GetCheckpoint",
        "ListCheckpoints",
        "GetAlias",
        "ListAliasHistory",
        "WatchAlias",
    )
    | _rpcs(_SERVING, "GetServingState")
)

#: What the serving fleet calls on the registry: follow `production`, report live quality.
_SERVING_FLEET = _rpcs(
    _REGISTRY,
    "GetModel",
    "ListModels",
    "GetCheckpoint",
    "GetAlias",
    "WatchAlias",
    "ReportLiveQuality",
)
#: What an application calls on the serving fleet: predictions and their feedback.
_INFERENCE = _rpcs(_SERVING, "Predict", "Generate", "SubmitFeedback", "GetServingState")

#: The default table. People's roles include the reads, the way Kubernetes' `edit` includes
#: `view`; service identities get exactly the calls their service makes, nothing else.
DEFAULT_ROLES: Mapping[str, frozenset[str]] = {
    "viewer": _READS,
    "editor": _READS
    | _rpcs(_DATASET, "CreateDataset", "UploadDatasetVersion", "ImportDatasetVersion")
    | _rpcs(_SPLITTER, "CreateSplit", "SetSplitPolicy")
    | _rpcs(_TRAINER, "CreateTrainingJob", "SetTrainingPolicy")
    | _rpcs(_EVALUATOR, "EvaluateCheckpoint", "SetEvaluationPolicy")
    | _rpcs(_REGISTRY, "CreateModel", "SetServingProfile")
    | _INFERENCE,
    # moving `production` by decision: only reviewers (and automation inside the registry)
    "reviewer": _READS
    | _rpcs(_REGISTRY, "ApproveCheckpoint", "RejectCheckpoint", "PromoteCheckpoint"),
    "operator": _READS
    | _rpcs(_REGISTRY, "RollbackModel", "ReportLiveQuality", "UnfreezeAutomation")
    | _rpcs(_TRAINER, "CancelTrainingJob"),
    # the serving fleet: follows `production` and reports how it does live (a token's role,
    # or the serving service's own certificate identity below)
    "serving": _SERVING_FLEET,
    # an application using the serving fleet: predicts and sends feedback, nothing else
    "inference": _INFERENCE,
    # what each service calls on its peers (services/*/adapters): nothing more
    "service:dataset": frozenset(),
    "service:splitter": _rpcs(_DATASET, "GetDatasetVersion"),
    "service:trainer": _rpcs(_SPLITTER, "GetSplit") | _rpcs(_REGISTRY, "GetModel"),
    "service:evaluator": _rpcs(_REGISTRY, "GetModel", "GetAlias", "GetCheckpoint"),
    # confirms a PASSED verdict before it counts (services/registry/adapters/verdict_checks.py)
    "service:registry": _rpcs(_EVALUATOR, "GetEvaluation"),
    "service:serving": _SERVING_FLEET,
}

_SERVICE_IDENTITY = re.compile(r"^spiffe://[^/]+/service/(?P<service>[a-z][a-z0-9-]*)$")


class PolicyFileError(ValueError):
    """The policy file is not the JSON shape the module docstring shows."""


@dataclass(frozen=True)
class AccessPolicy:
    """Who holds which roles, and what each role may call."""

    roles: Mapping[str, frozenset[str]] = field(default_factory=lambda: dict(DEFAULT_ROLES))
    bindings: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def roles_of(self, identity: str, claimed: Iterable[str] = ()) -> frozenset[str]:
        """The roles of ``identity``: verified ``claimed`` roles, bindings, service identity."""
        roles = set(claimed) | set(self.bindings.get(identity, ()))
        service = _SERVICE_IDENTITY.match(identity)
        if service and f"service:{service['service']}" in self.roles:
            roles.add(f"service:{service['service']}")
        return frozenset(roles)

    def allows(self, roles: Iterable[str], method: str) -> bool:
        """Whether any of ``roles`` may call ``method`` (``package.Service/Method``)."""
        service_wide = f"{method.rpartition('/')[0]}/*"
        for role in roles:
            granted = self.roles.get(role, frozenset())
            if method in granted or service_wide in granted:
                return True
        return False


def _string_lists(value: object, what: str) -> dict[str, frozenset[str]]:
    if not isinstance(value, dict) or not all(
        isinstance(items, list) and all(isinstance(i, str) for i in items)
        for items in value.values()
    ):
        raise PolicyFileError(f"{what} must map names to lists of strings")
    return {str(key): frozenset(items) for key, items in value.items()}


def load_access_policy(path: Path | None) -> AccessPolicy:
    """The default table, with roles and bindings from the policy file at ``path`` on top."""
    if path is None:
        return AccessPolicy()
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise PolicyFileError(f"cannot read the policy file {path}: {error}") from error
    if not isinstance(document, dict) or set(document) - {"roles", "bindings"}:
        raise PolicyFileError(f"{path}: expected an object with `roles` and/or `bindings`")
    roles = {**DEFAULT_ROLES, **_string_lists(document.get("roles", {}), "roles")}
    bindings = _string_lists(document.get("bindings", {}), "bindings")
    return AccessPolicy(roles=roles, bindings=bindings)
