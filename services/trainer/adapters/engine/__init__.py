"""The training engine: the only trainer code that imports torch and peft.

It runs inside a worker process (:mod:`services.trainer.adapters.worker`), never in the
service process: ``plan`` (what to train, torch-free) and ``messages`` (what the worker
reports, torch-free) are the interface the supervisor uses; ``loop`` trains; ``state`` saves and
restores resumable training state; ``attention`` adds padding-free varlen attention on CUDA;
``sampling`` orders examples into steps and micro-batches (torch-free).

Importing this package imports no torch; importing ``loop``, ``state`` or ``attention`` does.
"""
