"""Stages run in-process without a Jupyter kernel (lib.inprocess, lib.pipeline --no-kernel)."""
import pytest

from lib import inprocess

SCRIPT = '''# %% [markdown]
# # A stage

# %% tags=["parameters"]
out = "x.txt"
n = 2                 # a comment
unused = None

# %%
from IPython.display import Markdown, display
import matplotlib.pyplot as plt

plt.plot([0, 1])
display(Markdown(f"**{n}**"))
open(out, "w").write(str(n * 3))
'''


def test_parameters_are_injected_after_the_parameters_cell(tmp_path):
    before, cell, after = inprocess.split_parameters(SCRIPT)
    assert cell.startswith(inprocess.PARAMETERS) and "open(out" in after
    assert inprocess.declared(cell) == {"out", "n", "unused"}
    assert inprocess.injected({"n": 5, "other": 1}, {"out", "n"}) == "n = 5\n"
    src = tmp_path / "stage.py"
    src.write_text(SCRIPT)
    inprocess.run_script(src, {"n": 5, "out": str(tmp_path / "r.txt"), "other": 1}, tmp_path)
    assert (tmp_path / "r.txt").read_text() == "15"          # the profile's n, not the cell's
    with pytest.raises(ValueError, match="no cell tagged parameters"):
        inprocess.split_parameters("x = 1\n", "bad.py")
