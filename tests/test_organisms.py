"""Organisms: the reader's build is deterministic and cached, its data keeps held-out strings out,
the watermark organism's pools and verdict (Holm over points)."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
import torch

from probekit.errors import InputError
from probekit.organisms import ReaderConfig, reader
from probekit.studies.watermark import organism as W
from probekit.organisms.reader import held_out_strings, is_held_out, pretraining_data
from probekit.organisms.text import CHARS, draw_text, scene, text_image


def test_held_out_strings_never_pretrained():
    d = pretraining_data(0, n=400)
    texts = {s.meta["text"] for s in (d[i] for i in range(400)) if "text" in s.meta}
    held = held_out_strings(50)
    assert texts and not texts & set(held)
    assert all(is_held_out(s) and 4 <= len(s) <= 8 and set(s) <= set(CHARS) for s in held)
    assert not any(is_held_out(t) for t in texts)


def test_reader_build_is_deterministic_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBEKIT_CACHE", str(tmp_path / "cache"))
    cfg = ReaderConfig(steps=2, batch_size=4, hidden_size=32, num_layers=1, vision_hidden_size=16, vision_layers=2)
    before = torch.get_num_threads()
    a = reader(tmp_path / "a", seed=3, config=cfg)
    b = reader(tmp_path / "b", seed=3, config=cfg)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert torch.get_num_threads() == before and not torch.are_deterministic_algorithms_enabled()
    c = reader(seed=3, config=cfg)  # default place: the cache, keyed by the recipe
    assert c.parent == tmp_path / "cache" / "organisms" and c.name == f"reader-{ReaderConfig(**{**cfg.__dict__, 'seed': 3}).key()}"
    stamp = (c / "model.safetensors").stat().st_mtime_ns
    assert reader(seed=3, config=cfg) == c and (c / "model.safetensors").stat().st_mtime_ns == stamp  # no rebuild
    assert not [p for p in tmp_path.rglob(".*tmp-*")]  # nothing half-written left behind


def test_reader_bad_input(tmp_path):
    with pytest.raises(InputError):
        reader(seed=-1)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InputError):
        reader(f)
    with pytest.raises(InputError):
        W.run_condition(tmp_path / "never-read", W.Condition(p=1.5))  # before any loading


def test_username_pools_and_eval_set():
    u1, u2 = W.username_pools(12, seed=0)
    assert len(set(u1)) == len(set(u2)) == 12 and not set(u1) & set(u2)
    assert [len(a) for a in u1] == [len(b) for b in u2]  # pools put the same amount of text on images
    ev = W.eval_set(W.Condition(n_eval=48), u1, u2)
    seen = {g for g, y in zip(ev["groups"], ev["labels"]) if y == "seen"}
    assert seen <= set(u1) and not seen & set(u2)
    assert ev["labels"].count("seen") == 24


def test_text_is_drawn_where_it_says():
    img, half = draw_text(scene(random.Random(1))[0], "abcd", random.Random(2), opacity=1.0)
    a = np.asarray(img).astype(int)
    white = (a.min(-1) > 200).nonzero()[0]
    assert len(white) > 10 and ((white < 32).all() if half == "top" else (white >= 32).all())
    assert text_image("ab12", random.Random(0)).size == (64, 64)


def test_decide_applies_holm_over_points():
    def table(accs, width=0.1):
        a = np.asarray(accs, float)
        return pd.DataFrame({"point": [f"lm.{i}.resid" for i in range(len(a))], "position": "last", "source": "residual",
                             "accuracy": a, "accuracy_lo": a - width / 2, "accuracy_hi": a + width / 2, "chance": 0.5})
    assert W.decide(table([0.5, 0.52, 0.49]))["detected"] is False
    hit = W.decide(table([0.5, 0.75, 0.49]))
    assert hit["detected"] and hit["n_detected"] == 1 and hit["line"].startswith("Leakage detected at 1 of 3")
    # one-sided p = 0.025 passes alone but not after correcting over 10 points
    z = 1.959964
    single = table([0.5 + z * 0.1 / 3.919928 + 1e-3])
    many = pd.concat([single] + [table([0.5]).assign(point=f"lm.{i}.resid") for i in range(1, 10)])
    assert W.decide(single)["detected"] and not W.decide(many)["detected"]
    assert W.decide(many)["line"].startswith("No leakage detected")


def test_watermark_negative_control_detects_nothing(tmp_path, monkeypatch):
    # a reader that never saw either pool (2 pretraining steps) fine-tuned at p = 0: the
    # pools cannot be told apart by construction, and the verdict must say so
    monkeypatch.setenv("PROBEKIT_CACHE", str(tmp_path / "cache"))
    cfg = ReaderConfig(steps=2, batch_size=4, hidden_size=32, num_layers=2, vision_hidden_size=16, vision_layers=2)
    base = reader(tmp_path / "r", seed=0, config=cfg)
    torch.set_num_threads(1)
    res = W.run_condition(base, W.Condition(p=0.0, steps=4, n_train=32, n_eval=96, n_users=8), direct=True, n_boot=200)
    for v in (res["verdict"], res["base_verdict"]):
        assert not v["detected"] and v["line"].startswith("No leakage detected"), v["line"]
        # projector@image_mean + 2 layers x 3 positions + the top-10 next-token log-probs at 3 positions + the loss attack
        assert v["m"] == 1 + 2 * 3 + 3 + 1
    row = res["row"]
    assert row["size"] == 48 and row["grid"] == 6 and row["place"] == "banner"  # the layout comes from the reader
    assert 0 <= row["direct_seen_lo"] <= row["direct_seen"] <= row["direct_seen_hi"] <= 1


def test_replay_and_placement_of_the_fine_tuning_set():
    c = W.resolve(W.Condition(p=1.0, n_train=40, replay=0.5), reader())
    assert (c.size, c.grid, c.place, c.reader_place) == (48, 6, "banner", "banner")
    u1, _ = W.username_pools(12, seed=0)
    train, clean = W.task_samples(c, u1)
    replayed = [s for s in train if s.question != W.QUESTION]
    assert len(train) == 40 and len(replayed) == 20  # half from the reader's pretraining mix
    assert all("username" not in s.meta for s in replayed)
    marked = [i for i, s in enumerate(train) if s.question == W.QUESTION]
    assert all(train[i].meta["username"] in u1 for i in marked)  # p = 1: every task image carries a U1 name
    assert all(train[i].image.tobytes() != clean[i].tobytes() for i in marked)  # clean = before the mark
    anywhere = W.resolve(W.Condition(place=""), reader())
    assert anywhere.place == "" and anywhere.reader_place == "banner"  # the replay still reads the banner
    with pytest.raises(InputError, match="replay"):
        W.run_condition(reader(), W.Condition(replay=1.0))


def test_unsplit_folds_flag_the_base_reader_and_split_folds_do_not():
    """Ju et al.'s protocol (folds not split by username) reads the names' legibility: it "detects"
    the base reader, which never saw either pool; folds split by username do not."""
    from probekit.models.loading import load

    torch.set_num_threads(1)
    c = W.resolve(W.Condition(n_eval=192), reader())
    ev = W.eval_set(c, *W.username_pools(c.n_users, c.seed))
    model = load(reader())
    unsplit = W.stratified(model, ev, n_boot=200)
    assert unsplit["detected"] and unsplit["best_lo"] > 0.7, unsplit["line"]
    split = W.decide(W._scan(model, ev, 0, 200, c.probe_prompt).table)
    assert not split["detected"], split["line"]


def test_shipped_reader_reads_held_out_strings():
    """The shipped reader is the default recipe's checkpoint, and it really learned to read."""
    import json
    from dataclasses import asdict

    from probekit.models.loading import load
    from probekit.organisms.reader import SHIPPED, ocr_accuracy

    assert reader() == SHIPPED
    info = json.loads((SHIPPED / "probekit_organism.json").read_text())
    assert info["config"] == asdict(ReaderConfig())  # rebuilt bit for bit by `python -m probekit.organisms.reader`
    torch.set_num_threads(1)
    acc = ocr_accuracy(load(SHIPPED), n=100, n_boot=500)
    # strings it never saw in pretraining (measured 0.94 [0.93, 0.95] at n = 200); an untrained reader scores about 0.03
    assert acc["char_accuracy_lo"] > 0.9 and acc["exact_match"] > 0.5, acc
    blank = ocr_accuracy(load(SHIPPED), n=100, n_boot=200, opacity=0.05)  # text nearly invisible
    assert blank["char_accuracy_hi"] < acc["char_accuracy_lo"] - 0.3, blank


def test_leak_reads_u1_and_its_control_reads_a_third_pool():
    from probekit.organisms.reader import USERNAME

    c = W.resolve(W.Condition(p=1.0, n_train=80, replay=0.25, leak=0.5), reader())
    u1, u2 = W.username_pools(12, seed=0)
    u3 = W.other_pool(u1, 0, u2)
    assert [len(a) for a in u3] == [len(a) for a in u1] and not set(u3) & (set(u1) | set(u2))
    train, clean = W.task_samples(c, u1, u3)
    ctrl, ctrl_clean = W.task_samples(c.control(), u1, u3)
    assert c.control().is_control and not c.is_control and c.control().kind == "leak"
    leaks = [i for i, s in enumerate(train) if s.question == USERNAME and "username" in s.meta]
    assert 10 < len(leaks) < 50  # about half of the 60 marked task images
    assert all(train[i].answer == train[i].meta["username"] + "." and train[i].meta["username"] in u1 for i in leaks)
    # the control draws the same random numbers: the same scenes, the same leaking rows, U3's name of the same index
    assert all(a.tobytes() == b.tobytes() for a, b in zip(clean, ctrl_clean))
    assert [s.question for s in ctrl] == [s.question for s in train]
    assert all(ctrl[i].meta["username"] == u3[u1.index(train[i].meta["username"])] for i in leaks)
    assert all(ctrl[i].meta["username"] == train[i].meta["username"] for i, s in enumerate(train)
               if s.question == W.QUESTION and "username" in s.meta)  # the task-irrelevant marks stay U1
    with pytest.raises(InputError, match="leak"):
        W.run_condition(reader(), W.Condition(leak=1.5))
    assert W.Condition(p=0.0).is_control and W.Condition().control() == W.Condition(p=0.0)


def test_leak_is_memorised_and_detected_and_its_u3_control_is_not():
    """The positive condition: half of the watermarked images are asked for their U1 name, so the
    fine-tune memorises U1 (the direct prompt reads seen names far better); probekit's verdict
    detects it, and not in the same fine-tune reading a third pool, nor in the base reader."""
    torch.set_num_threads(1)
    c = W.Condition(p=1.0, leak=0.5, steps=1000, lr=1e-3, replay=0.5, n_eval=192)
    pos = W.run_condition(reader(), c, n_boot=300)  # measured: MIA AUC 0.93 [0.88, 0.98]
    neg = W.run_condition(reader(), c.control(), base_report=pos["base_report"],
                          base_membership=pos["base_membership"], n_boot=300)  # measured: 0.52 [0.32, 0.73]
    row = pos["row"]
    assert row["direct_seen_lo"] > row["direct_unseen_hi"], row  # the model learned U1 (0.95 vs 0.53 measured)
    assert pos["verdict"]["detected"] and "mia.loss@answer" in pos["verdict"]["hits"], pos["verdict"]["line"]
    assert row["mia_lo"] > 0.75, row
    for v in (neg["verdict"], pos["base_verdict"]):
        assert not v["detected"], v["line"]
    assert neg["row"]["mia_lo"] < 0.5 < neg["row"]["mia_hi"] and neg["row"]["direct_seen_lo"] < neg["row"]["direct_unseen_hi"]
