"""Resource names from what a user types: an id (``reviews``) or a full name (``datasets/reviews``).

Every name is written by its :mod:`shared.names` pattern (:meth:`ResourcePattern.format
<shared.names.ResourcePattern.format>`), never by a format string of the SDK's own. A full name
(one that starts with its pattern's collection, ``datasets/``) passes as it is, malformed or
not: the service judges it and says what is wrong (``INVALID_NAME``), as for any request.
"""

from __future__ import annotations

from shared.names import ResourcePattern


def collection(pattern: ResourcePattern) -> str:
    """The literal start of ``pattern``'s names, up to its first id: ``datasets/``."""
    return pattern.template.split("{", 1)[0]


def id_of(pattern: ResourcePattern, ref: str) -> str:
    """The first id of ``ref``, a bare id or a name of ``pattern``'s collection:
    ``reviews`` from ``reviews`` or ``datasets/reviews``."""
    return ref.removeprefix(collection(pattern))


def qualified(pattern: ResourcePattern, ref: str, **parents: str) -> str:
    """``ref`` when it already names something of ``pattern``'s collection, else the name whose
    last id is ``ref`` and whose other ids are ``parents``: ``qualified(DATASET, "reviews")``
    is ``datasets/reviews``."""
    if ref.startswith(collection(pattern)):
        return ref
    return pattern.format(**parents, **{pattern.variables[-1]: ref})
