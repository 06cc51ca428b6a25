"""``dicom-gateway evaluate``: does protection stop AI models the hospital did not train?

The harness trains the unauthorized user's models (victims) and the protection's surrogates on
the clean training split, protects the test split (or, for unlearnable data, the training
split) with each method, applies the unauthorized user's defences, and writes ``report.md``,
``results.json`` and PNG plots. See ``docs/evaluation/README.md`` for the protocol.

The sub-modules import torch; this package's ``__init__`` does not (the CLI imports
:mod:`.command` at start-up).
"""

__all__: list[str] = []
