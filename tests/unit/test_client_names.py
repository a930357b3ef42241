"""The SDK and CLI write resource names with shared/names.py's patterns, from an id or a name."""

from __future__ import annotations

import pytest

from shared.names import DATASET, MODEL, MODEL_CHECKPOINT, TRAINING_JOB
from tuneline.client.dataset import dataset_name
from tuneline.client.names import collection, id_of, qualified
from tuneline.client.registry import alias_name, checkpoint_name, model_name


def test_collection_is_the_literal_start_of_a_pattern() -> None:
    assert collection(DATASET) == "datasets/"
    assert collection(MODEL_CHECKPOINT) == "models/"
    assert collection(TRAINING_JOB) == "trainingJobs/"


@pytest.mark.parametrize("ref", ["reviews", "datasets/reviews"])
def test_an_id_or_a_full_name_gives_the_full_name(ref: str) -> None:
    assert qualified(DATASET, ref) == "datasets/reviews"
    assert dataset_name(ref) == "datasets/reviews"
    assert id_of(DATASET, ref) == "reviews"


def test_a_malformed_full_name_passes_for_the_service_to_judge() -> None:
    assert qualified(DATASET, "datasets/Not_An_Id") == "datasets/Not_An_Id"


def test_registry_names_from_ids_or_names() -> None:
    assert model_name("sentiment") == model_name("models/sentiment") == "models/sentiment"
    assert checkpoint_name("j-1.c-2", "sentiment") == "models/sentiment/checkpoints/j-1.c-2"
    assert checkpoint_name("j-1.c-2", "models/sentiment") == "models/sentiment/checkpoints/j-1.c-2"
    full = "models/sentiment/checkpoints/j-1.c-2"
    assert checkpoint_name(full, "other") == full
    assert checkpoint_name("j-1.c-2") == "j-1.c-2"
    assert alias_name("sentiment") == "models/sentiment/aliases/production"
    assert alias_name("models/sentiment", "-") == "models/sentiment/aliases/-"
    assert alias_name("models/sentiment/aliases/canary") == "models/sentiment/aliases/canary"
    assert MODEL.matches(model_name("sentiment"))
