"""Every trainable parameter is heard, exactly as the optimizer applies it.

Each test compares ``on_step`` norms with ``sqrt(sum ||p.grad||^2)`` over each voice's
``layer_params``, computed by the test at the moment of the update (an optimizer step pre-hook
registered after gradsonic's, or right after a closure's first evaluation).
"""

from __future__ import annotations

import copy
import gc
import math
import warnings
import weakref

import numpy as np
import pytest
import torch
from torch import nn

from gradsonic import GradientSonifier, GradsonicWarning

from .fixtures.models import AttentionNet, LoRANet, RecurrentNet, TinyMLP

torch.manual_seed(0)


def weight_names(model: nn.Module) -> set[str]:
    """Trainable non-bias parameter names, by a rule written independently of gradsonic's."""
    return {n for n, p in model.named_parameters()
            if p.requires_grad and "bias" not in n.rsplit(".", 1)[-1]}


def direct(model: nn.Module, son: GradientSonifier, optimizer=None) -> list[float]:
    """Each voice's norm over its layer_params now; NaN if none of them is being updated."""
    named = dict(model.named_parameters())
    updated = None if optimizer is None else {
        id(p) for g in optimizer.param_groups for p in g["params"]}
    out = []
    for names in son.layer_params:
        grads = [named[n].grad for n in names if n in named and named[n].grad is not None
                 and (updated is None or id(named[n]) in updated)]
        out.append(math.sqrt(sum(float(g.double().norm()) ** 2 for g in grads))
                   if grads else math.nan)
    return out


class Check:
    """Records what gradsonic heard and the direct norms at each update of the given optimizers."""

    def __init__(self, model: nn.Module, **kwargs) -> None:
        self.model = model
        self.records: list = []
        self.expected: list[list[float]] = []
        self.son = GradientSonifier(model, wav=None, on_step=self.records.append, **kwargs)

    def wrap(self, optimizer):
        self.son.wrap(optimizer)
        # After the update, from the gradients it used (torch's optimizers leave them as they
        # were); after gradsonic's own post-hook, so layer_params is up to date.
        optimizer.register_step_post_hook(
            lambda opt, args, kwargs: self.expected.append(direct(self.model, self.son, opt)))
        return optimizer

    def close(self) -> None:
        self.son.close()

    def assert_equal(self, steps: int | None = None) -> None:
        self.son.close()
        assert len(self.records) == len(self.expected) == (steps or len(self.expected))
        for rec, exp in zip(self.records, self.expected):
            got = rec.norms.astype(np.float64)
            exp = np.asarray(exp + [math.nan] * (len(got) - len(exp)))
            np.testing.assert_allclose(got, exp, rtol=2e-5, equal_nan=True)
            assert (rec.missing == np.isnan(exp)).all()


def train(model, optimizer, make_loss, steps: int = 3) -> None:
    for i in range(steps):
        optimizer.zero_grad()
        make_loss(i).backward()
        optimizer.step()


def test_recurrent_layers_and_tied_weights_are_voices_with_exact_norms():
    model = RecurrentNet()
    check = Check(model)
    assert check.son.layer_names == ("embed", "lstm.l0", "lstm.l1", "gru", "rnn.l0", "rnn.l1")
    assert set(check.son.layer_params[1]) == {
        "lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.weight_ih_l0_reverse",
        "lstm.weight_hh_l0_reverse"}
    assert {n for ns in check.son.layer_params for n in ns} == weight_names(model)
    opt = check.wrap(torch.optim.SGD(model.parameters(), lr=0.1))
    x = torch.randint(0, 12, (4, 5))
    train(model, opt, lambda i: model(x).logsumexp(-1).mean())
    check.assert_equal(3)


def test_attention_packed_and_separate_qkv_and_a_raw_positional_parameter():
    model = AttentionNet()
    check = Check(model)
    assert check.son.layer_names == ("pos", "packed", "packed.out_proj", "separate",
                                     "separate.out_proj", "out")
    assert set(check.son.layer_params[3]) == {"separate.q_proj_weight", "separate.k_proj_weight",
                                              "separate.v_proj_weight"}
    assert {n for ns in check.son.layer_params for n in ns} == weight_names(model)
    opt = check.wrap(torch.optim.Adam(model.parameters(), lr=0.01))
    x, k, v = torch.randn(2, 5, 8), torch.randn(2, 7, 6), torch.randn(2, 7, 4)
    train(model, opt, lambda i: model(x, k, v).pow(2).mean())
    check.assert_equal(3)


def test_transformer_encoder_is_fully_heard_and_the_readme_pattern_selects_attention():
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0,
                                                             batch_first=True), 2)
    check = Check(model)
    assert {n for ns in check.son.layer_params for n in ns} == weight_names(model)
    assert "layers.0.self_attn" in check.son.layer_names
    opt = check.wrap(torch.optim.SGD(model.parameters(), lr=0.1))
    x = torch.randn(2, 4, 8)
    train(model, opt, lambda i: model(x).pow(2).mean())
    check.assert_equal(3)
    with GradientSonifier(model, layers=["layers.*.self_attn"], wav=None) as son:
        assert son.layer_names == ("layers.0.self_attn", "layers.1.self_attn")
        assert son.layer_params[0] == ("layers.0.self_attn.in_proj_weight",)


def test_a_small_torchvision_vit_is_fully_heard():
    from torchvision.models import VisionTransformer

    model = VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=2,
                              hidden_dim=8, mlp_dim=16, num_classes=3)
    check = Check(model)
    assert check.son.layer_names[0] == "class_token" and "encoder" in check.son.layer_names
    assert {n for ns in check.son.layer_params for n in ns} == weight_names(model)
    assert "(100.0%)" in check.son.summary().splitlines()[0]
    opt = check.wrap(torch.optim.SGD(model.parameters(), lr=0.1))
    x = torch.randn(2, 3, 16, 16)
    train(model, opt, lambda i: model(x).pow(2).mean(), steps=2)
    check.assert_equal(2)


@pytest.mark.parametrize("kind", ["weight_norm", "spectral_norm", "orthogonal",
                                  "old_weight_norm", "old_spectral_norm"])
@pytest.mark.parametrize("when", ["before", "after"])
def test_parametrized_weights_are_heard_as_their_layer(kind, when):
    from torch.nn.utils import parametrizations

    model = TinyMLP()
    apply = {"weight_norm": parametrizations.weight_norm,
             "spectral_norm": parametrizations.spectral_norm,
             "orthogonal": parametrizations.orthogonal,
             "old_weight_norm": nn.utils.weight_norm,
             "old_spectral_norm": nn.utils.spectral_norm}[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the old hook-based versions are deprecated
        if when == "before":
            apply(model.fc2)
        check = Check(model)
        if when == "after":
            apply(model.fc2)
    assert check.son.layer_names == ("fc1", "fc2", "head")
    opt = check.wrap(torch.optim.SGD(model.parameters(), lr=0.05))  # made after parametrizing
    x = torch.randn(6, 8)
    train(model, opt, lambda i: model(x).pow(2).mean())
    fc2 = check.son.layer_params[1]
    assert set(fc2) == {n for n in weight_names(model) if n.startswith("fc2.")} and len(fc2) >= 1
    check.assert_equal(3)


def test_raw_parameter_lora_is_heard_and_the_frozen_base_is_not_a_voice():
    model = LoRANet()
    check = Check(model)
    assert check.son.layer_names == ("q", "v", "head")
    assert check.son.layer_params[0] == ("q.lora_A", "q.lora_B")
    opt = check.wrap(torch.optim.AdamW([p for p in model.parameters() if p.requires_grad]))
    x = torch.randn(4, 8)
    train(model, opt, lambda i: model(x).pow(2).mean())
    check.assert_equal(3)


def test_replaced_head_new_optimizer_is_heard_not_the_old_frozen_norm():
    model = TinyMLP()
    check = Check(model)
    opt = check.wrap(torch.optim.SGD(model.parameters(), lr=0.1))
    x = torch.randn(6, 8)
    train(model, opt, lambda i: model(x).pow(2).mean(), steps=2)
    model.head = nn.Linear(16, 3)
    nn.init.constant_(model.head.weight, 3.0)
    opt = check.wrap(torch.optim.SGD(model.parameters(), lr=0.1))
    train(model, opt, lambda i: model(x).pow(2).mean(), steps=2)
    check.assert_equal(4)
    assert check.records[2].norms[2] != check.records[1].norms[2]


def test_progressive_unfreezing_and_add_param_group_add_voices():
    model = TinyMLP()
    model.fc1.requires_grad_(False)
    model.fc2.requires_grad_(False)
    check = Check(model, record="unfreeze.gsr")
    assert check.son.layer_names == ("head",)
    opt = check.wrap(torch.optim.SGD(model.parameters(), lr=0.1))  # holds the frozen ones too
    x = torch.randn(6, 8)
    loss = lambda i: model(x).pow(2).mean()  # noqa: E731
    train(model, opt, loss, steps=2)
    model.fc2.requires_grad_(True)  # unfrozen: the optimizer already holds it
    train(model, opt, loss, steps=2)
    model.fc1.requires_grad_(True)
    model.extra = nn.Linear(3, 3)  # a new layer, trained through add_param_group
    opt.add_param_group({"params": model.extra.parameters()})
    train(model, opt, lambda i: model.extra(model(x)).pow(2).mean(), steps=2)
    assert check.son.layer_names == ("head", "fc2", "fc1", "extra")
    check.assert_equal(6)
    assert [len(r.layer_names) for r in check.records] == [1, 1, 2, 2, 4, 4]
    from gradsonic.recording import read_recording

    rec = read_recording("unfreeze.gsr")  # voices added mid-run: the recording went on in parts
    assert rec.layer_names == ("head", "fc2", "fc1", "extra")
    assert rec.voice_counts.tolist() == [1, 1, 2, 2, 4, 4]
    np.testing.assert_array_equal(rec.norms[:, 0], [r.norms[0] for r in check.records])
    assert rec.missing[:2, 1:].all() and not rec.missing[4:].any()


def test_two_optimizers_each_step_is_one_sound_of_its_own_voices():
    """A GAN: the discriminator's step hears only D, the generator's only G; nothing stale."""
    gen = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6))
    disc = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1))
    gan = nn.ModuleDict({"G": gen, "D": disc})
    check = Check(gan)
    opt_g = check.wrap(torch.optim.Adam(gen.parameters(), lr=1e-3))
    opt_d = check.wrap(torch.optim.Adam(disc.parameters(), lr=1e-3))
    for _ in range(3):
        z, real = torch.randn(5, 4), torch.randn(5, 6)
        opt_d.zero_grad()
        (disc(real).mean() - disc(gen(z).detach()).mean()).backward()
        opt_d.step()
        opt_g.zero_grad()  # D's grads stay: they must not be heard in G's step
        (-disc(gen(z)).mean()).backward()
        opt_g.step()
    check.assert_equal(6)
    heard = np.array([~r.missing for r in check.records])
    assert check.son.layer_names == ("G.0", "G.2", "D.0", "D.2")
    assert heard.tolist() == [[False, False, True, True], [True, True, False, False]] * 3


def test_lbfgs_is_one_sound_per_step_at_the_gradient_of_its_starting_point():
    model = TinyMLP()
    son_records: list = []
    son = GradientSonifier(model, wav=None, on_step=son_records.append)
    opt = son.wrap(torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4))
    x, y = torch.randn(8, 8), torch.randn(8, 3)
    expected, calls = [], []

    def closure():
        opt.zero_grad()
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        calls.append(1)
        if len(calls) == 1:
            expected.append(direct(model, son))
        return loss

    for _ in range(3):
        calls.clear()
        opt.step(closure)
        assert len(calls) > 1  # LBFGS evaluated the closure several times
    son.close()
    assert len(son_records) == 3
    np.testing.assert_allclose([r.norms for r in son_records], expected, rtol=2e-5)


def test_accelerate_prepare_then_wrap_hooks_the_real_optimizer():
    from accelerate import Accelerator

    model = TinyMLP()
    accelerator = Accelerator(cpu=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, prepared = accelerator.prepare(model, opt)
    check = Check(model)
    assert check.son.wrap(prepared) is prepared
    opt.register_step_post_hook(
        lambda o, a, k: check.expected.append(direct(model, check.son, o)))
    x = torch.randn(6, 8)
    train(model, prepared, lambda i: model(x).pow(2).mean())
    check.assert_equal(3)


def test_a_layer_converted_to_float16_after_attaching_is_not_a_false_alarm():
    model = TinyMLP()
    check = Check(model)
    opt = check.wrap(torch.optim.SGD(model.parameters(), lr=0.0))
    model.fc2.half()
    for p in model.fc2.parameters():
        p.grad = torch.full_like(p, 300.0)  # a float16 sum of squares would overflow
    for p in (model.fc1.weight, model.head.weight):
        p.grad = torch.ones_like(p)
    opt.step()
    check.assert_equal(1)
    assert check.records[0].norms[1] == pytest.approx(300.0 * 16, rel=1e-3)
    assert not check.records[0].nonfinite.any()


def test_huge_finite_gradients_do_not_overflow_to_an_alarm():
    model = TinyMLP()
    check = Check(model, layers=["fc1", "fc1.bias", "head"])
    opt = check.wrap(torch.optim.SGD(model.parameters(), lr=0.0))
    model.fc1.weight.grad = torch.full_like(model.fc1.weight, 1e20)  # squares overflow float32
    model.fc1.bias.grad = torch.full_like(model.fc1.bias, 3e19)
    model.head.weight.grad = torch.full_like(model.head.weight, 1e19)
    model.fc2.weight.grad = torch.zeros_like(model.fc2.weight)
    opt.step()
    check.assert_equal(1)
    norms = check.records[0].norms
    assert np.isfinite(norms).all() and not check.records[0].nonfinite.any()
    assert norms[0] == pytest.approx(1e20 * math.sqrt(128), rel=1e-5)
    model.head.weight.grad[0, 0] = float("nan")  # a truly non-finite gradient is still the alarm
    check2 = Check(model)
    opt2 = check2.wrap(torch.optim.SGD(model.parameters(), lr=0.0))
    opt2.step()
    check2.son.close()
    assert check2.records[0].nonfinite.tolist() == [False, False, True]


def test_a_trained_deepcopy_is_heard_under_the_models_names_with_one_warning():
    model = TinyMLP()
    copy_ = copy.deepcopy(model)
    records = []
    with GradientSonifier(model, wav=None, on_step=records.append) as son:
        with pytest.warns(GradsonicWarning, match=r"6 parameter\(s\) that are not in the model"):
            opt = son.wrap(torch.optim.SGD(copy_.parameters(), lr=0.1))  # (planned at wrap)
        x = torch.randn(6, 8)
        with warnings.catch_warnings():
            warnings.simplefilter("error", GradsonicWarning)  # no second warning
            opt.zero_grad()
            copy_(x).pow(2).mean().backward()
            expected = [copy_.fc1.weight.grad.norm(), copy_.fc2.weight.grad.norm(),
                        copy_.head.weight.grad.norm()]
            opt.step()
        train(copy_, opt, lambda i: copy_(x).pow(2).mean(), steps=2)  # no second warning
    assert len(records) == 3
    np.testing.assert_allclose(records[0].norms, [float(e) for e in expected], rtol=1e-5)


def test_layers_select_modules_parameters_names_and_patterns():
    model = RecurrentNet()
    cases = {
        ("lstm.weight_ih_l0",): (("lstm.weight_ih_l0",), [("lstm.weight_ih_l0",)]),
        ("lstm.l1",): (("lstm.l1",), None),
        ("gru", "head.bias"): (("gru", "head.bias"), [("gru.weight_ih_l0", "gru.weight_hh_l0"),
                                                      ("head.bias",)]),
        ("*.weight_hh_l1",): (("lstm.weight_hh_l1", "rnn.weight_hh_l1"), None),
        ("rnn*",): (("rnn.l0", "rnn.l1"), None),
    }
    for layers, (names, params) in cases.items():
        with GradientSonifier(model, layers=list(layers), wav=None) as son:
            assert son.layer_names == names, layers
            if params is not None:
                assert [tuple(p) for p in son.layer_params] == params
    with GradientSonifier(model, layers=[model.lstm.weight_hh_l0, model.gru], wav=None) as son:
        assert son.layer_names == ("lstm.weight_hh_l0", "gru")
    block = nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), nn.Linear(2, 1))
    with GradientSonifier(block, layers=["0"], wav=None) as son:  # a container: one voice
        assert son.layer_names == ("0",) and son.layer_params == (("0.0.weight", "0.1.weight"),)


def test_summary_lists_voices_and_what_is_not_heard():
    model = RecurrentNet()
    with GradientSonifier(model, wav=None) as son:
        text = son.summary()
    lines = text.splitlines()
    # before any step it says what will be heard, and that nothing has been yet
    assert lines[0].startswith("gradsonic: 6 voices will hear") and lines[0].endswith("(100.0%)")
    assert lines[-1].startswith("no step heard yet: wrap the optimizer") and "son.step()" in lines[-1]
    assert any(line.split()[1:2] == ["lstm.l0"] for line in lines)
    assert "lstm.bias_ih_l0" in text and "bias: not heard by default" in text
    with GradientSonifier(model, layers=["gru"], wav=None) as son:
        text = son.summary()
    assert "not selected by layers=" in text and "lstm.weight_ih_l0" in text
    assert "(10.0%)" not in text.splitlines()[0] and "%" in text.splitlines()[0]


def test_a_run_with_no_step_heard_warns_once_at_close_how_to_attach():
    model = TinyMLP()
    son = GradientSonifier(model, wav=None)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # never wrapped: the user forgot
    train(model, opt, lambda i: model(torch.randn(2, 8)).sum(), steps=2)
    with pytest.warns(GradsonicWarning, match=r"heard no optimizer step.*son\.step\(\)"):
        son.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        son.close()  # once


def test_an_abandoned_sonifier_is_collected_while_its_optimizer_lives_on():
    """A re-run notebook cell: a new sonifier wraps the same optimizer each time."""
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    refs, workers = [], []
    for _ in range(3):
        son = GradientSonifier(model, wav=None)
        son.wrap(opt)
        refs.append(weakref.ref(son))
        workers.append(son._worker)
        train(model, opt, lambda i: model(torch.randn(2, 8)).sum(), steps=1)
    del son
    gc.collect()
    assert [r() for r in refs] == [None, None, None]
    for w in workers:
        w.join(timeout=10)
        assert not w.is_alive()
    assert len(opt._optimizer_step_pre_hooks) == 0  # their hooks went with them
