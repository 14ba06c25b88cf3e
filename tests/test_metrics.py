from __future__ import annotations

import numpy as np
import pytest

from bedkd.defender import defender_pools, flip_labels, flipped_set
from bedkd.detect import mapping_score, select_released
from bedkd.evaluate import confusion_matrix
from bedkd.metrics import accuracy, attack_success_rate, detection_metrics


def test_cacc_and_asr_by_hand() -> None:
    assert accuracy(np.array([1, 0, 1, 1]), np.array([1, 0, 0, 1])) == 0.75
    assert attack_success_rate(np.array([1, 1, 0, 1, 0]), target=1) == 0.6
    assert attack_success_rate(np.array([2, 0, 0]), target=0) == pytest.approx(2 / 3)


def test_detection_metrics_by_hand() -> None:
    score = np.array([0.01, 0.02, 0.5, 0.03, 0.6, 0.7])  # low = suspicious
    truth = np.array([1, 1, 0, 0, 1, 0], dtype=bool)
    kept = np.array([1, 1, 0, 1, 0, 0], dtype=bool)
    m = detection_metrics(score, truth, kept)
    assert m.precision == pytest.approx(2 / 3) and m.recall == pytest.approx(2 / 3)
    # AUROC of -score: pairs (pos, neg) ranked right: 0.01,0.02 beat all 3 negatives (6); 0.6 beats 0.7 only (1) -> 7/9
    assert m.auroc == pytest.approx(7 / 9)
    assert (m.n_kept, m.n_poisoned) == (3, 3)


def test_mapping_score() -> None:
    pv = np.array([[0.9, 0.1], [0.5, 0.5]])
    ps = np.array([[0.9, 0.1], [0.1, 0.9]])
    assert mapping_score(pv, ps).tolist() == pytest.approx([0.0, 0.4])


def test_select_released_rule() -> None:
    score = np.array([0.05, 0.5, 0.01, 0.02, 0.09, 0.2, 0.0])
    victim_pred = np.array([1, 1, 0, 1, 1, 1, 1])
    labels = np.array([1, 1, 1, 1, 1, 1, 1])
    sel = select_released(score, victim_pred, labels, threshold=0.1, scan_size=4, keep=2, seed=0)
    order = np.random.default_rng(0).permutation(7)
    flagged = [i for i in order if score[i] < 0.1][:4]
    agree = [i for i in flagged if victim_pred[i] == labels[i]]
    assert sel.tolist() == agree[:2]
    assert all(score[i] < 0.1 and victim_pred[i] == labels[i] for i in sel)
    # seeded: same seed same rows; order is not the file order
    assert select_released(score, victim_pred, labels, threshold=0.1, scan_size=4, keep=2, seed=0).tolist() == sel.tolist()


def test_flip_labels() -> None:
    assert flip_labels(np.array([0, 1, 1]), 2).tolist() == [1, 0, 0]
    assert flip_labels(np.array([0, 1, 2, 3]), 4).tolist() == [1, 2, 3, 0]


def test_defender_pools_disjoint_balanced() -> None:
    labels = np.array([0] * 50 + [1] * 60)
    pools = defender_pools(labels, 2, flip_per_class=5, clean_per_class=20, seed=1)
    assert not set(pools.dmm) & set(pools.akd)
    assert np.bincount(labels[pools.dmm]).tolist() == [5, 5]
    assert np.bincount(labels[pools.akd]).tolist() == [20, 20]
    # the DMM pool does not depend on the AKD budget
    assert defender_pools(labels, 2, 5, 30, seed=1).dmm.tolist() == pools.dmm.tolist()


def test_flip_ratio() -> None:
    import pandas as pd

    df = pd.DataFrame({"text": [f"t{i}" for i in range(10)], "label": [i % 2 for i in range(10)]})
    out = flipped_set(df, np.arange(10), 2, flip_ratio=0.3, seed=0)
    assert out["flipped"].sum() == 3
    assert (out.loc[out["flipped"], "label"] != out.loc[out["flipped"], "true_label"]).all()
    assert (out.loc[~out["flipped"], "label"] == out.loc[~out["flipped"], "true_label"]).all()


def test_confusion_matrix() -> None:
    assert confusion_matrix(np.array([0, 1, 1]), np.array([0, 0, 1]), 2) == [[1, 1], [0, 1]]


def test_pools_for_params_matches_defender_pools() -> None:
    import pandas as pd

    from bedkd.config import Params, with_overrides
    from bedkd.defender import pools_for

    df = pd.DataFrame({"text": [f"t{i}" for i in range(100)], "label": [i % 2 for i in range(100)]})
    p = with_overrides(Params(), {"detect.flip_per_class": 5, "distill.clean_per_class": 10, "seed": 3})
    got = pools_for(p, df)
    want = defender_pools(df["label"].to_numpy(), 2, 5, 10, seed=3)
    assert got.dmm.tolist() == want.dmm.tolist() and got.akd.tolist() == want.akd.tolist()


def test_missing_checkpoint_folder_is_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from bedkd.errors import BedkdError
    from bedkd.modeling import load_classifier

    with pytest.raises(BedkdError) as e:
        load_classifier(str(tmp_path / "models" / "victim"), local=True)
    assert "models/victim/config.json: model folder missing" in str(e.value)
