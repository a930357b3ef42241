"""The trainer's commands and events, one function each, taking the caller's session (one
transaction: the state change and the events it stages in the outbox commit together) and
their dependencies as parameters. Split by subject:

* :mod:`.deps` — what they need besides the session (:class:`.deps.TrainerDeps`, the ports);
* :mod:`.admission` — the checks a job passes before it is queued, and its budget;
* :mod:`.jobs` — CreateTrainingJob (and its estimate), CancelTrainingJob;
* :mod:`.queries` — Get and List of jobs, checkpoints and policies;
* :mod:`.policies` — SetTrainingPolicy;
* :mod:`.policy_jobs` — SplitCreated and DatasetAudited, which make policies' jobs;
* :mod:`.attempts` — the supervisor's bookkeeping of worker attempts;
* :mod:`.worker_reports` — what workers report (started, progress, checkpoints, the end);
* :mod:`.job_rows` — what several of them do to a stored job.

Callers import each function from its module; this package re-exports nothing.
"""
