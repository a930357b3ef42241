"""Four eyes: whether a reviewer is one of a checkpoint's authors (:func:`four_eyes_conflict`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FourEyesConflict:
    """Why a reviewer may not approve (or promote to production) a checkpoint: they made it."""

    #: What they created: ``training_job`` (the job that produced the checkpoint) or ``model``.
    created: str
    #: The creator's identity, as verified when they created it.
    creator: str


def four_eyes_conflict(
    reviewer: str, *, job_creator: str, model_creator: str
) -> FourEyesConflict | None:
    """The conflict when ``reviewer`` created the checkpoint's training job or its model.

    The job's creator ran the training that produced the checkpoint, so approving it is
    reviewing their own work. The model's creator is held too: they set the model's gates and
    review policy, and for a job a training policy made (creator ``trainingPolicies/{p}``,
    automation) they are the person nearest to the run. An empty creator (created without
    auth) binds no one, and neither does an empty reviewer.
    """
    if not reviewer:
        return None
    if job_creator and reviewer == job_creator:
        return FourEyesConflict("training_job", job_creator)
    if model_creator and reviewer == model_creator:
        return FourEyesConflict("model", model_creator)
    return None
