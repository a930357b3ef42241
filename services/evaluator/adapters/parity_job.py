"""What the supervisor asks of the parity measurement, and what it gets back (torch-free).

They cross the worker's pipe with the :class:`~services.evaluator.adapters.scoring.ScoringJob`
and its result, so both are plain picklable dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.evaluator.domain.parity import AdapterFacts, ParityMeasurement, TokenizerFacts


@dataclass(frozen=True)
class ParityJob:
    """Measure the candidate's merged-versus-unmerged parity on the first ``max_examples``
    rows of the set ``set_key``; write the merged model into ``merged_output_dir`` (an empty
    folder the supervisor owns) when it is set."""

    set_key: str
    max_examples: int
    merged_output_dir: str = ""
    #: The candidate adapter's sha256, recorded in the merged folder's release metadata.
    adapter_sha256: str = ""


@dataclass(frozen=True)
class ParityMeasured:
    """The numbers, and the facts of the adapter the lint needs."""

    adapter: AdapterFacts
    #: The checkpoint's recorded tokenizer fingerprint (recomputed from the base model's
    #: tokenizer, whose files digest is verified, for adapters written before fingerprints).
    tokenizer: TokenizerFacts
    measurement: ParityMeasurement | None
    #: Why ``measurement`` is None (e.g. the merge failed); empty otherwise.
    skipped_reason: str = ""
    #: The folder the merged model was written to; empty when none was written.
    merged_dir: str = ""
