"""The serving service's commands and events, one function each, split by subject:
:mod:`.releases` (announce, load and swap), :mod:`.inference` (Predict, Generate) and
:mod:`.feedback` (outcomes, live quality reports). :mod:`.deps` holds what they share."""
