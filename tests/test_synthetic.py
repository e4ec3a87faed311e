"""Synthetic MedVidBench: files, real answer formats, ground truth against the manifest and the decoded pixels."""
from __future__ import annotations

import ast
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from data import synthetic as syn
from data.schema import IMAGE_QA_TYPES, VIDEO_QA_TYPES

N_PER_TASK = 4

_NUM = r"\d+(?:\.\d+)?"
_BOX = rf"\[{_NUM}, {_NUM}, {_NUM}, {_NUM}\]"
ANSWER_FORMATS = {  # each pattern must also accept the real example answer (checked below)
    "tal": r"\d+\.\d-\d+\.\d(?:, \d+\.\d-\d+\.\d)* seconds\.",
    "stg": rf"\d+\.\d seconds: {_BOX}(?: \d+\.\d seconds: {_BOX})*",
    "dense_captioning": r"{e}(?:\n{e})*".format(e=r"\d+\.\d-\d+\.\d seconds: [a-z ]+: [A-Z][^\n]*"),
    "video_summary": r"[A-Z][^\n]*\.",
    "region_caption": r"[A-Z][^\n]*\.",
    "skill_assessment": ", ".join(f"{re.escape(a)}: [1-5]/5" for a in syn.SKILL_ASPECTS),
    "cvs_assessment": r"Two structures: [0-2], Cystic plate: [0-2], Hepatocystic triangle: [0-2]",
}


def _fmt_key(qa_type: str) -> str:
    return next(k for k in ANSWER_FORMATS if qa_type.startswith(k)) if qa_type != "next_action" else "next_action"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _question(row: dict) -> str:
    return row["conversations"][0]["value"].split("\n", 1)[1]


def _answer(row: dict) -> str:
    return row["conversations"][1]["value"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    files = syn.generate(out, n_per_task=N_PER_TASK, seed=3)
    return out, files, syn.load_manifest(out)


# -- rasterisation ------------------------------------------------------------------------------------------------

def test_shape_boxes_hand_computed():
    def box(shape, cx, cy, w, h, W=112, H=84):
        m = syn.shape_mask(shape, cx, cy, w, h, W, H)
        return None if m is None else syn.mask_box(*m)

    assert box("rectangle", 20, 30, 10, 6) == [15, 27, 25, 33]
    assert box("circle", 20, 30, 16, 16) == [12, 22, 28, 38]
    # apex row at y=31 has no pixel centre within the half-width; the base row is y=48; x spans 40..59
    assert box("triangle", 50, 40, 20, 18) == [40, 32, 60, 49]
    # |dx|/11 + |dy|/7 <= 1 at pixel centres: on the middle rows |dx| <= 10.2 (x 40..59), on the middle
    # columns |dy| <= 6.68 (y + 0.5 in [33.3, 46.7]: y 33..46)
    assert box("diamond", 50, 40, 22, 14) == [40, 33, 60, 47]
    assert box("rectangle", 2, 2, 10, 6) == [0, 0, 7, 5]  # clipped at the frame border
    assert box("rectangle", -20, 30, 10, 6) is None  # wholly outside
    with pytest.raises(ValueError, match="unknown shape"):
        syn.shape_mask("hexagon", 10, 10, 4, 4, 20, 20)


def test_place_and_motion_words():
    assert syn.place_name(10, 10, 112, 84) == "upper left"
    assert syn.place_name(56, 42, 112, 84) == "center"
    assert syn.place_name(100, 42, 112, 84) == "right side"
    assert syn.motion_phrase((10, 10), (30, 12)) == "moving to the right"
    assert syn.motion_phrase((30, 30), (20, 20)) == "moving toward the upper left"
    assert syn.motion_phrase((30, 30), (31, 31)) == "holding its position"


def test_skill_scores_follow_the_spec_levels():
    assert syn.skill_scores(0.3, 0, 0) == dict.fromkeys(syn.SKILL_ASPECTS, 5)
    s = syn.skill_scores(3.3, 3, 2)
    assert all(v == 1 for v in s.values())
    assert syn.skill_level_of(s) == "novice"
    assert syn.skill_level_of(dict(zip(syn.SKILL_ASPECTS, [4, 3, 3, 3, 3, 3]))) == "intermediate"  # mean 3.17
    assert syn.skill_level_of(dict(zip(syn.SKILL_ASPECTS, [4, 4, 4, 3, 3, 3]))) == "intermediate"  # mean 3.5
    assert syn.skill_level_of(dict(zip(syn.SKILL_ASPECTS, [4, 4, 4, 4, 3, 3]))) == "expert"  # 3.67
    assert syn.skill_level_of(dict(zip(syn.SKILL_ASPECTS, [2, 2, 2, 2, 2, 2]))) == "novice"


# -- files and shapes ---------------------------------------------------------------------------------------------

def test_files_counts_and_media(synth):
    out, files, manifest = synth
    assert set(files) == {"train", "eval", "eval_json", "test", "images_train", "images_eval", "knowledge",
                          "manifest"}
    n_eval = max(2, N_PER_TASK // 4)
    train, evl = _rows(files["train"]), _rows(files["eval"])
    assert Counter(r["qa_type"] for r in train) == dict.fromkeys(VIDEO_QA_TYPES, N_PER_TASK)
    assert Counter(r["qa_type"] for r in evl) == dict.fromkeys(VIDEO_QA_TYPES, n_eval)
    assert Counter(r["qa_type"] for r in _rows(files["images_train"])) == dict.fromkeys(IMAGE_QA_TYPES, N_PER_TASK)
    assert json.loads(files["eval_json"].read_text()) == evl
    test_rows = json.loads(files["test"].read_text())
    assert len(test_rows) == len(evl)
    assert all(len(r["conversations"]) == 1 and "struc_info" not in r and "gnd" not in r for r in test_rows)
    assert {r["data_source"] for r in train} == set(syn.DEFAULT_SOURCES)
    for row in train + evl:
        media = row["video"] if isinstance(row["video"], list) else [row["video"]]
        assert all((out / m).is_file() for m in media), row["id"]
        assert not Path(media[0]).is_absolute()
    for row in _rows(files["images_train"]):
        assert (out / row["image"]).is_file()
    # (id, qa_type) is unique and train/eval clips are disjoint
    keys = [(r["id"], r["qa_type"]) for r in train + evl]
    assert len(keys) == len(set(keys))
    assert not {r["metadata"]["video_id"] for r in train} & {r["metadata"]["video_id"] for r in evl}
    knowledge = json.loads(files["knowledge"].read_text())
    assert set(syn.SEVERITY_CLASSES) <= set(knowledge)


def test_tidy_and_messy_shapes_are_both_present(synth):
    _, files, _ = synth
    rows = _rows(files["train"]) + _rows(files["eval"])
    fps_types = {type(r["metadata"]["fps"]).__name__ for r in rows}
    assert fps_types == {"str", "float"}
    assert any(isinstance(r["video"], list) for r in rows) and any(isinstance(r["video"], str) for r in rows)
    shapes = Counter("absent" if "struc_info" not in r else
                     f"{type(r['struc_info']).__name__}{'-empty' if not r['struc_info'] else ''}" for r in rows)
    assert {"absent", "list", "dict", "list-empty", "dict-empty"} <= set(shapes)
    gnd = [r for r in rows if "gnd" in r]
    assert gnd and all(r["gnd"] == _answer(r) for r in gnd)
    stg_shapes = {json.dumps(type(r.get("struc_info")).__name__) + str(sorted(r["struc_info"])[:1])
                  if isinstance(r.get("struc_info"), dict) else type(r.get("struc_info")).__name__
                  for r in rows if r["qa_type"] == "stg"}
    assert len(stg_shapes) >= 3  # list-with-bbox_dict, dict-with-bbox_dict, bare time-keyed dict / empty list
    dvc = [r for r in rows if r["qa_type"].startswith("dense_captioning") and r.get("struc_info")]
    assert any(isinstance(r["struc_info"][0], list) for r in dvc)  # [[segments]]
    assert any(isinstance(r["struc_info"][0], dict) and "dc_segments" in r["struc_info"][0] for r in dvc)


def test_answer_formats_match_the_real_examples(synth, examples):
    for qa_type, ex in examples.items():  # the patterns describe the real answers too
        key = _fmt_key(qa_type)
        if key != "next_action":
            assert re.fullmatch(ANSWER_FORMATS[key], ex["answer"]), (qa_type, ex["answer"])
    _, files, _ = synth
    for row in _rows(files["train"]) + _rows(files["eval"]):
        q, a, key = _question(row), _answer(row), _fmt_key(row["qa_type"])
        if key == "next_action":
            steps = ast.literal_eval(re.search(r"step list: (\[[^\]]*\])", q).group(1))
            assert a in steps, (a, steps)
        else:
            assert re.fullmatch(ANSWER_FORMATS[key], a), (row["qa_type"], a)
    cvs_q = examples["cvs_assessment"]["question"]
    sa_q = examples["skill_assessment"]["question"]
    for row in _rows(files["train"]):
        if row["qa_type"] == "cvs_assessment":
            assert _question(row) == cvs_q.replace("Cholec80-CVS", row["data_source"])
        if row["qa_type"] == "skill_assessment":
            assert _question(row).endswith(sa_q[sa_q.index("Review the surgical procedure"):])


# -- ground truth -------------------------------------------------------------------------------------------------

def _tal_action(question: str) -> str:
    return re.search(r"(?:where|which) (\w+) (?:happens|is performed)", question).group(1).lower()


def _times(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"\d+\.\d", text)]


def test_ground_truth_agrees_with_the_manifest(synth):
    out, files, manifest = synth
    for row in _rows(files["train"]) + _rows(files["eval"]):
        v = manifest["videos"][row["metadata"]["video_id"]]
        q, a, qa = _question(row), _answer(row), row["qa_type"]
        assert int(row["metadata"]["input_video_end_frame"]) == v["n_sampled"] - 1
        assert float(row["metadata"]["fps"]) == v["sampling_fps"]
        if isinstance(row["video"], list):
            assert len(row["video"]) == v["n_sampled"]
        if qa == "tal":
            action = _tal_action(q)
            spans = [(s["start"], s["end"]) for s in v["timeline"] if s["action"] == action]
            assert _times(a) == [t for span in spans for t in span]
        elif qa == "stg":
            name = re.search(r"of the (\w+) sampled|is the (\w+) every", q)
            name = name.group(1) or name.group(2)
            boxes = {f[0]: f[1:] for f in v["boxes"][name]}
            for t, box in re.findall(rf"(\d+\.\d) seconds: ({_BOX})", a):
                assert json.loads(box) == boxes[int(float(t) * v["native_fps"])], (row["id"], t)
        elif qa == "next_action":
            assert a == v["next_action"]
            last = v["timeline"][-1]["action"]
            assert v["procedure"].index(a) == v["procedure"].index(last) + 1
        elif qa.startswith("dense_captioning"):
            segs = [tuple(map(float, m)) for m in re.findall(r"(\d+\.\d)-(\d+\.\d) seconds: ", a)]
            assert segs == [(s["start"], s["end"]) for s in v["timeline"]]
            assert [ln.split(": ")[1] for ln in a.splitlines()] == [s["action"] for s in v["timeline"]]
        elif qa.startswith("region_caption"):
            rc = row["RC_info"]
            k = rc["start_frame"] if isinstance(rc["start_frame"], int) else row["video"].index(rc["start_frame"])
            frame = int(k / v["sampling_fps"] * v["native_fps"])
            in_view = {name: [f[1:] for f in fl if f[0] == frame] for name, fl in v["boxes"].items()}
            assert [rc["start_frame_bbox"]] in in_view.values()
            assert _times(q)[0] == k / v["sampling_fps"]
        elif qa == "skill_assessment":
            scores = {k2: int(s) for k2, s in re.findall(r"([A-Z][\w/ ]+): (\d)/5", a)}
            assert scores == v["skill"]["scores"]
            assert syn.skill_level_of(scores) == v["skill"]["level"]
            assert v["skill"]["bleeds"] == syn.BLEEDS[v["skill"]["level"]]  # the level is what the clip shows
            if row.get("struc_info"):
                assert row["struc_info"][0]["skill_level"] == syn.SKILL_CODES[v["skill"]["level"]]
        elif qa == "cvs_assessment":
            assert [int(x) for x in re.findall(r": (\d)", a)] == [v["cvs"][c] for c in syn.CVS_CRITERIA]


def test_decoded_mp4_and_frames_show_the_instruments_at_their_boxes(synth):
    av = pytest.importorskip("av")
    from PIL import Image

    out, _, manifest = synth
    checked = 0
    for vid, v in manifest["videos"].items():
        if v["source"] != "SynthEasy":  # no noise, full contrast: colour thresholds are exact enough
            continue
        with av.open(str(out / v["file"])) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        assert len(frames) == v["n_frames"]
        assert frames[0].shape == (v["height"], v["width"], 3)
        for name, fl in v["boxes"].items():
            colour = np.array(syn.INSTRUMENTS[name].colour)
            # H.264 with 4:2:0 chroma blurs edges by about a pixel; a triangle's 1-2 px apex can fade entirely
            tol = 3 if syn.INSTRUMENTS[name].shape == "triangle" else 1
            for f in fl[:: 3]:
                i, gt = f[0], f[1:]
                if sum(1 for n2, l2 in v["boxes"].items() for g in l2 if g[0] == i) > 1:
                    continue  # another instrument in view could hide part of this one
                near = np.abs(frames[i].astype(int) - colour).sum(-1) < 60
                ys, xs = np.nonzero(near)
                assert len(xs), (vid, name, i)
                got = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
                assert max(abs(g - t) for g, t in zip(got, gt)) <= tol, (vid, name, i, got, gt)
                checked += 1
        frames_dir = out / v["frames_dir"]
        if frames_dir.is_dir():  # the frame-list variant holds the native frames at k / fps
            jpgs = sorted(frames_dir.glob("*.jpg"))
            assert len(jpgs) == v["n_sampled"]
            step = int(v["native_fps"] / v["sampling_fps"])
            for k in (0, len(jpgs) - 1):
                diff = np.abs(np.asarray(Image.open(jpgs[k])).astype(int) - frames[k * step].astype(int)).mean()
                assert diff < 6.0, (vid, k, diff)
    assert checked >= 10


def test_difficulty_profiles_are_ordered(synth):
    _, _, manifest = synth
    area: dict[str, list[int]] = {}
    for v in manifest["videos"].values():
        for fl in v["boxes"].values():
            area.setdefault(v["source"], []).extend((f[3] - f[1]) * (f[4] - f[2]) for f in fl)
    mean = {k: float(np.mean(a)) for k, a in area.items()}
    assert mean["SynthEasy"] > mean["SynthMedium"] > mean["SynthHard"]
    prof = syn.SOURCE_PROFILES
    easy = syn.make_video_spec("e", prof["SynthEasy"], "train", 0, "expert")
    hard = syn.make_video_spec("h", prof["SynthHard"], "train", 0, "expert")
    # sensor noise: neighbouring-pixel differences are larger in the hard profile
    rough = {k: float(np.abs(np.diff(s.render()[0].astype(int), axis=1)).mean()) for k, s in (("e", easy), ("h", hard))}
    assert rough["h"] > rough["e"] + 5
    lingering = [s for s in hard.segments if s.visible_end > s.end]
    assert lingering and not [s for s in easy.segments if s.visible_end > s.end]


def test_image_sets(synth):
    from PIL import Image

    out, files, manifest = synth
    rows = _rows(files["images_train"]) + _rows(files["images_eval"])
    for row in rows:
        q, a, s = _question(row), _answer(row), row["struc_info"]
        m = manifest["images"][row["id"]]
        assert re.fullmatch(r"<think>[^<]+</think><answer>[^<]+</answer>", a), a
        inner = re.search(r"<answer>(.*)</answer>", a).group(1)
        if row["qa_type"] == "vqa_mc":
            assert inner == s["answer"] and len(s["choices"]) == 4 == len(set(s["choices"]))
            assert f"{s['answer']}. {s['choices']['ABCD'.index(s['answer'])]}" in q
        elif row["qa_type"] == "box_grounding":
            assert s["bbox"] == m["boxes"][s["label"]] and json.loads(inner) == s["bbox"]
            if row["data_source"] == "SynthEasy":  # lossless PNG: the box is exactly the instrument's extent
                img = np.asarray(Image.open(out / row["image"])).astype(int)
                near = np.abs(img - np.array(syn.INSTRUMENTS[s["label"]].colour)).sum(-1) == 0
                ys, xs = np.nonzero(near)
                assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == s["bbox"]
        else:
            assert inner == s["label"] == m["severity"] and s["ordinal"] is True
            lo, hi = syn._SEVERITY_FRACTION[m["severity"]]
            assert lo <= m["bleeding_fraction"] <= max(hi + 0.05, 0.0)
    assert {r["struc_info"]["label"] for r in rows if r["qa_type"] == "image_cls"} == set(syn.SEVERITY_CLASSES)


def test_reader_and_ground_truth_extractors_accept_every_row(synth):
    reader = pytest.importorskip("data.reader")
    parsing = pytest.importorskip("rewards.parsing")
    out, files, manifest = synth
    for key in ("train", "eval", "eval_json", "test", "images_train", "images_eval"):
        res = reader.read_instances(files[key])
        assert not res.skipped, (key, res.summary(), res.details[:3])
    gt = {"tag": parsing.gt_segments, "stg": parsing.gt_stg_boxes, "dvc": parsing.gt_events, "cvs": parsing.gt_cvs,
          "sa": parsing.gt_skill, "nap": parsing.gt_label, "vqa": parsing.gt_choice, "box": parsing.gt_box,
          "cls": parsing.gt_label, "vs": parsing.gt_caption, "rc": parsing.gt_caption}
    for key in ("train", "images_train"):
        for inst in reader.read_instances(files[key]).instances:
            p = gt[inst.family](inst)
            assert p.ok, (inst.qa_type, inst.id, p.reason)
            if inst.family == "tag":
                action = _tal_action(inst.question)
                v = manifest["videos"][inst.video_id]
                assert sorted(p.value) == sorted((s["start"], s["end"]) for s in v["timeline"] if s["action"] == action)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    kw = dict(n_per_task=2, n_eval_per_task=1, frames_variant=False, sources=("SynthEasy", "SynthHard"))
    a = syn.generate(tmp_path / "a", seed=7, **kw)
    b = syn.generate(tmp_path / "b", seed=7, **kw)
    c = syn.generate(tmp_path / "c", seed=8, **kw)
    for key in ("train", "eval", "images_train", "manifest", "test"):
        assert a[key].read_bytes() == b[key].read_bytes(), key
    assert a["train"].read_bytes() != c["train"].read_bytes()
    assert not (tmp_path / "a" / "frames").exists()
    assert all(isinstance(r["video"], str) for r in _rows(a["train"]))
    # regenerating into the same folder replaces the previous media instead of mixing with it
    syn.generate(tmp_path / "a", n_per_task=1, seed=7, frames_variant=False, n_eval_per_task=0, sources=["SynthEasy"])
    man = syn.load_manifest(tmp_path / "a")
    assert sorted(p.stem for p in (tmp_path / "a" / "videos").glob("*.mp4")) == sorted(man["videos"])


def test_corpus_texts_cover_every_task():
    texts = syn.corpus_texts(seed=0, n_per_task=3)
    assert texts == syn.corpus_texts(seed=0, n_per_task=3)
    joined = "\n".join(texts)
    for needle in ("Two structures:", "seconds: [", "/5", "<answer>", "step list", "Strasberg\u2019s", "0123456789"):
        assert needle in joined
    assert not any("<video>" in t or "<image>" in t for t in texts)


@pytest.mark.parametrize("kwargs, match", [
    ({"sources": ["AVOS"]}, "unknown source"),
    ({"sources": []}, "at least one"),
    ({"sources": ["SynthEasy", "SynthEasy"]}, "distinct"),
    ({"n_per_task": 0}, "n_per_task"),
    ({"size": (113, 84)}, "size"),
    ({"n_eval_per_task": -1}, "n_eval_per_task"),
])
def test_bad_arguments_are_refused(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        syn.generate(tmp_path, **kwargs)
    assert not list(tmp_path.iterdir())  # nothing written


def test_classes_are_balanced_and_the_blind_control_keeps_the_rows(tmp_path):
    """next_action and the CVS class are balanced per source; blind=True writes the same rows over flat frames."""
    from rewards.metrics import cvs_class

    full = syn.generate(tmp_path / "full", n_per_task=12, seed=3, n_images_per_task=4)
    rows = [json.loads(x) for x in full["train"].read_text().splitlines()]
    manifest = syn.load_manifest(tmp_path / "full")
    for source in syn.SOURCE_PROFILES:
        nap = Counter(r["conversations"][1]["value"] for r in rows
                      if r["qa_type"] == "next_action" and r["data_source"] == source)
        assert len(nap) == 3 and max(nap.values()) - min(nap.values()) <= 1, (source, nap)
        cvs = Counter(cvs_class(sum(v["cvs"].values())) for v in manifest["videos"].values()
                      if v["source"] == source and v["split"] == "train")
        assert sorted(cvs) == [0, 1, 2, 3] and max(cvs.values()) - min(cvs.values()) <= 1, (source, cvs)
    blind = syn.generate(tmp_path / "blind", n_per_task=12, seed=3, n_images_per_task=4, blind=True)
    assert blind["train"].read_bytes() == full["train"].read_bytes()
    assert syn.load_manifest(tmp_path / "blind")["blind"] is True and manifest["blind"] is False
    import av
    from PIL import Image

    vid = next(iter(manifest["videos"]))
    with av.open(str(tmp_path / "blind" / "videos" / f"{vid}.mp4")) as c:
        frame = next(c.decode(video=0)).to_ndarray(format="rgb24").astype(int)
    assert (abs(frame - np.asarray(syn.TISSUE)) <= 3).all()  # flat (up to the codec)
    img = np.asarray(Image.open(next((tmp_path / "blind" / "images").glob("*.png"))), dtype=int)
    assert (img == np.asarray(syn.TISSUE)).all()


def test_the_classes_show_in_the_pixels():
    """What the skill level and the CVS criteria depend on is drawn large enough to see: on the clean profile the
    bleeding area grows with the level (none for an expert) and each CVS criterion's colour covers more pixels the
    higher its score (structures, the exposed plate) or the lower (fat over the triangle)."""
    prof = syn.SOURCE_PROFILES["SynthEasy"]
    blood: dict[str, list[int]] = {"expert": [], "intermediate": [], "novice": []}
    cues: dict[str, dict[int, list[int]]] = {c: {0: [], 1: [], 2: []} for c in syn.CVS_CRITERIA}
    colours = {"two_structures": syn.STRUCTURE, "cystic_plate": syn.PLATE, "hepatocystic_triangle": syn.FAT}
    for k in range(12):
        level = ("expert", "intermediate", "novice")[k % 3]
        spec = syn.make_video_spec(f"v{k}", prof, "train", 5, level, next_index=2 + k % 3, cvs_class=k % 4)
        last = spec.render()[-1].astype(int)
        blood[level].append(int((last == np.asarray(syn.BLOOD)).all(-1).sum()))
        for c, colour in colours.items():
            cues[c][spec.cvs[c]].append(int((last == np.asarray(colour)).all(-1).sum()))
    mean = {lv: sum(v) / len(v) for lv, v in blood.items()}
    assert max(blood["expert"]) == 0 and min(blood["intermediate"]) >= 40, blood
    assert mean["novice"] >= 2 * mean["intermediate"], blood
    for c, by_score in cues.items():
        m = {s: sum(v) / len(v) for s, v in by_score.items() if v}
        ordered = [m[s] for s in sorted(m)]
        if c == "hepatocystic_triangle":
            ordered = ordered[::-1]
        assert ordered == sorted(ordered) and ordered[0] < ordered[-1] - 40, (c, m)
