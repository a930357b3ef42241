"""``tuneline predict|generate|feedback|serving``: the serving service from the command line."""

from __future__ import annotations

from typing import Annotated

import typer

from tuneline.cli.endpoints import target
from tuneline.cli.output import print_message, reported_errors
from tuneline.client.registry import model_name
from tuneline.client.serving import ServingClient

ModelArg = Annotated[str, typer.Argument(help="sentiment or models/sentiment.")]


def _client() -> ServingClient:
    return ServingClient(target("serving"))


def predict(model: ModelArg, text: Annotated[str, typer.Argument(help="The text.")]) -> None:
    """Classify TEXT with the model's production checkpoint; prints the prediction id that
    `tuneline feedback` takes, the label, every label's score and the checkpoint."""
    with reported_errors(), _client() as client:
        print_message(client.predict(model_name(model), text))


def generate(
    model: ModelArg,
    prompt: Annotated[str, typer.Argument(help="The prompt.")],
    max_new_tokens: Annotated[
        int, typer.Option(min=0, max=1024, help="Token budget (0: the service's default).")
    ] = 0,
) -> None:
    """Complete PROMPT greedily with a causal LM's production checkpoint."""
    with reported_errors(), _client() as client:
        print_message(client.generate(model_name(model), prompt, max_new_tokens=max_new_tokens))


def feedback(
    prediction_id: Annotated[str, typer.Argument(help="The prediction id `predict` printed.")],
    label: Annotated[str | None, typer.Option(help="The true label (classification).")] = None,
    score: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="A quality score in 0..1 (any task).")
    ] = None,
) -> None:
    """Tell the serving service how a prediction really turned out (exactly one of --label and
    --score); the counts reach the registry's live quality in batches."""
    if (label is None) == (score is None):
        raise typer.BadParameter("pass exactly one of --label and --score")
    with reported_errors(), _client() as client:
        print_message(client.submit_feedback(prediction_id, label=label, score=score))


def serving_state() -> None:
    """What the serving service serves now, what it follows, and the releases it refused."""
    with reported_errors(), _client() as client:
        print_message(client.get_serving_state())


def register(app: typer.Typer) -> None:
    app.command()(predict)
    app.command()(generate)
    app.command()(feedback)
    app.command("serving")(serving_state)
