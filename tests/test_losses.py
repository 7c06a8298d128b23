"""The training losses (insta_rs.losses): Gaussian augmentation, consistency regularisation (Jeong & Shin
2020) and MACER (Zhai et al. 2020).

Numbers are checked against the formulas evaluated independently in numpy/scipy on a fixed batch: a
linear model with fixed weights, fixed inputs, per-row sigmas and fixed standard-normal draws passed in
through the losses' ``noise`` argument; and against cases worked out by hand in the comments.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import log_softmax, logsumexp, softmax
from scipy.stats import norm
from torch import nn

from conftest import CONF, run_script
from insta_rs.errors import ConfigError
from insta_rs.losses import (ConsistencyLoss, GaussianAugmentation, MacerLoss, consistency_objective, draw_noise,
                             macer_objective)

LOSSES = {"gaussian": GaussianAugmentation, "consistency": ConsistencyLoss, "macer": MacerLoss}  # train/loss=<name>

B, C, SHAPE = 5, 4, (1, 2, 3)  # 5 inputs of 1x2x3 pixels, 4 classes
D = int(np.prod(SHAPE))


@pytest.fixture
def batch():
    rng = np.random.default_rng(7)
    W = rng.normal(0, 1.5, size=(C, D))
    b = rng.normal(0, 0.5, size=C)
    x = rng.uniform(0, 1, size=(B, *SHAPE))
    y = np.array([0, 1, 2, 3, 1])
    sigma = np.array([0.12, 0.25, 0.5, 1.0, 0.0])  # one sigma per row; 0 = no noise for the last row
    model = nn.Sequential(nn.Flatten(), nn.Linear(D, C))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor(W, dtype=torch.float32))
        model[1].bias.copy_(torch.tensor(b, dtype=torch.float32))
    return {"W": W, "b": b, "x": x, "y": y, "sigma": sigma, "model": model, "rng": rng}


def torch_args(batch):
    return (batch["model"], torch.tensor(batch["x"], dtype=torch.float32), torch.tensor(batch["y"]),
            torch.tensor(batch["sigma"], dtype=torch.float32))


def numpy_logits(batch, noise):
    """z_ij = W (x_i + sigma_i e_ij) + b for every copy j: (copies, B, C)."""
    noisy = batch["x"][None] + batch["sigma"].reshape(1, -1, 1, 1, 1) * noise
    return noisy.reshape(noise.shape[0], B, D) @ batch["W"].T + batch["b"]


# ------------------------------------------------------------------------------------------- consistency


def consistency_numpy(z, y, lbd, eta):
    m = z.shape[0]
    p = softmax(z, axis=-1)
    ce = np.mean([-np.log(p[j, i, y[i]]) for j in range(m) for i in range(B)])
    p_bar = p.mean(0)
    kl = np.array([[np.sum(p_bar[i] * (np.log(p_bar[i]) - np.log(p[j, i]))) for i in range(B)] for j in range(m)])
    consistency = kl.mean()
    entropy = np.mean(-np.sum(p_bar * np.log(p_bar), axis=-1))
    return ce + lbd * consistency + eta * entropy, ce, consistency, entropy


@pytest.mark.parametrize("m,lbd,eta", [(2, 10.0, 0.5), (3, 20.0, 0.0), (4, 0.0, 1.0)])
def test_consistency_equals_the_formula(batch, m, lbd, eta):
    noise = batch["rng"].normal(size=(m, B, *SHAPE))
    out = ConsistencyLoss(m=m, lbd=lbd, eta=eta)(*torch_args(batch), noise=torch.tensor(noise, dtype=torch.float32))
    total, ce, consistency, entropy = consistency_numpy(numpy_logits(batch, noise), batch["y"], lbd, eta)
    assert float(out.loss) == pytest.approx(total, rel=1e-4)
    assert float(out.parts["ce"]) == pytest.approx(ce, rel=1e-4)
    assert float(out.parts["consistency"]) == pytest.approx(consistency, rel=1e-3, abs=1e-6)
    assert float(out.parts["entropy"]) == pytest.approx(entropy, rel=1e-4)
    assert consistency > 1e-3, "the copies disagree, so the regulariser is not trivially zero"
    # the logits for the training accuracy are the first copy's
    np.testing.assert_allclose(out.logits.detach().numpy(), numpy_logits(batch, noise)[0], rtol=1e-5, atol=1e-5)


def test_consistency_of_identical_copies_by_hand():
    # Two identical copies: KL(pbar || p_j) = 0, so loss = CE + eta * H(p).
    # logits (0, log 3) -> p = (1/4, 3/4); label 1: CE = -log(3/4) = 0.28768;
    # H = -(1/4 log 1/4 + 3/4 log 3/4) = 0.34657 + 0.21576 = 0.56233; eta = 0.5 -> 0.28768 + 0.28117 = 0.56885.
    logits = torch.tensor([[[0.0, math.log(3)]], [[0.0, math.log(3)]]])
    terms = consistency_objective(logits, torch.tensor([1]), lbd=10.0, eta=0.5)
    assert float(terms["consistency"]) == pytest.approx(0.0, abs=1e-7)
    assert float(terms["ce"]) == pytest.approx(0.287682, abs=1e-6)
    assert float(terms["entropy"]) == pytest.approx(0.562335, abs=1e-6)
    assert float(terms["loss"]) == pytest.approx(0.568850, abs=1e-6)
    # Two copies that disagree: p1 = (1, 0)-ish vs p2 = (1/2, 1/2) with logits (0, 0).
    # Take p1 = (3/4, 1/4), p2 = (1/4, 3/4): pbar = (1/2, 1/2), KL(pbar || p1) = KL(pbar || p2)
    # = 1/2 log(2/3) + 1/2 log(2) = 1/2 log(4/3) = 0.143841; H(pbar) = log 2 = 0.693147.
    logits = torch.tensor([[[math.log(3), 0.0]], [[0.0, math.log(3)]]])
    terms = consistency_objective(logits, torch.tensor([0]), lbd=10.0, eta=0.5)
    assert float(terms["consistency"]) == pytest.approx(0.5 * math.log(4 / 3), abs=1e-6)
    assert float(terms["entropy"]) == pytest.approx(math.log(2), abs=1e-6)
    # CE = (-log 3/4 - log 1/4) / 2 = (0.287682 + 1.386294) / 2 = 0.836988
    assert float(terms["loss"]) == pytest.approx(0.836988 + 10 * 0.143841 + 0.5 * 0.693147, abs=1e-5)


def test_consistency_stays_finite_when_a_probability_underflows():
    logits = torch.tensor([[[200.0, -200.0, 0.0]], [[-200.0, 200.0, 0.0]]], requires_grad=True)
    terms = consistency_objective(logits, torch.tensor([0]), lbd=10.0, eta=0.5)
    terms["loss"].backward()
    assert torch.isfinite(terms["loss"]) and torch.isfinite(logits.grad).all()
    # pbar = (1/2, 1/2, ~0): KL to each copy ~ 1/2 * (log(1/2) - (-400)) + 1/2 log(1/2) -> 200 - log 2
    assert float(terms["consistency"]) == pytest.approx(200 - math.log(2), rel=1e-4)


# ------------------------------------------------------------------------------------------------- MACER


def macer_numpy(z, y, sigma, lbd, gamma, beta, eps):
    k = z.shape[0]
    ce = np.array([-(logsumexp(log_softmax(z[:, i], axis=-1)[:, y[i]]) - np.log(k)) for i in range(B)])
    g = softmax(beta * z, axis=-1).mean(0)
    radius = np.zeros(B)
    for i in range(B):
        order = np.argsort(-g[i])
        top1, top2 = np.clip(g[i, order[:2]], eps, 1 - eps)
        gap = norm.ppf(top1) - norm.ppf(top2)
        if order[0] == y[i] and gap <= gamma:
            radius[i] = sigma[i] / 2 * max(0.0, gamma - gap)
    return np.mean(ce + lbd * radius), ce.mean(), radius.mean(), radius


@pytest.mark.parametrize("k,lbd,gamma,beta", [(16, 12.0, 8.0, 16.0), (3, 4.0, 2.0, 1.0), (1, 1.0, 8.0, 0.5)])
def test_macer_equals_the_formula(batch, k, lbd, gamma, beta):
    noise = batch["rng"].normal(size=(k, B, *SHAPE))
    loss = MacerLoss(k=k, lbd=lbd, gamma=gamma, beta=beta)
    out = loss(*torch_args(batch), noise=torch.tensor(noise, dtype=torch.float32))
    z = numpy_logits(batch, noise)
    total, ce, radius_mean, radius = macer_numpy(z, batch["y"], batch["sigma"], lbd, gamma, beta, loss.eps)
    assert float(out.loss) == pytest.approx(total, rel=1e-4)
    assert float(out.parts["ce"]) == pytest.approx(ce, rel=1e-4)
    assert float(out.parts["radius"]) == pytest.approx(radius_mean, rel=1e-3, abs=1e-6)
    np.testing.assert_allclose(out.logits.detach().numpy(), z[0], rtol=1e-5, atol=1e-5)
    if (k, beta) == (3, 1.0):
        assert (radius > 0).sum() >= 1, "the fixed batch exercises the hinge"


def test_macer_by_hand():
    # Two classes, one copy, beta = 2, gamma = 8, lambda = 12, sigma = 0.5.
    # Logit gap d with sigmoid(beta d) = Phi(1) = 0.841345: top-1 prob Phi(1), top-2 prob Phi(-1), so the
    # PhiInv gap is 1 - (-1) = 2 and the radius term is sigma/2 * (gamma - 2) = 0.25 * 6 = 1.5.
    beta, p1 = 2.0, norm.cdf(1.0)
    d = math.log(p1 / (1 - p1)) / beta
    logits = torch.tensor([[[d, 0.0], [d, 0.0], [d, 0.0]]], dtype=torch.float64)
    y = torch.tensor([0, 1, 0])  # row 1 is misclassified: no radius term
    sigma = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)  # row 2 has sigma 0: radius term 0
    terms = macer_objective(logits, y, sigma, lbd=12.0, gamma=8.0, beta=beta, eps=1e-6)
    ce0 = -math.log(1 / (1 + math.exp(-d)))  # -log softmax(d, 0)[0] (beta does not enter the CE)
    ce1 = -math.log(1 / (1 + math.exp(d)))
    assert float(terms["ce"]) == pytest.approx((ce0 + ce1 + ce0) / 3, rel=1e-9)
    assert float(terms["radius"]) == pytest.approx(1.5 / 3, rel=1e-6)
    assert float(terms["loss"]) == pytest.approx((ce0 + ce1 + ce0) / 3 + 12 * 1.5 / 3, rel=1e-6)
    assert float(terms["hinge_fraction"]) == pytest.approx(2 / 3)


def test_macer_hinge_is_off_beyond_gamma_and_gradients_stay_finite():
    # A very confident correct row: top-1 ~ 1, top-2 ~ 0 in float32. Clamped to [1e-6, 1 - 1e-6] the gap is
    # 2 * 4.75 = 9.5 > gamma = 8, so no radius term; the gradient is finite (no inf * 0).
    logits = torch.tensor([[[60.0, 0.0, -5.0]], [[61.0, 0.5, -4.0]]], requires_grad=True)
    terms = macer_objective(logits, torch.tensor([0]), torch.tensor([1.0]), lbd=12.0, gamma=8.0, beta=16.0,
                            eps=1e-6)
    terms["loss"].backward()
    assert float(terms["radius"]) == 0.0 and float(terms["hinge_fraction"]) == 0.0
    assert torch.isfinite(logits.grad).all()
    # a row just inside the hinge gets a positive radius term and a gradient that pushes the gap up
    logits = torch.tensor([[[0.2, 0.0, -5.0]]], requires_grad=True)
    terms = macer_objective(logits, torch.tensor([0]), torch.tensor([1.0]), lbd=12.0, gamma=8.0, beta=16.0,
                            eps=1e-6)
    terms["radius"].backward()
    assert float(terms["radius"]) > 0
    assert logits.grad[0, 0, 0] < 0 < logits.grad[0, 0, 1], "descending the hinge widens the top-1/top-2 gap"


# -------------------------------------------------------------------------------------- shared behaviour


@pytest.mark.parametrize("name", ["consistency", "macer"])
def test_default_noise_is_torch_randn_scaled_per_row(batch, name):
    loss = ConsistencyLoss(m=3) if name == "consistency" else MacerLoss(k=3)
    args = torch_args(batch)
    torch.manual_seed(123)
    drawn = loss(*args)
    torch.manual_seed(123)
    noise = draw_noise(args[1], 3)
    given = loss(*args, noise=noise)
    assert noise.shape == (3, B, *SHAPE)
    assert float(drawn.loss) == pytest.approx(float(given.loss), rel=1e-6)
    # the last row has sigma 0: its logits are the clean ones whatever the noise
    clean = batch["model"](args[1])[-1]
    torch.testing.assert_close(drawn.logits[-1], clean)


def test_gaussian_augmentation_is_one_noisy_cross_entropy(batch):
    model, x, y, sigma = torch_args(batch)
    torch.manual_seed(5)
    out = GaussianAugmentation()(model, x, y, sigma)
    torch.manual_seed(5)
    e = torch.randn_like(x)
    z = numpy_logits(batch, e.numpy()[None].astype(float))[0]
    assert float(out.loss) == pytest.approx(np.mean(-log_softmax(z, axis=-1)[np.arange(B), batch["y"]]), rel=1e-4)


@pytest.mark.parametrize("name,params,setting", [
    ("consistency", {"m": 1}, "m"),
    ("consistency", {"lbd": -1.0}, "lbd"),
    ("consistency", {"eta": float("nan")}, "eta"),
    ("macer", {"k": 0}, "k"),
    ("macer", {"gamma": 0.0}, "gamma"),
    ("macer", {"beta": -2.0}, "beta"),
    ("macer", {"eps": 1e-3}, "eps"),     # 2 PhiInv(1 - 1e-3) = 6.2 < gamma = 8
    ("macer", {"eps": 1e-9}, "eps"),     # 1 - 1e-9 is 1 in float32
    ("macer", {"lbd": "a"}, "lbd"),
])
def test_bad_loss_settings_are_one_line_config_errors(name, params, setting):
    with pytest.raises(ConfigError) as err:
        LOSSES[name](**params)
    assert str(err.value).startswith(setting + "=") and "\n" not in str(err.value)


def test_bad_loss_settings_through_the_config_are_one_line_config_errors(compose):
    """A range error comes out of Hydra's instantiate as the loss's own one-line ConfigError (what train.py
    prints); an unknown loss option is refused by the train/loss schema at composition."""
    from hydra.errors import ConfigCompositionException
    from hydra.utils import instantiate

    from insta_rs.cli import user_error_cause

    from insta_rs.cli import build_group, resolved

    cfg = compose("train", ["train=macer", "train.loss.eps=1e-3"])
    with pytest.raises(Exception) as err:
        instantiate(cfg.train, _convert_="all")
    cause = user_error_cause(err.value)
    assert isinstance(cause, ConfigError) and str(cause).startswith("eps=") and "\n" not in str(cause)
    with pytest.raises(ConfigError) as err:  # what train.py does: the error names the full key
        build_group(resolved(cfg.train), "train", _convert_="all")
    assert str(err.value).startswith("train.loss.eps=") and "\n" not in str(err.value)
    with pytest.raises(ConfigCompositionException) as err:
        compose("train", ["train=macer", "train.loss.alpha=1"])
    assert "alpha" in str(err.value) + str(err.value.__cause__)


def test_an_unknown_loss_is_one_line_naming_the_choices(capsys):
    from insta_rs.cli import check_group_choices

    with pytest.raises(SystemExit) as exit_:
        check_group_choices(["train/loss=focal"], CONF)
    line = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "\n" not in line and "focal" in line and "consistency, gaussian, macer" in line


def test_loss_configs_build_their_losses_with_the_documented_defaults(compose):
    """Each train/loss choice builds its loss through _target_, with the papers' defaults (Jeong & Shin:
    m = 2, lambda = 10, eta = 0.5; MACER on CIFAR-10: k = 16, lambda = 12, gamma = 8, beta = 16)."""
    from hydra.utils import instantiate

    expected = {"gaussian": (GaussianAugmentation, {}),
                "consistency": (ConsistencyLoss, {"m": 2, "lbd": 10.0, "eta": 0.5}),
                "macer": (MacerLoss, {"k": 16, "lbd": 12.0, "gamma": 8.0, "beta": 16.0})}
    assert sorted(p.stem for p in (CONF / "train" / "loss").glob("*.yaml")) == sorted(LOSSES) == sorted(expected)
    for name, (cls, values) in expected.items():
        loss = instantiate(compose("train", [f"train/loss={name}"]).train.loss)
        assert type(loss) is cls
        assert {key: getattr(loss, key) for key in values} == values


def schedules() -> list[str]:
    """The sigma schedules: every train config, whatever loss it selects by default."""
    return sorted(p.stem for p in (CONF / "train").glob("*.yaml") if p.stem != "selector")  # selector: no loss


@pytest.mark.parametrize("schedule", schedules())
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_every_schedule_combines_with_every_loss(compose, schedule, loss, batch):
    """`train=<schedule> train/loss=<loss>` composes and the module trains with that loss on per-row sigmas."""
    from hydra.utils import instantiate

    from insta_rs.training import SmoothingClassifier

    cfg = compose("train", [f"train={schedule}", f"train/loss={loss}", "dataset=synthetic"])
    settings = instantiate(cfg.train, _convert_="all")
    module = SmoothingClassifier(batch["model"], C, settings, num_train=B)
    assert type(module.loss) is LOSSES[loss]
    out = module.loss(*torch_args(batch))
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.logits.shape == (B, C)


@pytest.mark.parametrize("train,parts", [("consistency", ["ce", "consistency", "entropy"]),
                                         ("macer", ["ce", "radius", "hinge_fraction"])])
def test_training_runs_a_few_steps_on_digits(train, parts, tmp_path):
    """A few steps of train.py with the loss; its parts are logged beside it, and make it up: for consistency
    loss = ce + lbd * consistency + eta * entropy (per batch, so also for the batch-weighted epoch means)."""
    run_script("train.py", f"train={train}", "debug=fast", f"hydra.run.dir={tmp_path}", "train.loss.lbd=2.0",
               "trainer.limit_train_batches=4")
    metrics = pd.read_csv(tmp_path / "csv" / "metrics.csv")
    losses = metrics["train/loss"].dropna()
    assert len(losses) == 1 and np.isfinite(losses).all()
    assert metrics["val/acc_noisy"].notna().sum() == 1
    row = metrics.dropna(subset=["train/loss"]).iloc[0]
    assert all(np.isfinite(row[f"train/loss/{part}"]) for part in parts)
    if train == "consistency":
        total = row["train/loss/ce"] + 2.0 * row["train/loss/consistency"] + 0.5 * row["train/loss/entropy"]
        assert row["train/loss"] == pytest.approx(total, rel=1e-5)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["insta_rs"]["config"]["train"]["loss"]["_target_"] == f"insta_rs.losses.{LOSSES[train].__name__}"
    assert ckpt["insta_rs"]["config"]["train"]["loss"]["lbd"] == 2.0
