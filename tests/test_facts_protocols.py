"""The facts study's scores: likelihood multiple choice without a bias towards the answer, MLLMU-Bench's
generation protocols (their parsing rule, their ROUGE-L with the stemmer), CIs by profile."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from probekit.organisms import facts_metrics as FM
from probekit.studies.unlearning import mllmu_protocol as MP
from probekit.studies.unlearning import profiles as P


class _Constant(torch.nn.Module):
    """A model whose every next-token distribution is uniform (constant logits)."""

    def __init__(self, hf):
        super().__init__()
        self.config, self.vocab = hf.config, hf.get_output_embeddings().weight.shape[0]
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # where the model lives (cpu)

    def forward(self, input_ids=None, **kw):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab))

    def generate(self, input_ids=None, max_new_tokens=1, **kw):
        """Greedy decoding of constant logits: the argmax is always token 0."""
        return torch.cat([input_ids, torch.zeros(input_ids.shape[0], max_new_tokens, dtype=torch.long)], 1)


@pytest.fixture(scope="module")
def constant(tiny_dir):
    import probekit

    m = copy.copy(probekit.load(tiny_dir("llava")))
    m.hf = _Constant(m.hf)
    return m


@pytest.fixture(scope="module")
def questions():
    w = P.make_world(n_profiles=150, n_unseen=4, n_transfer=0, seed=0)
    return P.eval_set(w, w.trained, "text")  # 450 questions, 3 per profile


def _within_chance(acc: float, n: int, p: float = 0.25) -> bool:
    return abs(acc - p) < 2.58 * math.sqrt(p * (1 - p) / n)  # a 99% binomial interval around chance


def test_constant_logits_score_chance_on_multiple_choice(constant, questions):
    r = FM.mc_accuracy(constant, questions, P.ATTRIBUTES, seed=0)
    assert r["n"] == 450 and r["chance"] == 0.25
    # every candidate ties; the old rule (answer always candidate 0, ties to the first) scored 1.00
    assert _within_chance(r["accuracy"], r["n"]) and 0.15 < r["accuracy"] < 0.35, r["accuracy"]
    assert r["lo"] < 0.25 < r["hi"]
    assert FM.mc_accuracy(constant, questions, P.ATTRIBUTES, seed=0, ties="against")["accuracy"] == 0.0


def test_constant_logits_score_chance_with_multi_token_candidates(constant, questions):
    # candidates of different lengths, sharing first tokens: scored as whole sequences
    opts = {a: ("cats are running", "cat runs", "cats are", "a red car") for a in P.ATTRIBUTES}
    qs = [SimpleNamespace(**{**vars(q), "answer": opts[q.attribute][q.pid % 4]}) for q in questions[:240]]
    r = FM.mc_accuracy(constant, qs, opts, seed=1, normalise=True)
    assert _within_chance(r["accuracy"], r["n"]), r["accuracy"]
    # summed (not normalised) log-probs pick the candidate with the fewest tokens under uniform logits:
    # "cats are" (2 tokens; the others 3, 4 and 6), right exactly when it is the answer
    s = FM.mc_accuracy(constant, qs, opts, seed=1)
    assert s["accuracy"] == pytest.approx(np.mean([q.answer == "cats are" for q in qs]))


def test_generation_protocol_on_constant_logits_never_answers_a_letter(constant, questions):
    r = MP.mc_generation(constant, questions[:40], P.ATTRIBUTES, seed=0)
    assert r["accuracy"] == 0.0 and r["letter_rate"] == 0.0 and r["chance"] == 0.25


def test_first_letter_is_eval_py_rule():
    replies = [" A", "b.", "The answer is A", "", "E", "  c", "D: book", "\nB"]
    assert [MP.first_letter(r) for r in replies] == ["A", "B", None, None, None, "C", "D", "B"]
    assert MP.cloze_prompt("Bob Red works with a __.") == ("Bob Red works with a [Blank].\nPlease **ONLY** provide "
                                                           "the correct answer that should replace the [Blank].")


def test_rouge_l_with_the_stemmer():
    # the pair with its article: 0.86 with the stemmer, 0.29 without (eval.py uses the stemmer)
    assert MP.rouge_score_l("the cats are running", "the cat runs") == pytest.approx(6 / 7)
    assert MP.rouge_score_l("the cats are running", "the cat runs", use_stemmer=False) == pytest.approx(2 / 7)
    # without the article: LCS 2 of 3 and 2 tokens -> F1 0.8 with the stemmer, no common token without it
    assert MP.rouge_score_l("cats are running", "cat runs") == pytest.approx(0.8)
    assert MP.rouge_score_l("cats are running", "cat runs", use_stemmer=False) == 0.0


def test_rouge_l_generates_fifty_tokens_with_the_stemmer(tiny_model):
    w = P.make_world(n_profiles=4, n_unseen=1, n_transfer=0, seed=0)
    bios = [P.bio_qa(w.profile(i), "text") for i in range(2)]
    r = MP.rouge_l(tiny_model("llava"), bios, n_boot=50)
    assert r["max_new_tokens"] == 50 and r["stemmer"] is True and 0 <= r["lo"] <= r["rouge_l"] <= r["hi"] <= 1


def test_profile_ci_resamples_profiles_not_questions():
    # 10 profiles, 8 answers each, all right or all wrong per profile: the CI is that of 10 units, not 80
    units = np.repeat(np.arange(10), 8)
    vals = np.repeat([1, 0] * 5, 8)
    m, lo, hi = FM.profile_ci(vals, units, n_boot=2000)
    mq, loq, hiq = FM.boot_ci(vals, n_boot=2000)
    assert m == mq == 0.5 and (hi - lo) > 1.8 * (hiq - loq)
    assert (hi - lo) == pytest.approx(2 * 1.96 * math.sqrt(0.25 / 10), abs=0.12)


def test_min_k_scores_match_the_reference_code_on_fixed_logits():
    # the Min-K%++ reference run.py on these logits (T = 10 tokens, k = 0.2: 2 tokens either way) gives
    # mink_0.2 -7.683358 and mink++_0.2 -4.168456; for T < 5 it averages an empty slice (NaN), probekit one token
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 11, 50, generator=g, dtype=torch.float64) * 2
    ids = torch.randint(0, 50, (1, 11), generator=g)
    lp = torch.log_softmax(logits[0, :-1], -1)
    loss, mk, mkpp = FM.token_scores(lp, ids[0, 1:], k=0.2)
    assert mk == pytest.approx(-7.683358, abs=1e-6) and mkpp == pytest.approx(-4.168456, abs=1e-6)
    tgt = lp.gather(-1, ids[0, 1:, None]).squeeze(-1)
    assert loss == pytest.approx(float(tgt.mean())) and mk == pytest.approx(float(tgt.sort().values[:2].mean()))
    _, mk3, _ = FM.token_scores(lp[:3], ids[0, 1:4], k=0.2)
    assert mk3 == pytest.approx(float(tgt[:3].min()))  # ceil(0.6) = 1 token, not an empty mean
