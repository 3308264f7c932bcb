"""narratives-sft: does fine-tuning a language model on Narratives text change its brain score?

The package is layered, bottom to top (README, "lib/"; tests/test_architecture.py enforces it):
basics (errors, paths, cache, cluster), the engine (``lib.engine``: arrays in, arrays out),
datasets (data, datasets, transcripts, geometry, ...), language models (models, tokens,
features, spaces, sft), the stages (stage 05: ``stage05`` over ``units``, ``encoding`` /
``matrix_encoding``, ``reduction``, ``deltas``; stage 06: ``stage06`` over ``compare`` /
``matrix_compare``, ``plots``) and orchestration (pipeline, inprocess, report). A module imports
only from its own layer and the layers below it.
"""

__version__ = "0.1.0"
