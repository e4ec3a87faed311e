"""Baselines (rewards/baselines.py) and their place in the eval tables (leaderboard, `medgrpo eval`, demo)."""
from __future__ import annotations

import pytest

from data.schema import Instance
from rewards.baselines import baseline_predictions, baseline_table, fit_baselines
from rewards.leaderboard import evaluate, flat_metrics, format_table


def ref(rid: str, qa_type: str, source: str, answer=None, struc_info=None, question: str = "q") -> Instance:
    return Instance(id=rid, qa_type=qa_type, data_source=source, question=question, answer=answer,
                    struc_info=struc_info)


NAP_Q = "The procedure includes the following step list: ['cutting', 'clipping', 'irrigating']. What comes next?"


def nap(rid: str, source: str, label: str) -> Instance:
    return ref(rid, "next_action", source, label, question=NAP_Q)


def test_majority_class_per_source_and_pooled_vs_source_mean():
    train = [nap("a1", "A", "cutting"), nap("a2", "A", "cutting"), nap("a3", "A", "clipping"),
             nap("b1", "B", "irrigating"), nap("b2", "B", "irrigating"), nap("b3", "B", "cutting")]
    b = fit_baselines(train)
    assert b.answers[("next_action", "A")] == "cutting" and b.answers[("next_action", "B")] == "irrigating"
    assert b.answers[("next_action", "*")] in ("cutting", "irrigating")  # 3 each: the first most common
    # eval: A has 1 of 4 "cutting", B 2 of 2 "irrigating"; source C (unseen in training) falls back to "*"
    evals = [nap("e1", "A", "cutting"), nap("e2", "A", "clipping"), nap("e3", "A", "clipping"),
             nap("e4", "A", "irrigating"), nap("e5", "B", "irrigating"), nap("e6", "B", "irrigating")]
    res = baseline_table(train, evals)
    assert res["by_source"]["A"]["nap_acc"] == pytest.approx(0.25)
    assert res["by_source"]["B"]["nap_acc"] == 1.0
    assert res["table"]["nap_acc"] == pytest.approx(3 / 6)  # pooled: every row once
    assert res["source_mean"]["nap_acc"] == pytest.approx((0.25 + 1.0) / 2)  # mean of the per-source means
    assert res["kind"]["nap_acc"] == "majority"
    assert res["table"]["dvc_f1"] is None and res["table"]["cvs_acc"] is None  # no such rows / no baseline
    unseen = nap("c1", "C", "cutting")
    assert baseline_predictions(b, [unseen]) == {unseen.uid: b.answers[("next_action", "*")]}


def test_best_constant_for_a_class_of_a_summed_score():
    # CVS is scored by the class of the summed score: totals 2, 3 (class 1) twice, total 6 (class 3) once
    mk = lambda i, a, b_, c: ref(f"c{i}", "cvs_assessment", "A",  # noqa: E731
                                 f"Two structures: {a}, Cystic plate: {b_}, Hepatocystic triangle: {c}")
    train = [mk(0, 1, 1, 0), mk(1, 1, 1, 1), mk(2, 2, 2, 2)]
    const = fit_baselines(train).answers[("cvs_assessment", "A")]
    assert const in (train[0].answer, train[1].answer)
    res = baseline_table(train, [mk(3, 0, 2, 1), mk(4, 2, 2, 2)])
    assert res["table"]["cvs_acc"] == 0.5


def test_grounding_constants_are_training_means():
    train = [ref("t1", "tal", "A", "0.0-2.0 seconds."), ref("t2", "tal", "A", "2.0-4.0 seconds.")]
    b = fit_baselines(train)
    assert b.answers[("tal", "A")] == "1.0-3.0 seconds."
    res = baseline_table(train, [ref("t3", "tal", "A", "1.0-3.0 seconds."), ref("t4", "tal", "A", "5-7 seconds.")])
    assert res["table"]["tag_miou@0.3"] == pytest.approx(0.5) and res["kind"]["tag_miou@0.5"] == "mean"

    stg = [ref("s1", "stg", "A", struc_info=[{"bbox_dict": {"1.0": [0, 0, 10, 10], "2.0": [10, 10, 20, 20]}}])]
    assert fit_baselines(stg).answers[("stg", "A")] == "0.0 seconds: [5.0, 5.0, 15.0, 15.0]"
    # the constant box applies at every asked time (carry-forward)
    ev = ref("s2", "stg", "A", struc_info=[{"bbox_dict": {"3.0": [5, 5, 15, 15], "4.0": [5, 5, 15, 15]}}])
    assert baseline_table(stg, [ev])["table"]["stg_miou"] == 1.0

    box = [ref(f"b{i}", "box_grounding", "A", struc_info={"bbox": bb, "image_size": [100, 50]})
           for i, bb in enumerate(([0, 0, 20, 10], [20, 10, 40, 30]))]
    fitted = fit_baselines(box)
    assert fitted.rel_boxes[("box_grounding", "A")] == pytest.approx((0.1, 0.1, 0.3, 0.4))
    big = ref("b9", "box_grounding", "A", struc_info={"bbox": [20, 10, 60, 40], "image_size": [200, 100]})
    assert baseline_predictions(fitted, [big]) == {big.uid: "[20.0, 10.0, 60.0, 40.0]"}  # scaled to its size
    assert baseline_table(box, [big])["table"]["box_miou"] == pytest.approx(1.0)


def test_flat_metrics_and_table_label_pooled_and_source_mean():
    train = [nap("a1", "A", "cutting"), nap("b1", "B", "irrigating")]
    evals = [nap("e1", "A", "cutting"), nap("e2", "A", "clipping"), nap("e3", "B", "cutting")]
    res = evaluate(evals, {"e1": "cutting", "e2": "cutting", "e3": "cutting"})
    assert res["table"]["nap_acc"] == pytest.approx(2 / 3) and res["source_mean"]["nap_acc"] == pytest.approx(0.75)
    flat = flat_metrics(res, "eval/")
    assert flat["eval/nap_acc"] == pytest.approx(2 / 3) and flat["eval/source_mean/nap_acc"] == pytest.approx(0.75)
    assert flat["eval/A/nap_acc"] == 0.5 and "eval/dvc_f1" not in flat
    text = format_table(res, baseline_table(train, evals))
    lines = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
    col = lines["summary"].index("nap_acc")
    assert lines["src-mean"][col] == "0.750"
    assert lines["baseline(all)"][col] == "0.333" and lines["baseline(src-mean)"][col] == "0.250"
    assert "pooled over every reference" in text and "mean of the per-source means" in text


def test_demo_table_marks_what_beats_the_baseline():
    from cluster.demo import demo_table

    train = [nap("a1", "A", "cutting"), nap("a2", "A", "cutting")]
    evals = [nap("e1", "A", "cutting"), nap("e2", "A", "clipping")]
    base = baseline_table(train, evals)
    before = evaluate(evals, {})
    after = evaluate(evals, {"e1": "cutting", "e2": "clipping"})
    text = demo_table(base, before, after)
    rows = [line.split() for line in text.splitlines() if line.strip().startswith("nap_acc")]
    assert rows[0] == ["nap_acc", "0.500", "0.000", "1.000", ">"]  # pooled
    assert rows[1] == ["nap_acc", "0.500", "0.000", "1.000", ">"]  # src-mean (one source)
    same = demo_table(base, before, evaluate(evals, {"e1": "cutting", "e2": "cutting"}))
    assert not any(line.rstrip().endswith(">") for line in same.splitlines())


def test_eval_command_prints_and_writes_the_baseline(synth_dir, tmp_path):
    import argparse
    import io
    import json

    from cluster.evaluation import run_eval

    preds = tmp_path / "empty.jsonl"
    preds.write_text("")
    out = tmp_path / "m.json"
    for baseline_from, note in ((None, "fitted on the references themselves"),
                                (str(synth_dir / "train.jsonl"), "train.jsonl")):
        args = argparse.Namespace(references=str(synth_dir / "eval.jsonl"), predictions=str(preds), out=str(out),
                                  judge="none", judge_model="", judge_base_url="", judge_api_key_env="X",
                                  data_root=None, baseline_from=baseline_from)
        stdout = io.StringIO()
        assert run_eval(args, stdout=stdout, stderr=io.StringIO()) == 0
        report = json.loads(out.read_text())
        assert note in report["baseline"]["note"] and note in stdout.getvalue()
        assert report["baseline"]["table"]["nap_acc"] is not None and report["baseline"]["table"]["dvc_f1"] is None
        assert "baseline(all)" in stdout.getvalue() and "src-mean" in stdout.getvalue()
        assert set(report["source_mean"]) == set(report["table"])
    # fitted on the references themselves, the per-source majority scores at least the largest class's share
    from collections import Counter

    from data.reader import read_instances

    nap_labels = [r.answer for r in read_instances(synth_dir / "eval.jsonl").instances if r.qa_type == "next_action"]
    args.baseline_from = None
    run_eval(args, stdout=io.StringIO(), stderr=io.StringIO())
    report = json.loads(out.read_text())
    assert report["baseline"]["table"]["nap_acc"] >= Counter(nap_labels).most_common(1)[0][1] / len(nap_labels)
