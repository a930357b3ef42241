"""Resource names (AIP-122): one pattern type and one id rule for every service.

A name is a path of literal collection segments and ids, written as a template:
``ResourcePattern("datasets/{dataset}/versions/{version}")``. Every ``{variable}`` follows the
same id rule, :data:`RESOURCE_ID` (AIP-122's: lower case letters, digits and hyphens, starting
with a letter and ending with a letter or digit, at most 63 characters). Ids the services assign
themselves (``v-…``, ``s-…``, ``r-…``, ``e-…``, ``step-…``) are written to follow it too, so a
name one service writes is always one another service accepts. The one compound id is the
registry's checkpoint id, the trainer's job and checkpoint ids joined by a dot.

A bad name is an :class:`~shared.errors.InvalidArgument` whose single field violation has the
reason ``INVALID_NAME`` and says which template was expected.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from shared.errors import FieldViolation, InvalidArgument

#: The one id rule, as a regular expression fragment (no anchors).
ID_RULE = r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?"
RESOURCE_ID = re.compile(rf"^{ID_RULE}\Z")
#: Longest id the rule allows.
MAX_ID_LENGTH = 63

_DOTTED_RULE = rf"{ID_RULE}(?:\.{ID_RULE})*"
_VARIABLE = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
_LITERAL = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")


def is_resource_id(value: str) -> bool:
    """Whether ``value`` follows the id rule."""
    return RESOURCE_ID.match(value) is not None


def id_violations(value: str, *, field: str, reason: str = "INVALID_ID") -> list[FieldViolation]:
    """An empty list when ``value`` follows the id rule, else the one violation saying so."""
    if is_resource_id(value):
        return []
    return [
        FieldViolation(
            field,
            f"must match ^{ID_RULE}$ (lower case letters, digits and hyphens; "
            f"starts with a letter, at most {MAX_ID_LENGTH} characters)",
            reason,
        )
    ]


def check_resource_id(value: str, *, field: str, reason: str = "INVALID_ID") -> str:
    """``value`` itself when it follows the id rule; INVALID_ARGUMENT otherwise."""
    violations = id_violations(value, field=field, reason=reason)
    if violations:
        raise InvalidArgument(f"invalid id {value!r} in {field}", violations)
    return value


class ResourcePattern:
    """One kind of resource name, e.g. ``datasets/{dataset}/versions/{version}``.

    ``wildcards`` names variables that may also be one literal token instead of an id, such
    as AIP-159's ``-`` for "every version" in a List parent. ``dotted`` names variables whose
    id is several ids joined by dots, each following the rule (the registry names a checkpoint
    ``{job}.{checkpoint}`` after the trainer checkpoint it came from). ``legacy`` gives a
    variable one more accepted form, a regular expression, for ids a service assigned before
    the rule and still stores: they must stay readable after an upgrade.
    """

    def __init__(
        self,
        template: str,
        *,
        wildcards: Mapping[str, str] | None = None,
        dotted: Iterable[str] = (),
        legacy: Mapping[str, str] | None = None,
    ) -> None:
        self.template = template
        self.variables: tuple[str, ...] = tuple(_VARIABLE.findall(template))
        self.wildcards: dict[str, str] = dict(wildcards or {})
        self.dotted = frozenset(dotted)
        segments = template.split("/")
        parts: list[str] = []
        for segment in segments:
            variable = _VARIABLE.fullmatch(segment)
            if variable:
                name = variable.group(1)
                rule = _DOTTED_RULE if name in self.dotted else ID_RULE
                if legacy and name in legacy:
                    rule = f"{rule}|{legacy[name]}"
                wildcard = self.wildcards.get(name)
                choice = f"{rule}|{re.escape(wildcard)}" if wildcard else rule
                parts.append(f"(?P<{name}>{choice})")
            elif _LITERAL.match(segment):
                parts.append(re.escape(segment))
            else:
                raise ValueError(f"bad segment {segment!r} in resource name template {template!r}")
        if len(set(self.variables)) != len(self.variables):
            raise ValueError(f"a variable repeats in resource name template {template!r}")
        if unknown := (set(self.wildcards) | self.dotted | set(legacy or ())) - set(self.variables):
            raise ValueError(f"options for unknown variables {sorted(unknown)} in {template!r}")
        self._regex = re.compile("^" + "/".join(parts) + r"\Z")

    def __repr__(self) -> str:
        return f"ResourcePattern({self.template!r})"

    def matches(self, value: str) -> bool:
        return self._regex.match(value) is not None

    def violations(self, value: str, *, field: str) -> list[FieldViolation]:
        """An empty list when ``value`` is such a name, else the one violation saying so (for
        validators that collect every bad field before raising)."""
        if self.matches(value):
            return []
        return [FieldViolation(field, f"expected {self.template}", "INVALID_NAME")]

    def parse(self, value: str, *, field: str = "name") -> dict[str, str]:
        """The ids of ``value`` by variable name; INVALID_ARGUMENT when it is not such a name."""
        match = self._regex.match(value)
        if match is None:
            raise InvalidArgument(
                f"{field} {value!r} is not a name of the form {self.template}",
                self.violations(value, field=field),
            )
        return match.groupdict()

    def ids(self, value: str, *, field: str = "name") -> tuple[str, ...]:
        """The ids of ``value`` in template order (``(dataset, version)``)."""
        parsed = self.parse(value, field=field)
        return tuple(parsed[variable] for variable in self.variables)

    def check(self, value: str, *, field: str = "name") -> str:
        """``value`` itself when it is such a name; INVALID_ARGUMENT otherwise."""
        self.parse(value, field=field)
        return value

    def format(self, **ids: str) -> str:
        """The name with these ids; ValueError for a missing or extra id (a bug in the caller).

        The ids are not checked against the rule: validators that collect every bad field write
        names from ids they have already reported, and :meth:`parse` is where input is judged.
        """
        if set(ids) != set(self.variables):
            raise ValueError(f"{self.template} needs ids {self.variables}, got {sorted(ids)}")
        return _VARIABLE.sub(lambda match: ids[match.group(1)], self.template)


# -- the names that cross services ---------------------------------------------------------------

DATASET = ResourcePattern("datasets/{dataset}")
DATASET_VERSION = ResourcePattern("datasets/{dataset}/versions/{version}")
VALIDATION_REPORT = ResourcePattern("datasets/{dataset}/reports/{report}")
SPLIT = ResourcePattern("datasets/{dataset}/versions/{version}/splits/{split}")
#: ``datasets/{dataset}/versions/-`` lists the splits of every version (AIP-159).
SPLIT_LIST_PARENT = ResourcePattern(
    "datasets/{dataset}/versions/{version}", wildcards={"version": "-"}
)
SPLIT_POLICY = ResourcePattern("datasets/{dataset}/splitPolicy")
TRAINING_JOB = ResourcePattern("trainingJobs/{job}")
#: ``trainingJobs/-``: every job, as the parent of a List (AIP-159).
ANY_TRAINING_JOB = ResourcePattern("trainingJobs/{job}", wildcards={"job": "-"})
TRAINING_POLICY = ResourcePattern("trainingPolicies/{policy}")
TRAINER_CHECKPOINT = ResourcePattern("trainingJobs/{job}/checkpoints/{checkpoint}")
MODEL = ResourcePattern("models/{model}")
MODEL_CHECKPOINT = ResourcePattern("models/{model}/checkpoints/{checkpoint}", dotted=["checkpoint"])
MODEL_ALIAS = ResourcePattern("models/{model}/aliases/{alias}")
#: ``models/{model}/aliases/-``: every alias of a model (AIP-159), where a request allows it.
ANY_MODEL_ALIAS = ResourcePattern("models/{model}/aliases/{alias}", wildcards={"alias": "-"})
#: Evaluation ids were 20 hex digits (often digit-first) before they became ``e-<20 hex>``;
#: evaluations stored under the old form stay readable.
EVALUATION = ResourcePattern("evaluations/{evaluation}", legacy={"evaluation": "[0-9a-f]{20}"})
EVALUATION_POLICY = ResourcePattern("models/{model}/evaluationPolicy")
