"""Datasets as adapters: each turns one kind of input into the same manifest for the stages.

Every adapter yields one manifest row per (subject, story, run) with the columns of
:data:`lib.data.MANIFEST_COLUMNS`: the story, its TR (a property of the data, never a constant),
the trims, where the words are (a Gentle alignment, a timed word table, or words per TR) and where
the responses are (``responses``: ``nifti`` = a 4D BOLD image read inside a mask; ``matrix`` = a
(TRs x targets) matrix of ROI, parcel or component series). Later stages read the manifest only:
they never ask which dataset they run on.

Adapters (profile key ``dataset``):

* ``mini`` / ``openneuro`` / ``local`` -- Narratives BIDS (:mod:`lib.data`, unchanged);
* ``lebel`` -- response matrices with words per TR (:mod:`lib.datasets.matrices`; the LeBel et al.
  2023 files shipped under ``data/lebel``);
* ``generic`` -- a ``runs.tsv`` table naming, per run, a BOLD NIfTI or a matrix file and a word
  table (:mod:`lib.datasets.generic`).
"""
from .matrices import lebel_manifest, read_matrix
from .generic import generic_manifest
from .words import read_words

__all__ = ["lebel_manifest", "generic_manifest", "read_matrix", "read_words"]
