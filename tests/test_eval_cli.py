"""`medgrpo eval` (cluster/evaluation.py): every prediction form, empty and bad inputs, the HTTP judge, the CLI as a
subprocess; and the reader's ``require_media=False`` option that evaluation reads references with."""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from judge_http_stub import KEY_ENV, SECRET, JudgeServer

from cluster.evaluation import EvalInputError, evaluate_files, run_eval
from data.reader import read_instances

REPO = Path(__file__).resolve().parent.parent
RULE_COLUMNS = ["cvs_acc", "nap_acc", "sa_acc", "stg_miou", "tag_miou@0.3", "tag_miou@0.5", "dvc_f1"]
LLM_COLUMNS = ["dvc_llm", "vs_llm", "rc_llm"]
# synth_dir has 2 eval rows per video qa_type (n_per_task=6): 22 references; dvc, vs and rc have two qa_types each
N_REFS = 22
N_BY_COLUMN = {"cvs_acc": 2, "nap_acc": 2, "sa_acc": 2, "stg_miou": 2, "tag_miou@0.3": 2, "tag_miou@0.5": 2,
               "dvc_f1": 4}


def _args(refs, preds, out=None, **kw) -> argparse.Namespace:
    base = dict(references=str(refs), predictions=str(preds), out=str(out) if out else None, judge="none",
                judge_model="", judge_base_url="http://127.0.0.1:8000/v1", judge_api_key_env="OPENAI_API_KEY",
                data_root=None)
    base.update(kw)
    return argparse.Namespace(**base)


def _run(args: argparse.Namespace) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = run_eval(args, stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def refs(synth_dir):
    res = read_instances(synth_dir / "eval.jsonl")
    assert len(res.instances) == N_REFS and not res.skipped
    return res.instances


def _write_predictions(path: Path, refs, form: str) -> Path:
    if form == "jsonl":
        path.write_text("".join(json.dumps({"id": r.id, "qa_type": r.qa_type, "prediction": r.answer}) + "\n"
                                for r in refs))
    elif form == "list":
        path.write_text(json.dumps([{"id": r.id, "qa_type": r.qa_type, "prediction": r.answer} for r in refs]))
    elif form == "index_dict":
        path.write_text(json.dumps({str(i): {"answer": r.answer} for i, r in enumerate(refs)}))
    else:
        raise ValueError(form)
    return path


# --------------------------------------------------------------------------------------- perfect predictions

@pytest.mark.parametrize("ref_file,form", [("eval.jsonl", "jsonl"), ("eval.json", "list"),
                                           ("parquet", "index_dict")])
def test_perfect_predictions_score_one_on_every_rule_column(synth_dir, refs, tmp_path, ref_file, form):
    if ref_file == "parquet":  # a Parquet copy outside synth_dir: its media lie outside the file's folder
        from data.parquet import write_parquet

        ref_path = tmp_path / "refs.parquet"
        write_parquet(refs, ref_path)
    else:
        ref_path = synth_dir / ref_file
    preds = _write_predictions(tmp_path / f"preds.{'jsonl' if form == 'jsonl' else 'json'}", refs, form)
    out = tmp_path / "deep" / "metrics.json"
    rc, stdout, stderr = _run(_args(ref_path, preds, out))
    assert rc == 0, stderr
    report = json.loads(out.read_text())
    for col in RULE_COLUMNS:
        assert report["table"][col] == pytest.approx(1.0), col
        assert report["counts"]["n"][col] == N_BY_COLUMN[col], col
    assert report["table"]["dvc_llm"] is None and report["skipped"] == LLM_COLUMNS
    c = report["counts"]
    assert c["missing_predictions"] == 0 and c["parse_failures"] == {} and c["references"] == N_REFS
    assert report["inputs"]["predictions"]["form"] == form
    assert report["inputs"]["predictions"]["read"] == N_REFS and report["inputs"]["predictions"]["skipped"] == 0
    assert report["inputs"]["references"]["read"] == N_REFS
    assert set(report["by_source"]) == {"SynthEasy", "SynthMedium"}
    table_lines = {line.split()[0]: line.split() for line in stdout.splitlines() if line.strip()}
    assert table_lines["cvs_acc"][1:] == ["2", "1.000", "1.000", "1.000"]
    assert table_lines["dvc_llm"][2] == "skipped"
    assert f"metrics written to {out}" in stdout


def test_similarity_fn_passes_through(synth_dir, refs, tmp_path):
    preds = _write_predictions(tmp_path / "p.jsonl", refs, "jsonl")
    seen = []

    def sim(pairs):
        seen.extend(pairs)
        return [0.25] * len(pairs)

    report = evaluate_files(synth_dir / "eval.jsonl", preds, similarity_fn=sim)
    assert len(seen) == 12  # 4 dvc + 4 vs + 4 rc captions
    assert report["table"]["vs_sim"] == pytest.approx(0.25) and report["counts"]["n"]["rc_sim"] == 4


# ------------------------------------------------------------------------------ empty and partial predictions

@pytest.mark.parametrize("content", ["", "[]\n"])
def test_empty_predictions_score_zero_and_count_every_reference_missing(synth_dir, tmp_path, content):
    preds = tmp_path / "empty.json"
    preds.write_text(content)
    out = tmp_path / "m.json"
    rc, stdout, stderr = _run(_args(synth_dir / "eval.jsonl", preds, out))
    assert rc == 0, stderr
    report = json.loads(out.read_text())
    assert all(report["table"][col] == 0.0 for col in RULE_COLUMNS)
    assert report["counts"]["missing_predictions"] == N_REFS
    assert report["counts"]["missing_by_column"]["dvc_f1"] == 4
    assert "missing predictions 22" in stdout


def test_partial_predictions_count_bad_lines_and_parse_failures(synth_dir, refs, tmp_path):
    tal = next(r for r in refs if r.qa_type == "tal")
    stg = next(r for r in refs if r.qa_type == "stg")
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps({"id": tal.id, "qa_type": "tal", "prediction": tal.answer}) + "\n"
                     + "{not json\n"
                     + json.dumps({"id": stg.id, "qa_type": "stg", "prediction": "I cannot see a box."}) + "\n")
    out = tmp_path / "m.json"
    rc, stdout, _ = _run(_args(synth_dir / "eval.jsonl", preds, out))
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["table"]["tag_miou@0.3"] == pytest.approx(0.5)  # one of two tal references, perfect
    assert report["table"]["stg_miou"] == 0.0
    assert report["counts"]["missing_predictions"] == N_REFS - 2
    assert sum(report["counts"]["parse_failures"].values()) == 1
    assert report["inputs"]["predictions"]["skipped_by_reason"] == {"bad_json": 1}
    assert "skipped entries 1 (bad_json 1)" in stdout and "parse failures:" in stdout


# ---------------------------------------------------------------------------------------------- bad inputs

def test_bad_inputs_exit_2_with_one_line(synth_dir, refs, tmp_path):
    good_preds = _write_predictions(tmp_path / "good.jsonl", refs, "jsonl")
    garbage = tmp_path / "garbage.txt"
    garbage.write_text("this is not json\nnor is this\n")
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text(json.dumps({"id": "other&&0&&1&&1.0", "qa_type": "tal", "prediction": "1-2 seconds."}) + "\n")
    from data.parquet import write_parquet

    parquet = tmp_path / "refs.parquet"
    write_parquet(refs, parquet)
    cases = [
        (_args(tmp_path / "nope.json", good_preds), "no such file"),
        (_args(tmp_path, good_preds), "is a directory"),
        (_args(synth_dir / "eval.jsonl", tmp_path / "nope.jsonl"), "predictions:"),
        (_args(synth_dir / "eval.jsonl", garbage), "bad_json 2"),
        (_args(synth_dir / "eval.jsonl", foreign), "unknown_id 1"),
        (_args(synth_dir / "test.json", good_preds), "no reference has a usable ground truth"),
        (_args(parquet, good_preds, data_root=[str(tmp_path / "elsewhere")]), "path_outside_roots 22"),
        (_args(synth_dir / "eval.jsonl", good_preds, judge="openai"), "--judge-model"),
    ]
    for args, needle in cases:
        rc, stdout, stderr = _run(args)
        assert rc == 2, (needle, stdout, stderr)
        assert stderr.count("\n") == 1 and stderr.startswith("medgrpo eval: error: "), stderr
        assert needle in stderr, (needle, stderr)
        assert stdout == ""


def test_unwritable_out_exits_2(synth_dir, refs, tmp_path):
    preds = _write_predictions(tmp_path / "p.jsonl", refs, "jsonl")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, _, stderr = _run(_args(synth_dir / "eval.jsonl", preds, blocker / "m.json"))
    assert rc == 2 and "cannot write" in stderr


# --------------------------------------------------------------------------------------------- HTTP judge

@pytest.fixture
def server():
    s = JudgeServer()
    yield s
    s.close()


def test_openai_judge_fills_llm_columns(synth_dir, refs, tmp_path, server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    preds = _write_predictions(tmp_path / "p.jsonl", refs, "jsonl")
    out = tmp_path / "m.json"
    rc, stdout, stderr = _run(_args(synth_dir / "eval.jsonl", preds, out, judge="openai", judge_model="judge-model",
                                    judge_base_url=server.url, judge_api_key_env=KEY_ENV))
    assert rc == 0, stderr
    report = json.loads(out.read_text())
    for col in LLM_COLUMNS:  # the stub's rubric reply has mean 3.6
        assert report["table"][col] == pytest.approx(3.6), col
        assert report["counts"]["n"][col] == 4, col
    assert report["skipped"] == [] and report["counts"]["judge_missing"] == {}
    captions = {(r.answer.strip(), r.answer.strip()) for r in refs if r.family in ("dvc", "vs", "rc")}
    assert len(server.requests) == len(captions)  # one call per distinct pair
    assert all(h.get("Authorization") == f"Bearer {SECRET}" for h, _ in server.requests)
    assert all(body["model"] == "judge-model" for _, body in server.requests)
    assert report["judge"]["ok"] == 12 and report["judge"]["api_key_env"] == KEY_ENV
    assert SECRET not in stdout and SECRET not in stderr and SECRET not in out.read_text()
    assert "judge openai (judge-model): 12 of 12 judgements" in stdout


def test_judge_that_never_answers_exits_1_and_counts_missing(synth_dir, refs, tmp_path, server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    server.behavior = lambda n, body: (400, {"error": "bad request"}, 0.0)  # not retryable: fast
    preds = _write_predictions(tmp_path / "p.jsonl", refs, "jsonl")
    out = tmp_path / "m.json"
    rc, stdout, stderr = _run(_args(synth_dir / "eval.jsonl", preds, out, judge="openai", judge_model="m",
                                    judge_base_url=server.url, judge_api_key_env=KEY_ENV))
    assert rc == 1
    report = json.loads(out.read_text())
    assert all(report["table"][col] is None for col in LLM_COLUMNS)
    assert report["counts"]["judge_missing"] == {"dvc_llm": 4, "vs_llm": 4, "rc_llm": 4}
    assert report["judge"]["failures_by_reason"] == {"http_4xx": 12}
    assert report["table"]["cvs_acc"] == 1.0  # rule columns are unaffected
    assert "judge returned no judgement for 12 pairs (http_4xx 12)" in stderr


# --------------------------------------------------------------------------------------------- subprocess

def test_cli_subprocess_prints_table_and_writes_json(synth_dir, refs, tmp_path):
    preds = _write_predictions(tmp_path / "p.json", refs, "list")
    out = tmp_path / "m.json"
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    cmd = [sys.executable, "-m", "cluster.cli", "eval", "--references", str(synth_dir / "eval.json"),
           "--predictions", str(preds), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "tag_miou@0.5" in proc.stdout and "skipped (no judge): dvc_llm, vs_llm, rc_llm" in proc.stdout
    assert json.loads(out.read_text())["table"]["tag_miou@0.5"] == pytest.approx(1.0)

    bad = subprocess.run(cmd[:7] + [str(tmp_path / "missing.json")] + cmd[8:], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.startswith("medgrpo eval: error: predictions:") and bad.stderr.count("\n") == 1
    assert "Traceback" not in bad.stderr


# ------------------------------------------------------------------------------ reader: require_media=False

def test_reader_require_media_false_accepts_foreign_and_absent_media(tmp_path):
    def row(**over):
        r = {"conversations": [{"from": "human", "value": "<video>\nWhen?"}, {"from": "gpt", "value": "1-2 seconds."}],
             "metadata": {"fps": "1.0", "video_id": "v", "input_video_start_frame": "0"},
             "qa_type": "tal", "data_source": "AVOS"}
        r.update(over)
        return r

    p = tmp_path / "data" / "refs.json"
    p.parent.mkdir()
    p.write_text(json.dumps([row(video="/somewhere/else/v.mp4"), row(), row(video="clips/here.mp4")]))
    strict = read_instances(p)
    assert [reason for _, reason in strict.skipped] == ["path_outside_roots", "missing_media"]
    assert len(strict.instances) == 1
    lax = read_instances(p, require_media=False)
    assert not lax.skipped and len(lax.instances) == 3
    assert lax.instances[0].video == "/somewhere/else/v.mp4" and lax.instances[1].video is None
    assert lax.instances[2].video == os.path.realpath(p.parent / "clips" / "here.mp4")  # still resolved against the file

    with pytest.raises(EvalInputError, match="no usable row among 3"):
        evaluate_files(p, tmp_path / "none.json", data_roots=[str(tmp_path / "x")])


def test_eval_judge_gets_task_hints_and_similarity_columns_fill_by_default(synth_dir, refs, tmp_path, server,
                                                                          monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    preds = _write_predictions(tmp_path / "p.jsonl", refs, "jsonl")
    out = tmp_path / "m.json"
    args = _args(synth_dir / "eval.jsonl", preds, out, judge="openai", judge_model="judge-model",
                 judge_base_url=server.url, judge_api_key_env=KEY_ENV)
    assert not hasattr(args, "similarity_model")  # the CLI's default applies: the bundled all-MiniLM-L6-v2
    rc, stdout, stderr = _run(args)
    assert rc == 0, stderr
    report = json.loads(out.read_text())
    tasks = [next(m["content"] for m in body["messages"] if m["role"] == "user").split("\n")[0]
             for _, body in server.requests]
    assert sum("Task: dense video captions" in t for t in tasks) == 4  # one per dvc reference (distinct pairs)
    assert sum("Task: video summary" in t for t in tasks) == 4 and sum("Task: region caption" in t for t in tasks) == 4
    for col in ("dvc_sim", "vs_sim", "rc_sim"):  # perfect predictions: cosine 1
        assert report["table"][col] == pytest.approx(1.0, abs=1e-4) and report["counts"]["n"][col] == 4, col
    assert report["table"]["vs_llm"] == pytest.approx(3.6)

    rc, stdout, _ = _run(_args(synth_dir / "eval.jsonl", preds, out, similarity_model="none"))
    assert rc == 0 and "vs_sim" not in json.loads(out.read_text())["columns"]
    rc, _, stderr = _run(_args(synth_dir / "eval.jsonl", preds, out, similarity_model=str(tmp_path / "nowhere")))
    assert rc == 2 and "similarity" in stderr and "--similarity-model none" in stderr and stderr.count("\n") == 1
