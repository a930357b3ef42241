"""Which examples go into which optimizer step and micro-batch (torch-free, deterministic).

Each epoch has its own seeded permutation, cut into *step groups* of
``micro_batch_size * accumulation_steps`` examples; a group is cut into micro-batches. The
data position of a run is therefore just (epoch, step within the epoch): a resumed run
recomputes the epoch's groups and skips the ones done. Halving the micro-batch and doubling the
accumulation (the OOM retry) keeps every step's examples the same.

With ``group_by_length`` (padded batches), examples are sorted by length inside megabatches of
:data:`MEGABATCH_STEPS` steps before they are cut, and the groups' order is shuffled again, so
a micro-batch holds examples of similar length (little padding) while the order of steps stays
random. Packed (padding-free) batches need no grouping.

Packed batches can instead be cut by a *token budget* (:func:`token_budget_micro_batches`):
each micro-batch holds up to that many tokens, no example split across two, so micro-batches
have nearly the same size (steady shapes, predictable memory) whatever the examples' lengths.
Which micro-batch an example lands in does not change the step's loss or gradient: every
micro-batch's summed loss is divided by the whole step's loss weight.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

#: Steps' worth of examples sorted together when grouping by length.
MEGABATCH_STEPS = 16


def epoch_order(count: int, *, seed: int, epoch: int) -> list[int]:
    """A permutation of ``range(count)`` that depends only on (seed, epoch)."""
    order = list(range(count))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return order


def step_groups(
    lengths: Sequence[int],
    *,
    seed: int,
    epoch: int,
    examples_per_step: int,
    group_by_length: bool,
) -> list[list[int]]:
    """The example indices of every optimizer step of ``epoch``, in order."""
    order = epoch_order(len(lengths), seed=seed, epoch=epoch)
    if not group_by_length:
        return [order[i : i + examples_per_step] for i in range(0, len(order), examples_per_step)]
    mega = examples_per_step * MEGABATCH_STEPS
    groups: list[list[int]] = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start : start + mega], key=lambda i: -lengths[i])
        groups += [
            chunk[i : i + examples_per_step] for i in range(0, len(chunk), examples_per_step)
        ]
    # the last (partial) group stays last: every other step has the full effective batch
    full, tail = (groups[:-1], groups[-1:]) if len(groups[-1]) < examples_per_step else (groups, [])
    random.Random(f"{seed}:{epoch}:groups").shuffle(full)
    return full + tail


def micro_batches(
    group: Sequence[int], lengths: Sequence[int], *, micro_batch_size: int, group_by_length: bool
) -> list[list[int]]:
    """Cut one step's examples into micro-batches (longest first when grouping by length)."""
    ordered = sorted(group, key=lambda i: -lengths[i]) if group_by_length else list(group)
    return [ordered[i : i + micro_batch_size] for i in range(0, len(ordered), micro_batch_size)]


def token_budget_micro_batches(
    group: Sequence[int], lengths: Sequence[int], *, token_budget: int
) -> list[list[int]]:
    """Cut one step's examples into micro-batches of at most ``token_budget`` tokens each,
    never splitting an example (one longer than the budget goes alone): first-fit decreasing,
    so the micro-batches are nearly full and as few as the budget allows. Deterministic."""
    if token_budget < 1:
        raise ValueError(f"the token budget must be positive, not {token_budget}")
    batches: list[list[int]] = []
    room: list[int] = []
    for index in sorted(group, key=lambda i: -lengths[i]):
        length = lengths[index]
        slot = next((b for b, free in enumerate(room) if free >= length), None)
        if slot is None:
            batches.append([index])
            room.append(token_budget - length)
        else:
            batches[slot].append(index)
            room[slot] -= length
    return batches
