"""Fine-tuning: full and LoRA (merged back, so hook points keep their module paths)."""

import pytest
import torch

import probekit
from probekit.data.synthetic import make_task
from probekit._stats import wilson
from probekit.organisms.finetune import answer_batch, finetune, task_accuracy

pytestmark = pytest.mark.usefixtures("one_thread")


def test_lora_trains_and_merges_back(tiny_dir):
    m = probekit.load(tiny_dir("llava"))
    before = {k: v.clone() for k, v in m.hf.state_dict().items()}
    points = m.points()
    losses = finetune(m, make_task(32, seed=0), steps=6, batch_size=8, lr=5e-3, lora={"r": 4, "alpha": 8}, progress=False)
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    assert type(m.hf).__name__ == "LlavaForConditionalGeneration"  # peft wrapper merged away
    after = m.hf.state_dict()
    assert set(after) == set(before)  # no lora_A/lora_B left
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(any(t in k for t in ("q_proj", "k_proj", "v_proj", "o_proj")) for k in changed)
    assert m.points() == points
    s = probekit.collect(m, probekit.tiny.fixture_images(2, 32), "x", points="lm.*.resid", progress=False)
    assert torch.isfinite(s["lm.1.resid"]).all()


def test_full_finetuning_lowers_the_answer_loss(tiny_dir):
    m = probekit.load(tiny_dir("llava"))
    train = make_task(64, seed=1, kinds=("colour",))
    losses = finetune(m, train, steps=30, batch_size=16, lr=3e-3, progress=False)
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    acc = task_accuracy(m, train[:16])
    assert acc["accuracy_lo"] <= acc["accuracy"] <= acc["accuracy_hi"]


def test_labels_cover_exactly_the_answer_tokens(tiny_model):
    m = tiny_model("llava")
    s = make_task(2, seed=2)
    inputs, positions = answer_batch(m, [x.image for x in s], [x.question for x in s], [x.answer for x in s])
    tok = m.processor.tokenizer
    for r, pos in enumerate(positions):
        assert (inputs["labels"][r] != -100).nonzero().flatten().tolist() == pos
        assert tok.decode(inputs["labels"][r, pos]).strip() == s[r].answer


def test_wilson_interval():
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
