"""narratives-sft: does fine-tuning a language model on Narratives text change its brain score?

One module per pipeline stage (see README): data (01), transcripts (02), features (03),
sft (04), encoding (05), compare/plots (06), report/pipeline (total). Later stages import
earlier ones, never the reverse.
"""

__version__ = "0.1.0"
