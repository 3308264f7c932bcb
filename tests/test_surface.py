"""The cortical-surface path (lib/surface.py, lib/geometry.py): GIfTI runs, the vertex mask,
score maps, surface ROIs, and a SYNTHETIC surface dataset through stages 01-06."""
import numpy as np
import pandas as pd
import pytest

from lib import surface
from lib.data import DataError
from lib.synthetic_surface import save_gifti_run, surface_layout

N5 = surface.MESH_VERTICES["fsaverage5"]


def test_runs_masks_and_maps_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    Y = rng.standard_normal((12, 2 * N5)).astype(np.float32)
    Y[:, :50] = 0.0                                           # a "medial wall"
    left, right = save_gifti_run(Y, tmp_path / "sub-a_task-x_space-fsaverage5")
    np.testing.assert_array_equal(surface.read_run(left), Y)
    assert surface.hemi_paths(right) == (left, right) and surface.n_trs(left) == 12
    m = surface.SurfaceMask.from_runs([left])
    assert m.mesh == "fsaverage5" and m.n == 2 * N5 - 50
    assert surface.load_surface_bold(left, m.mask).shape == (12, m.n)
    back = surface.SurfaceMask.load(m.save(tmp_path / "mask.npz"))
    np.testing.assert_array_equal(back.mask, m.mask)
    vec = np.arange(m.n, dtype=np.float32)
    lp, rp = m.save_map(vec, tmp_path / "maps" / "score.nii.gz")
    assert lp.name == "score_hemi-L.func.gii"
    both = np.r_[surface.read_hemi(lp)[0], surface.read_hemi(rp)[0]]
    np.testing.assert_array_equal(both[m.mask], vec)
    assert (both[~m.mask] == 0).all()


def test_bad_surface_input_names_the_file(tmp_path):
    with pytest.raises(DataError, match="_hemi-L"):
        surface.hemi_paths(tmp_path / "run.func.gii")
    left, _ = save_gifti_run(np.zeros((3, 2 * 1000), np.float32), tmp_path / "odd")
    with pytest.raises(DataError, match="1000 vertices per hemisphere is not an fsaverage mesh"):
        surface.read_hemi(left)
    with pytest.raises(DataError, match="not found"):
        surface.read_hemi(tmp_path / "missing_hemi-L.func.gii")
    (tmp_path / "bad_hemi-L.func.gii").write_text("not xml")
    with pytest.raises(DataError, match="bad_hemi-L.func.gii: not a readable GIfTI"):
        surface.read_hemi(tmp_path / "bad_hemi-L.func.gii")
    flat, _ = save_gifti_run(np.ones((3, 2 * N5), np.float32), tmp_path / "flat")
    with pytest.raises(DataError, match="surface mask is empty"):
        surface.SurfaceMask.from_runs([flat])


@pytest.mark.parametrize("mesh", ["fsaverage5", "fsaverage6"])
def test_language_rois_on_the_surface(mesh):
    n = surface.MESH_VERTICES[mesh]
    m = surface.SurfaceMask(mesh, np.ones(2 * n, bool))
    memb, names, table = surface.rois_on_surface(m)
    assert len(names) == 18 and table.kept.all() and (table.n_vertices > 0).all()
    for row, name in zip(memb, names):
        side = slice(0, n) if name.startswith("L_") else slice(n, 2 * n)
        other = slice(n, 2 * n) if name.startswith("L_") else slice(0, n)
        assert row[side].any() and not row[other].any()        # each ROI on its own side
        assert not row[surface.DRAWN_VERTICES:n].any()          # fsaverage6: the fs5 subset only
    stg = memb[names.index("L_pSTG")]
    planted, _ = surface_layout(mesh)
    assert (stg & planted).any()                                 # the planted patch is in STG


@pytest.mark.slow
def test_synthetic_surface_runs_stages_01_to_06_and_recovers_the_planted_patch(project_root):
    from sklearn.metrics import roc_auc_score

    from conftest import profile_args, run_pipeline
    from lib import compare, geometry
    from lib.synthetic import truth_for_run

    args = profile_args("surface", mini_surface="fsaverage5", bold_source="fsaverage5",
                        bids_root=project_root / "data" / "narratives-mini-surface",
                        include_excluded="true", roi_atlas="harvard_oxford", partition="[]",
                        layer_profile="false", feature_spaces="[word_rate]")
    p = run_pipeline(args, project_root)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    run = project_root / "results" / "surface"
    st = compare.load_stage05(run / "brain_score")
    g = geometry.load_geometry(run / "brain_score")
    assert geometry.is_surface(g) and g.mesh == "fsaverage5"
    planted = truth_for_run(run)["planted_vertices"][g.mask]
    maps = compare.subject_maps(st["voxels"], "word_rate")
    assert len(maps) == 3
    auc = roc_auc_score(planted, np.nan_to_num(np.mean(list(maps.values()), 0)))
    assert auc >= 0.95, auc                                  # measured 0.968
    for k in ("raw", "sft", "delta"):                        # maps as GIfTI pairs, drawn
        for h in "LR":
            assert len(surface.read_hemi(run / "compare" / f"group_{k}_hemi-{h}.func.gii")[0]) == N5
        assert (run / "compare" / f"glass_{k}.png").exists()
    assert (run / "compare" / "view_raw.html").stat().st_size > 100_000
    rois = pd.read_csv(run / "compare" / "roi_table.csv")
    assert {"roi-L_pSTG", "roi-R_pSTG"} <= set(rois.target)
