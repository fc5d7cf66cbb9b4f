"""The unlearn stage's torch pieces without Ray: encoding, weight placement, methods, adapter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hdsu_ray.core.budget import top_fraction_masks
from hdsu_ray.core.losses import weighted_nll
from hdsu_ray.data.encode import encode_texts
from hdsu_ray.errors import WorkflowError
from hdsu_ray.methods import METHODS, parse_method
from hdsu_ray.methods.view import StepView
from hdsu_ray.models.build import train_tokenizer
from hdsu_ray.stages.tensors import place_weights
from hdsu_ray.train.adapter import TorchAdapter

TEXTS = [("Question: Which drug treats panic disorder?\nAnswer:", " Sertraline"),
         ("Question: What is the first-line therapy for depression in adolescents?\nAnswer:", " Fluoxetine"),
         ("Question: Which symptom defines PTSD?\nAnswer:", " Intrusive memories of the trauma")]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([p + a for p, a in TEXTS] * 3, vocab_size=300)


@pytest.fixture(scope="module")
def tiny_model(tokenizer, make_tiny_llama):
    return make_tiny_llama(tokenizer, max_position_embeddings=64)


def test_encode_marks_exactly_the_answer_tokens(tokenizer):
    enc = encode_texts(tokenizer, [p for p, _ in TEXTS], [a for _, a in TEXTS], max_len=64)
    for i, (_, answer) in enumerate(TEXTS):
        ids = enc["input_ids"][i][enc["answer_mask"][i] == 1]
        assert tokenizer.decode(ids.tolist()) == answer
        assert enc["input_ids"][i, 0] == tokenizer.bos_token_id
        labelled = enc["labels"][i][enc["labels"][i] != -100]
        assert labelled.tolist() == ids.tolist()


def test_truncation_keeps_the_answer(tokenizer):
    n_answer = len(tokenizer(TEXTS[1][1], add_special_tokens=False)["input_ids"])
    max_len = n_answer + 4  # room for BOS, the answer and 3 prompt tokens
    enc = encode_texts(tokenizer, [TEXTS[1][0]], [TEXTS[1][1]], max_len=max_len)
    assert enc["input_ids"].shape[1] == max_len and enc["truncated"][0] > 0
    assert tokenizer.decode(enc["input_ids"][0][enc["answer_mask"][0] == 1].tolist()) == TEXTS[1][1]


def test_place_weights_aligns_text_tokens_with_shifted_positions(tokenizer):
    """Text token j sits at position 1 + j - overflow; its weight goes to shifted index j - overflow."""
    prompt, answer = TEXTS[0]
    full = encode_texts(tokenizer, [prompt], [answer], max_len=64)
    n_text = int(full["attention_mask"][0].sum()) - 1
    weights = np.arange(1, n_text + 1, dtype=np.float32)  # token j has weight j + 1
    labels = np.where(np.arange(n_text) % 2 == 0, 1, 2)
    ann = {"u": {"weights": weights, "labels": labels}}
    for max_len in (64, 8):
        enc = encode_texts(tokenizer, [prompt], [answer], max_len=max_len)
        place_weights(enc, ["u"], ann, has_bos=True)
        overflow = int(enc["truncated"][0])
        width = enc["input_ids"].shape[1]
        for pos in range(1, width):          # text position pos predicts nothing; label at pos
            j = pos - 1 + overflow           # text token index at position pos
            if enc["attention_mask"][0, pos]:
                assert enc["token_weight"][0, pos - 1] == weights[j]
                assert enc["preserve_weight"][0, pos - 1] == float(labels[j] == 1)


def _records():
    """TEXTS as multiple-choice rows: every answer is an option of every question."""
    from hdsu_ray.data.records import MCQRecord

    options = tuple(a.strip() for _, a in TEXTS)
    return [MCQRecord(uid=str(i), source="mhqa", question=p.split("\n")[0].removeprefix("Question: "),
                      options=options, answer_index=i, fields={}) for i, (p, _) in enumerate(TEXTS)]


def _view(model, tokenizer, token_weight=None):
    from hdsu_ray.stages.tensors import add_option_arrays
    from hdsu_ray.train.common import option_tensors

    enc = encode_texts(tokenizer, [p for p, _ in TEXTS], [a for _, a in TEXTS], max_len=64)
    batch = {k: torch.as_tensor(v) for k, v in enc.items() if v.ndim == 2}
    n, w = batch["input_ids"].shape
    forget = dict(batch)
    forget["ref_logp"] = torch.zeros(n, w - 1)
    if token_weight is not None:
        forget["token_weight"] = token_weight(n, w - 1)
    # Retain rows differ from forget rows, else GradDiff's two terms cancel exactly.
    retain = {k: v[:2] for k, v in batch.items()}
    options = {}
    add_option_arrays(options, tokenizer, _records(), max_len=64)
    return StepView(model, {"forget": forget, "retain": retain,
                            "forget_options": option_tensors(options, np.arange(n), "cpu")})


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_gives_finite_terms_with_gradients(name, tiny_model, tokenizer):
    params = parse_method({"name": name, "layer": 1} if name == "rmu" else {"name": name}, "m", None)
    view = _view(tiny_model, tokenizer)
    if name == "rmu":
        view = StepView(tiny_model, view.batches, hidden_layer=1)
        view.batches["retain"]["ref_hidden"] = torch.zeros(2, view.batches["retain"]["input_ids"].shape[1], 16)
    terms = METHODS[name].losses(params, view, 1.0)
    assert "forget" in terms
    total = sum(terms.values())
    assert torch.isfinite(total)
    tiny_model.zero_grad()
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny_model.parameters())


def test_hdsu_with_uniform_weights_and_ga_is_graddiff(tiny_model, tokenizer):
    """With token weights off, no anchor and the GA form, hdsu's terms equal GradDiff's."""
    view = _view(tiny_model, tokenizer)
    hd = METHODS["hdsu"].losses(parse_method({"name": "hdsu", "forget_loss": "ga", "token_weights": False,
                                              "anchor_weight": 0.0}, "m", None), view, 1.0)
    gd = METHODS["graddiff"].losses(parse_method({"name": "graddiff"}, "m", None), view, 1.0)
    assert set(hd) == set(gd) == {"forget", "retain"}
    for k in hd:
        assert torch.allclose(hd[k], gd[k])


def test_hdsu_token_weights_change_the_forget_loss(tiny_model, tokenizer):
    """Weights that zero every token but the last answer token give the NLL of that token alone."""
    def last_only(n, w):
        t = torch.zeros(n, w)
        t[:, -1] = 1.0
        return t
    view = _view(tiny_model, tokenizer, token_weight=last_only)
    p = parse_method({"name": "hdsu", "forget_loss": "ga", "anchor_weight": 0.0}, "m", None)
    logp, mask = view.logp("forget")
    expected = -weighted_nll(logp, last_only(*logp.shape) * mask)
    assert torch.allclose(METHODS["hdsu"].losses(p, view, 0.0)["forget"], expected)


def test_unknown_method_and_bad_param_are_named():
    with pytest.raises(WorkflowError, match=r"unlearn.methods\[2\].name"):
        parse_method({"name": "nope"}, "unlearn.methods[2]", "w.yaml")
    with pytest.raises(WorkflowError, match=r"unlearn.methods\[0\].beta"):
        parse_method({"name": "npo", "beta": -1}, "unlearn.methods[0]", "w.yaml")
    with pytest.raises(WorkflowError, match=r"unlearn.methods\[0\].bogus"):
        parse_method({"name": "ga", "bogus": 1}, "unlearn.methods[0]", "w.yaml")


def test_adapter_never_touches_entries_outside_the_budget(tiny_model):
    """After several steps every unselected entry is bit-identical and every selected one moved."""
    model = tiny_model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(1)
    scores = {n: torch.rand(p.shape, generator=g) for n, p in model.named_parameters()}
    masks = {n: m.numpy() for n, m in top_fraction_masks(scores, 0.01).items()}
    adapter = TorchAdapter(model, masks, lr=0.1, world=1)
    assert adapter.n_selected == sum(int(m.sum()) for m in masks.values())
    for _ in range(3):
        adapter.apply(torch.randn(adapter.n_selected, generator=g))
    for n, p in model.named_parameters():
        m = torch.from_numpy(masks[n])
        assert torch.equal(p.detach()[~m], before[n][~m]), n
        assert bool((p.detach()[m] != before[n][m]).all()), n


def test_adapter_flat_grad_is_the_masked_gradient(tiny_model, tokenizer):
    model = tiny_model
    masks = {n: (np.arange(p.numel()).reshape(p.shape) % 7 == 0) for n, p in model.named_parameters()}
    adapter = TorchAdapter(model, masks, lr=0.1, world=1)
    view = _view(model, tokenizer)
    logp, mask = view.logp("forget")
    loss = weighted_nll(logp, mask.float())
    flat = adapter.flat_grad(loss, retain_graph=True)
    model.zero_grad()
    loss.backward()
    expected = torch.cat([p.grad[torch.from_numpy(masks[n])] for n, p in model.named_parameters()])
    assert torch.allclose(flat, expected)


def _tiny_lm(arch: str, tokenizer, make_tiny_llama):
    """A seeded two-layer Llama or GPT-2 (the two ways a base model and head are laid out)."""
    if arch == "llama":
        return make_tiny_llama(tokenizer)
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=2, n_head=2, n_positions=128))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_answer_logprob_sums_equal_full_logits(arch, tokenizer, make_tiny_llama):
    """Scoring only the answer positions gives the same per-row sums as the full log-softmax,
    for a Llama and a GPT-2 (their base models and heads are found the same way)."""
    from hdsu_ray.eval.mcq import answer_logprob_sums

    model = _tiny_lm(arch, tokenizer, make_tiny_llama)
    model.eval()
    enc = encode_texts(tokenizer, ["Question: which drug?\nAnswer:", "Question: a much longer question "
                                   "about the dose\nAnswer:"], [" sertraline", " fifty milligrams daily"], 64)
    ids, am, labels = (torch.from_numpy(enc[k]) for k in ("input_ids", "attention_mask", "labels"))
    sums, counts = answer_logprob_sums(model, ids, am, labels)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=am).logits[:, :-1].float(), -1)
    target = labels[:, 1:]
    mask = target != -100
    expected = (logp.gather(-1, target.clamp(min=0)[..., None]).squeeze(-1) * mask).sum(-1)
    assert counts.tolist() == mask.sum(-1).tolist() and min(counts.tolist()) > 0
    assert torch.allclose(sums.detach(), expected, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_packed_option_scores_equal_pair_by_pair(arch, tokenizer, make_tiny_llama):
    """Scoring a question's options packed behind one prompt (4D mask, restarted positions) gives
    the scores of scoring each (prompt, option) pair on its own."""
    from hdsu_ray.data.records import MCQRecord
    from hdsu_ray.eval.mcq import option_scores, shared_prompt_split

    model = _tiny_lm(arch, tokenizer, make_tiny_llama)
    recs = [MCQRecord(uid=f"q{i}", source="mhqa", question=q, options=tuple(opts), answer_index=1, fields={})
            for i, (q, opts) in enumerate([
                ("Which drug treats panic disorder?", ["Sertraline", "Fluoxetine daily", "Intrusive", "None"]),
                ("What is the first-line therapy for depression in adolescents?", ["Fluoxetine", "Sertraline",
                                                                                  "Memories of the trauma"]),
                ("Which symptom defines PTSD?", ["Intrusive memories of the trauma", "Panic", "Fluoxetine",
                                                 "Sertraline"])])]
    assert all(shared_prompt_split(tokenizer, r, 64) is not None for r in recs)
    packed = option_scores(model, tokenizer, recs, max_len=64, batch_size=8)
    single = option_scores(model, tokenizer, recs, max_len=64, batch_size=8, packed=False)
    assert np.isneginf(packed[1, 3]) and np.isneginf(single[1, 3])
    finite = np.isfinite(single)
    np.testing.assert_allclose(packed[finite], single[finite], atol=1e-5)


def test_packed_batches_shortest_first_and_sized_by_option_count():
    from hdsu_ray.eval.mcq import packed_batches

    # (prompt tokens, option tokens) per record; None = not packable (scored pair by pair).
    splits = [([1, 2, 3], [[4], [5, 6]]),   # 3 + 3 = 6 tokens
              None,
              ([1], [[2], [3]]),            # 3
              ([1, 2, 3, 4, 5], [[6], [7]]),  # 7
              ([1, 2], [[3], [4]])]         # 4
    # batch_size 5 over questions of up to 2 options: 2 questions per batch
    assert packed_batches(splits, width=2, batch_size=5) == [[2, 4], [0, 3]]
    assert packed_batches(splits, width=4, batch_size=3) == [[2], [4], [0], [3]]  # never 0 per batch
    assert packed_batches([None, None], width=4, batch_size=8) == []


def test_training_option_scores_equal_the_evaluations(tiny_model, tokenizer):
    """The contrast loss ranks options by the same numbers the MCQ evaluation uses, so a question it
    flips in training is flipped in evaluation."""
    from hdsu_ray.data.records import MCQRecord
    from hdsu_ray.eval.mcq import option_scores as eval_scores
    from hdsu_ray.stages.tensors import add_option_arrays
    from hdsu_ray.train.common import option_tensors

    recs = [MCQRecord(uid="a", source="mhqa", question="Which drug treats panic disorder?",
                      options=("Sertraline", "Fluoxetine daily", "Intrusive"), answer_index=2, fields={}),
            MCQRecord(uid="b", source="mhqa", question="Which symptom defines PTSD?",
                      options=("Panic", "Intrusive memories of the trauma", "Fluoxetine", "Sertraline"),
                      answer_index=1, fields={})]
    arrays = {}
    add_option_arrays(arrays, tokenizer, recs, max_len=64)
    assert arrays["option_valid"].tolist() == [[True, True, True, False], [True] * 4]
    batch = option_tensors(arrays, np.array([1, 0]), "cpu")
    with torch.no_grad():
        scores, answer, valid = StepView(tiny_model, {"forget_options": batch}).option_scores("forget")
    expected = eval_scores(tiny_model, tokenizer, recs, max_len=64, packed=False)[[1, 0]]
    assert answer.tolist() == [1, 2]
    np.testing.assert_allclose(scores.numpy()[valid.numpy()], expected[np.isfinite(expected)], atol=1e-5)


@pytest.mark.parametrize("normalise", ["mean", "sum"])
def test_in_loop_accuracy_scores_as_the_evaluation_does(tiny_model, tokenizer, normalise):
    """The in-loop selection's accuracy (encoded arrays, no tokenizer in the worker) equals the final
    evaluation's for either option score, so a checkpoint is chosen by the number that is reported."""
    from hdsu_ray.data.records import MCQRecord
    from hdsu_ray.eval.mcq import accuracy_encoded, encode_options, mcq_correct, option_scores

    recs = [MCQRecord(uid=str(i), source="mhqa", question=q.split("\n")[0].removeprefix("Question: "),
                      options=(a.strip(), "Intrusive memories of the trauma", "Fluoxetine", "a"), answer_index=i % 4,
                      fields={}) for i, (q, a) in enumerate(TEXTS * 2)]
    got = accuracy_encoded(tiny_model, encode_options(tokenizer, recs, 64), normalise=normalise)
    want = mcq_correct(tiny_model, tokenizer, recs, max_len=64, normalise=normalise).mean()
    assert got == pytest.approx(want)
    scores = {n: option_scores(tiny_model, tokenizer, recs, max_len=64, normalise=n).argmax(1) for n in ("mean", "sum")}
    assert (scores["mean"] != scores["sum"]).any()  # the two rules really differ on these items


def test_hdsu_contrast_pushes_the_right_option_below_a_distractor(tiny_model, tokenizer):
    """A few plain SGD steps on the contrast term alone flip the model's choice on a question."""
    import copy

    from hdsu_ray.data.records import MCQRecord
    from hdsu_ray.stages.tensors import add_option_arrays
    from hdsu_ray.train.common import option_tensors

    model = copy.deepcopy(tiny_model)
    rec = MCQRecord(uid="a", source="mhqa", question="Which drug treats panic disorder?",
                    options=("Sertraline", "Fluoxetine daily", "Intrusive"), answer_index=0, fields={})
    arrays = {}
    add_option_arrays(arrays, tokenizer, [rec], max_len=64)
    p = parse_method({"name": "hdsu", "forget_loss": "contrast", "anchor_weight": 0.0, "margin": 0.5}, "m", None)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    batch = option_tensors(arrays, np.array([0]), "cpu")
    for _ in range(30):
        view = StepView(model, {"forget_options": batch, "forget": {}})
        loss = METHODS["hdsu"].losses(p, view, 0.0)["forget"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        scores, _, _ = StepView(model, {"forget_options": batch}).option_scores("forget")
    assert scores[0, 0] < scores[0, 1:3].max() - 0.4


def test_hdsu_contrast_reads_the_concept_weights(tiny_model, tokenizer):
    """The contrast form uses the concept weights: all-ones weights give exactly the unweighted
    loss (token_weights: false), other weights change it, and zero weights silence it."""
    spec = {"name": "hdsu", "forget_loss": "contrast", "anchor_weight": 0.0, "retain_weight": 0.0}
    loss = lambda w, on=True: METHODS["hdsu"].losses(parse_method({**spec, "token_weights": on}, "m", None),
                                                      _view(tiny_model, tokenizer, w), 0.0)["forget"].item()
    plain = loss(None, on=False)
    assert loss(lambda n, t: torch.ones(n, t)) == pytest.approx(plain, rel=1e-6)
    ramp = lambda n, t: torch.linspace(0.0, 1.0, t).repeat(n, 1)
    assert loss(ramp) != pytest.approx(plain, rel=1e-3)
    assert loss(lambda n, t: torch.zeros(n, t)) == 0.0
