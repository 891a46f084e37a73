"""EdgeBERT's exit-layer predictor against hand-computed tables, misses and latency schedules.

Binary tasks throughout: entropy lies in [0, ln 2]; with 3 bins the edges are 0, 0.2310, 0.4621, 0.6931.
Layers are 0-based (0..L−1, L−1 = the final head), as in ``curve``.
"""

from __future__ import annotations

import math

import pytest
import torch

from lowbit.algorithms.early_exit.predictor import (
    entropy_bins,
    fit_predictor,
    latency_target_fractions,
    prediction_stats,
    predictor_report,
    scheduled_latency_ms,
)
from lowbit.errors import LowbitConfigError

#: training off-ramp entropies of 5 sentences, L = 4 (3 off-ramps): rows 0-1 in bin 0, rows 2-4 in bin 2, bin 1 empty
TRAIN = torch.tensor([[0.10, 0.50, 0.20],
                      [0.20, 0.30, 0.10],
                      [0.60, 0.60, 0.40],
                      [0.65, 0.30, 0.50],
                      [0.62, 0.50, 0.20]], dtype=torch.float64)


def test_bins_are_equal_width_on_zero_to_ln_c():
    h = torch.tensor([0.0, 0.2309, 0.2311, 0.4622, 0.6931, 0.70])
    assert entropy_bins(h, 3, 2).tolist() == [0, 0, 1, 2, 2, 2]  # >= ln 2 (float rounding): the last bin
    assert entropy_bins(torch.tensor([1.0, 1.0987]), 2, 3).tolist() == [1, 1]  # ln 3 / 2 = 0.549
    assert entropy_bins(torch.tensor([0.3, 0.6]), 1, 2).tolist() == [0, 0]


def test_entropy_table_is_the_mean_of_each_offramp_per_bin_and_empty_bins_take_the_nearest():
    p = fit_predictor(TRAIN, num_labels=2, threshold=0.35, bins=3, kind="entropy")
    assert p.counts.tolist() == [2, 0, 3]
    want = torch.tensor([[0.15, 0.40, 0.15],
                         [0.15, 0.40, 0.15],  # empty: bins 0 and 2 are equally near, the lower one wins
                         [1.87 / 3, 1.40 / 3, 1.10 / 3]], dtype=torch.float64)
    torch.testing.assert_close(p.table, want)
    # the table's answer per bin (1-based) for a sentence that does not leave at layer 1: bins 0/1 first fall below
    # 0.35 at off-ramp 3 (0.15), bin 2 never (0.467, 0.367): the final head, layer 4
    assert [r["predicted_exit_layer"] for r in p.rows()] == [3, 3, 4]
    assert [r["train_sentences"] for r in p.rows()] == [2, 0, 3]


def test_entropy_table_predicts_the_first_later_layer_below_the_threshold():
    p = fit_predictor(TRAIN, num_labels=2, threshold=0.35, bins=3, kind="entropy")
    dev = torch.tensor([[0.30, 9.0, 9.0],   # below S at layer 1: leaves there (its later entropies are never read)
                        [0.40, 0.0, 0.0],   # bin 1 (bin 0's row): 0.40, 0.15 -> off-ramp 3 (index 2)
                        [0.68, 0.0, 0.0],   # bin 2: 0.467, 0.367 never below 0.35 -> the final head (3)
                        [0.70, 0.0, 0.0],   # past ln 2: bin 2
                        [0.05, 0.9, 0.9]], dtype=torch.float64)
    assert p.predict(dev).tolist() == [0, 2, 3, 3, 0]
    # the same table at another threshold: 0.45 lets bin 2 out at off-ramp 3 (0.367), and 0.40 out at layer 1
    q = fit_predictor(TRAIN, num_labels=2, threshold=0.45, bins=3, kind="entropy")
    assert q.predict(dev).tolist() == [0, 0, 2, 2, 0]
    # strictly below, as the exit rule: a tabulated 0.40 does not pass S = 0.40
    r = fit_predictor(TRAIN, num_labels=2, threshold=0.40, bins=3, kind="entropy")
    assert r.predict(torch.tensor([[0.45, 0.0, 0.0]], dtype=torch.float64)).tolist() == [2]


def test_exit_layer_table_is_the_lower_median_exit_of_sentences_that_reach_it():
    # at S = 0.35 only rows 2-4 (bin 2) pass layer 1; their exits: 3 (never below), 1 (0.30), 2 (0.20) -> median 2
    p = fit_predictor(TRAIN, num_labels=2, threshold=0.35, bins=3, kind="exit_layer")
    assert p.counts.tolist() == [0, 0, 3]
    assert p.table.tolist() == [2, 2, 2]
    with_bin1 = torch.cat([TRAIN, torch.tensor([[0.40, 0.20, 0.60], [0.45, 0.40, 0.40]], dtype=torch.float64)])
    # bin 1 now has exits 1 and 3: the lower median, 1; bin 0 takes bin 1 (nearest)
    p = fit_predictor(with_bin1, num_labels=2, threshold=0.35, bins=3, kind="exit_layer")
    assert p.counts.tolist() == [0, 2, 3] and p.table.tolist() == [1, 1, 2]
    dev = torch.tensor([[0.30, 0.0, 0.0], [0.40, 0.9, 0.9], [0.10, 0.9, 0.9], [0.66, 0.0, 0.0]], dtype=torch.float64)
    assert p.predict(dev).tolist() == [0, 1, 0, 2]
    # every training sentence leaves at layer 1: nothing to fit, a sentence that stays runs every layer
    p = fit_predictor(TRAIN, num_labels=2, threshold=0.9, bins=3, kind="exit_layer")
    assert p.table.tolist() == [3, 3, 3] and p.predict(dev).tolist() == [0, 0, 0, 0]


def test_miss_statistics():
    predicted = torch.tensor([0, 2, 3, 1, 2])
    actual = torch.tensor([0, 1, 3, 3, 2])
    consulted = torch.tensor([False, True, True, True, True])
    s = prediction_stats(predicted, actual, consulted)
    assert s.sentences == 5 and s.consulted == pytest.approx(0.8)
    assert s.exact == pytest.approx(0.6) and s.exact_when_consulted == pytest.approx(0.5)
    assert s.mean_miss == pytest.approx(-0.2) and s.mean_abs_miss == pytest.approx(0.6)
    assert s.within_one == pytest.approx(0.8)
    assert s.miss_counts == {-2: 1, 0: 3, 1: 1}
    assert s.as_dict()["miss_counts"] == {"-2": 1, "0": 3, "1": 1}


#: L = 3; layer 1 done at 2 ms, layer 2 at 5 ms, the final head at 9 ms. Sentences (predicted, actual):
#: A (1, 1) exact; B (1, 2) under-predicted; C (2, 2) exact; D (2, 1) over-predicted; E (0, 0) left at layer 1
PREDICTED, ACTUAL = torch.tensor([1, 1, 2, 2, 0]), torch.tensor([1, 2, 2, 1, 0])
PROFILE = torch.tensor([2.0, 5.0, 9.0])


def test_scheduled_latency_by_hand():
    # target 7: predicted layer 2 ends at 5 ms at full speed, so the 3 ms after layer 1 stretch to 5 ms (x 5/3);
    # predicted layer 3 ends at 9 ms > 7: no slower clock helps, full speed
    run_on = scheduled_latency_ms(PREDICTED, ACTUAL, PROFILE, 7.0, "run_on")
    torch.testing.assert_close(run_on, torch.tensor([7.0, 2 + 7 * 5 / 3, 9.0, 5.0, 2.0], dtype=torch.float64))
    stop = scheduled_latency_ms(PREDICTED, ACTUAL, PROFILE, 7.0, "stop")  # B leaves at its predicted layer
    torch.testing.assert_close(stop, torch.tensor([7.0, 7.0, 9.0, 5.0, 2.0], dtype=torch.float64))
    # target 10: layer 3 now fits (x 8/7), layer 2 stretches x 8/3
    run_on = scheduled_latency_ms(PREDICTED, ACTUAL, PROFILE, 10.0, "run_on")
    torch.testing.assert_close(run_on, torch.tensor([10.0, 2 + 7 * 8 / 3, 10.0, 2 + 3 * 8 / 7, 2.0],
                                                    dtype=torch.float64))


def test_latency_target_fractions_by_hand():
    f = latency_target_fractions(PREDICTED, ACTUAL, PROFILE, 8.5, [1.5, 7.0, 10.0])
    assert f["7"] == pytest.approx({"all_layers": 0.0, "early_exit": 0.6, "predicted": 0.6, "predicted_stop": 0.8})
    assert f["10"] == pytest.approx({"all_layers": 1.0, "early_exit": 1.0, "predicted": 0.8, "predicted_stop": 1.0})
    # below layer 1's own time nothing can meet it
    assert f["1.5"] == pytest.approx({"all_layers": 0.0, "early_exit": 0.0, "predicted": 0.0, "predicted_stop": 0.0})


def test_latency_with_each_sentence_its_own_layer_times():
    predicted, actual = torch.tensor([1, 1]), torch.tensor([1, 1])
    cumulative = torch.tensor([[1.0, 2.0, 3.0],    # fits: the 1 ms after layer 1 stretches to 2 ms
                               [2.0, 4.0, 6.0]])   # its layer 2 ends at 4 ms > 3 even at full speed
    torch.testing.assert_close(scheduled_latency_ms(predicted, actual, cumulative, 3.0),
                               torch.tensor([3.0, 4.0], dtype=torch.float64))
    f = latency_target_fractions(predicted, actual, cumulative, torch.tensor([2.9, 6.1]), [3.0])
    assert f["3"] == pytest.approx({"all_layers": 0.5, "early_exit": 0.5, "predicted": 0.5, "predicted_stop": 0.5})


def test_report_on_dev_logits_scores_edgeberts_forced_exit():
    """L = 3, C = 2, S = 0.3. Logits [0, 0] have entropy ln 2 (argmax: class 0), [10, 0] / [0, 10] ~0.0005."""
    low0, low1, high = [10.0, 0.0], [0.0, 10.0], [0.0, 0.0]
    logits = torch.tensor([[low0, high, high],    # leaves at layer 1 with class 0
                           [high, low1, low0],    # leaves at layer 2 with class 1
                           [high, high, low1]])   # runs to the head: class 1
    labels = torch.tensor([0, 1, 1])
    ln2 = math.log(2)
    train = torch.tensor([[ln2, 0.0], [ln2, 0.0], [ln2, ln2]])  # exits 1, 1, 2: the table says layer 2 (index 1)
    predictor = fit_predictor(train, num_labels=2, threshold=0.3, bins=2, kind="exit_layer")
    r = predictor_report(predictor, logits, labels, "acc")
    assert r["exact"] == pytest.approx(2 / 3) and r["miss_counts"] == {"-1": 1, "0": 2}
    assert r["score_at_threshold"] == pytest.approx(1.0)
    # EdgeBERT's code stops the third sentence at layer 2, whose off-ramp says class 0: wrong
    assert r["score_stop_at_prediction"] == pytest.approx(2 / 3)
    assert r["mean_predicted_layer"] == pytest.approx(5 / 3) and r["mean_actual_layer"] == pytest.approx(2.0)
    assert r["consulted"] == pytest.approx(2 / 3) and r["exact_when_consulted"] == pytest.approx(0.5)


@pytest.mark.parametrize("call, message", [
    (lambda: fit_predictor(TRAIN, 2, 0.3, 3, "mode"), "early_exit.predictor.table must be one of"),
    (lambda: fit_predictor(TRAIN[:0], 2, 0.3, 3), "needs training entropies"),
    (lambda: scheduled_latency_ms(PREDICTED, ACTUAL, PROFILE, 7.0, "wait"), "latency rule must be one of"),
])
def test_bad_calls_are_one_line(call, message):
    with pytest.raises(LowbitConfigError, match=message) as err:
        call()
    assert "\n" not in str(err.value)
