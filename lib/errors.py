"""The pipeline's error for bad input (the one thing every layer may import)."""


class DataError(ValueError):
    """Bad input data: the message names the file and the problem."""
