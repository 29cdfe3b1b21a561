"""Teacher-forced answers: collect(answers=) and the "answer_mean" / "prompt_last" positions."""

import pytest
import torch

import probekit
from probekit.errors import InputError, PositionError, UnsupportedModelError
from probekit.organisms.finetune import answer_batch
from probekit.hooks.positions import PositionContext, select
from probekit import tiny

PROMPTS = ["What shape?", "What colour is the big square on the left, please?", "Hi", "Name the user"]
ANSWERS = ["red circle", "blue", "a small green triangle now", "bob"]


def test_selectors_on_a_hand_made_batch():
    # row 0: left padded, 4 real tokens, a 2-token answer; row 1: 6 real tokens, a 1-token answer
    am = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]).bool()
    ctx = PositionContext(am, torch.zeros(2, 6, dtype=torch.bool), torch.zeros(2, 6, dtype=torch.long),
                          answer_len=torch.tensor([2, 1]))
    h = torch.arange(12, dtype=torch.float32).view(2, 6, 1)
    # the prompt's last token (real rank 1 / 4) predicts the first answer token; the answer's last predicts nothing
    assert select(h, "prompt_last", ctx).flatten().tolist() == [3, 10]
    assert select(h, "answer_mean", ctx).flatten().tolist() == [3.5, 10]
    assert select(h, "last", ctx).flatten().tolist() == [5, 11]
    plain = PositionContext(am, torch.zeros(2, 6, dtype=torch.bool), torch.zeros(2, 6, dtype=torch.long))
    assert select(h, "prompt_last", plain).flatten().tolist() == [5, 11]  # no answers: the last token
    # ProbingPrivacy's position: the token before the prompt's last, whether or not an answer follows
    assert select(h, "prompt_second_last", ctx).flatten().tolist() == [2, 9]
    assert select(h, "prompt_second_last", plain).flatten().tolist() == [4, 10]
    with pytest.raises(PositionError, match="answers"):
        select(h, "answer_mean", plain)


@pytest.mark.parametrize("side", ["left", "right"])
def test_answer_mean_is_the_mean_over_the_positions_that_predict_the_answer(llava, side):
    images = tiny.fixture_images(4, 32, seed=5)
    s = probekit.collect(llava, images, PROMPTS, points=["lm.1.resid"], positions=("answer_mean", "prompt_last"),
                         answers=ANSWERS, batch_size=4, padding_side=side, progress=False)
    # reference: the finetune path's teacher-forced inputs, one image at a time, read by hand
    layer = llava.module("lm.1.resid")
    for i in range(4):
        inputs, pos = answer_batch(llava, images[i:i + 1], PROMPTS[i:i + 1], ANSWERS[i:i + 1])
        inputs.pop("labels")
        got = {}
        hook = layer.register_forward_hook(lambda m, a, out: got.update(h=out[0] if isinstance(out, tuple) else out))
        try:
            with torch.no_grad():
                llava.hf(**inputs)
        finally:
            hook.remove()
        h = got["h"][0]
        want = h[[p - 1 for p in pos[0]]].mean(0)
        torch.testing.assert_close(s["lm.1.resid"][i, 0], want, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(s["lm.1.resid"][i, 1], h[pos[0][0] - 1], atol=2e-5, rtol=1e-4)


def test_prompt_last_with_answers_is_last_without_them(llava):
    # a causal model cannot see the answer from the prompt's last token
    images = tiny.fixture_images(4, 32, seed=6)
    forced = probekit.collect(llava, images, PROMPTS, points="lm.*.resid", positions="prompt_last", answers=ANSWERS,
                              progress=False)
    plain = probekit.collect(llava, images, PROMPTS, points="lm.*.resid", positions="last", progress=False)
    for p in plain.points:
        torch.testing.assert_close(forced[p], plain[p], atol=2e-5, rtol=1e-4)
    assert forced.meta["answers_digest"] != plain.meta.get("answers_digest")


def test_prompt_second_last_is_the_assistant_header_token(llava):
    # Ju et al. (ProbingPrivacy) read index -2 of the chat-formatted prompt: in LLaVA's template "ASSISTANT" before ":"
    images = tiny.fixture_images(2, 32, seed=7)
    tok = llava.processor.tokenizer
    inputs = llava.prepare(images[:1], ["What is the username?"])
    assert tok.decode([int(inputs["input_ids"][0, -2])]).strip() == "ASSISTANT"
    forced = probekit.collect(llava, images, "What is the username?", points="lm.*.resid", positions="prompt_second_last",
                              answers=["bob", "alice"], progress=False)
    plain = probekit.collect(llava, images, "What is the username?", points="lm.*.resid", positions=-2, progress=False)
    for p in plain.points:
        torch.testing.assert_close(forced[p], plain[p], atol=2e-5, rtol=1e-4)


def test_bad_answers_fail_before_any_forward(llava, no_forward):
    images = tiny.fixture_images(2, 32)
    with pytest.raises(PositionError, match="answers="):
        probekit.collect(llava, images, "Hi", positions="answer_mean", progress=False)
    with pytest.raises(InputError, match="one non-empty string per image"):
        probekit.collect(llava, images, "Hi", positions="answer_mean", answers=["a"], progress=False)
    with pytest.raises(InputError, match="one non-empty string per image"):
        probekit.scan(llava, images, labels=[0, 1], positions="answer_mean", answers=["a", " "], progress=False)


def test_encoder_decoder_refuses_answers():
    from probekit.tiny import zoo

    m = probekit.wrap(*zoo.build("florence2"))
    with pytest.raises(UnsupportedModelError, match="answers="):
        probekit.collect(m, tiny.fixture_images(2, 32), "Hi", answers=["a", "b"], progress=False)
