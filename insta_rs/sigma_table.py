"""The per-example sigma table of Insta-RS Train (ALGORITHMS.md section 4).

``SigmaTable`` holds one sigma per training example (indexed by dataset index), its update rule and its
state. The update, for an example i with current sigma_i: evaluate s in {sigma_i e^-eta, sigma_i,
sigma_i e^+eta} (clipped to the bounds) with m noisy draws each, score Rhat_y(s) = s * PhiInv(clamp(phat_y(s),
eps, 1 - eps)) with the true label y as class A (``estimated_radius``), move to the best, and if
phat_y(sigma_i) < 1/2 shrink the result by e^-eta; clip. Under DDP every rank gathers all ranks'
(index, sigma, label, difficulty) and applies the same pairs, the lowest rank's value winning an index
that occurs twice (``first_occurrence``: a distributed sampler's padding repeats examples), so the tables
stay identical. The tensors are plain tensors, not module buffers, so DDP's buffer broadcast never
overwrites them. ``SigmaTableMonitor`` logs the table every epoch and exports it at the end of training.

``ProbeSigmaTable`` is the rule that costs no forward pass of its own (``train.update_rule=probe``;
docs/insta_rs_train.md): each stage-2 visit trains example i at one side sigma_i e^(+-eta) (a random first side,
then the other side at every next visit), records what that training forward says about the label (the
softmax probability of y, or whether the prediction is y) in a running mean per side over the last ``memory``
visits, and, once both sides have been seen, moves sigma_i by one step e^(+-eta) toward the side of larger
estimated radius s * PhiInv(clamp(mean, 1/(2 memory), 1 - 1/(2 memory))), or down when the two sides' means
average below 1/2 (the example is misclassified at sigma_i: the search rule's shrink).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import numpy as np
import pytorch_lightning as pl
import torch

from .certification_file import write_atomic

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
TRAIN_SIGMA_FILE = "train_sigma.pt"


def clamp_eps(m: int) -> float:
    """The clamp of phat in the update's PhiInv: 1/(2m), half a draw, so Rhat stays finite and a
    candidate that classified all m draws correctly still ranks by its sigma."""
    return 0.5 / m


def estimated_radius(sigma: torch.Tensor, p_correct: torch.Tensor, m: int) -> torch.Tensor:
    """Rhat_y = sigma * PhiInv(clamp(phat_y, 1/(2m), 1 - 1/(2m))), elementwise, in sigma's dtype: the sigma
    passed here must be the one the noise was scaled by (float32 for the table)."""
    eps = clamp_eps(m)
    return sigma * torch.distributions.Normal(0.0, 1.0).icdf(p_correct.clamp(eps, 1 - eps))


def candidate_sigmas(sigma: torch.Tensor, eta: float, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """(B, 3): sigma * (e^-eta, 1, e^+eta), clipped to [sigma_min, sigma_max]."""
    factors = torch.tensor([np.exp(-eta), 1.0, np.exp(eta)], dtype=sigma.dtype, device=sigma.device)
    return (sigma.view(-1, 1) * factors).clamp(sigma_min, sigma_max)


def choose_sigmas(candidates: torch.Tensor, p_correct: torch.Tensor, eta: float, sigma_min: float,
                  sigma_max: float, m: int) -> torch.Tensor:
    """The updated sigma per row from the three candidates (B, 3) and their estimated probability of the
    true class (B, 3). Ties go to the current sigma (column 1), then to the smaller sigma."""
    scores = estimated_radius(candidates, p_correct, m)
    # prefer the current sigma on ties, then the smaller one: order columns (1, 0, 2) before argmax
    order = torch.tensor([1, 0, 2], device=candidates.device)
    best = order[scores[:, order].argmax(dim=1)]
    new = candidates.gather(1, best.view(-1, 1)).view(-1)
    shrink = p_correct[:, 1] < 0.5
    new = torch.where(shrink, new * float(np.exp(-eta)), new)
    return new.clamp(sigma_min, sigma_max)


@torch.no_grad()
def estimate_p_correct(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, sigmas: torch.Tensor,
                       m: int) -> torch.Tensor:
    """phat_y for every (row, candidate): the fraction of m draws of f(x_b + s e) equal to y_b, for the
    (B, K) candidate sigmas, all B*K*m noisy images in one forward pass."""
    rows, k = sigmas.shape
    shape = x.shape[1:]
    repeated = x.unsqueeze(1).unsqueeze(1).expand(rows, k, m, *shape)
    scale = sigmas.view(rows, k, 1, *([1] * len(shape)))
    noisy = (repeated + scale * torch.randn_like(repeated)).reshape(rows * k * m, *shape)
    predictions = model(noisy).argmax(dim=1).view(rows, k, m)
    return (predictions == y.view(rows, 1, 1)).float().mean(dim=2)


def init_levels(sigma_min: float, sigma_max: float, count: int) -> torch.Tensor:
    """``count`` sigmas spaced evenly in log-sigma from sigma_min to sigma_max (float32)."""
    return torch.exp(torch.linspace(np.log(sigma_min), np.log(sigma_max), count)).float()


@torch.no_grad()
def search_initial_sigmas(model: torch.nn.Module, batches, levels: torch.Tensor, draws: int) -> tuple[torch.Tensor,
                                                                                                     torch.Tensor]:
    """The table's start for ``train.init=search``: for every (x, y, idx) batch, phat_y at each level with
    ``draws`` draws (``estimate_p_correct``, model in eval mode), and per example the level of largest
    Rhat_y = s * PhiInv(clamp(phat_y, 1/(2 draws), 1 - 1/(2 draws))), the smaller level on a tie (an example
    wrong at every level gets the smallest). Returns (idx, sigma) over all batches."""
    was_training = model.training
    model.eval()
    chosen_idx, chosen = [], []
    for x, y, idx in batches:
        candidates = levels.to(x.device).expand(x.shape[0], len(levels))
        scores = estimated_radius(candidates, estimate_p_correct(model, x, y, candidates, draws), draws)
        chosen.append(candidates[torch.arange(x.shape[0]), scores.argmax(dim=1)])  # argmax: the first maximum
        chosen_idx.append(idx.to(x.device))
    model.train(was_training)
    return torch.cat(chosen_idx), torch.cat(chosen)


def first_occurrence(indices: torch.Tensor) -> torch.Tensor:
    """A boolean mask keeping the first occurrence of each index (the lowest rank's, when the gathered
    batches are stacked rank after rank), so duplicated indices get one deterministic value."""
    if indices.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=indices.device)
    positions = torch.arange(indices.numel(), device=indices.device)
    size = int(indices.max()) + 1
    first = torch.full((size,), indices.numel(), dtype=torch.long, device=indices.device)
    first = first.scatter_reduce(0, indices, positions, reduce="amin")
    return first[indices] == positions


def _same(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


class SigmaTable:
    """One sigma per training example, with the update rule above and its state.

    ``sigma`` (float32), ``label`` (long, -1 until the example's first update) and ``difficulty`` (the
    estimate phat_y(sigma0) of the example's first update, i.e. the accuracy under noise at sigma0 of the
    model that finished stage 1; NaN until then) all have one entry per training example. ``visits``
    counts the stage-2 steps (``step``); every ``update_every``-th one updates its batch's sigmas.
    """

    STATE_KEYS = {"sigma": "sigma_table", "label": "label_table", "difficulty": "difficulty"}
    DIFFICULTY = "stage-1 model's accuracy under noise at sigma0"  # what ``difficulty`` holds, for the figure

    def __init__(self, size: int, sigma0: float, eta: float, sigma_min: float, sigma_max: float, m_update: int,
                 update_every: int = 1):
        self.sigma = torch.full((size,), float(sigma0))
        self.label = torch.full((size,), -1, dtype=torch.long)
        self.difficulty = torch.full((size,), float("nan"))
        self.eta, self.sigma_min, self.sigma_max = eta, sigma_min, sigma_max
        self.m_update, self.update_every = m_update, update_every
        self.visits = 0
        self.initialised = False  # True once search_initial_sigmas has set the table (train.init=search)

    def __len__(self) -> int:
        return len(self.sigma)

    def to(self, device) -> "SigmaTable":
        """Move the tensors to ``device`` (in place); returns the table."""
        for name in self.STATE_KEYS:
            setattr(self, name, getattr(self, name).to(device))
        return self

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        return self.sigma[idx]

    def step(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor,
             gather: Callable[[torch.Tensor], torch.Tensor] = _same) -> None:
        """One stage-2 training step: every ``update_every``-th call updates the batch's sigmas (``update``)."""
        if self.visits % self.update_every == 0:
            self.update(model, x, y, idx, gather)
        self.visits += 1

    def training_sigmas(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor,
                        gather: Callable[[torch.Tensor], torch.Tensor] = _same) -> torch.Tensor:
        """Before a stage-2 training step: ``step`` (the update, on its batches), then the batch's sigmas,
        the per-row noise levels the step trains with (float32, on x's device)."""
        self.step(model, x, y, idx, gather)
        return self.to(x.device)[idx]

    def observe(self, logits: torch.Tensor, y: torch.Tensor, idx: torch.Tensor,
                gather: Callable[[torch.Tensor], torch.Tensor] = _same) -> None:
        """After a stage-2 training step, what its forward said (``ProbeSigmaTable`` learns from it): this
        rule ignores it, having made its own forwards before the step."""

    @torch.no_grad()
    def update(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor,
               gather: Callable[[torch.Tensor], torch.Tensor] = _same) -> None:
        """Update the batch's sigmas (model in eval mode, no gradient; the 3 candidates x B rows x m_update
        draws in one forward), then apply every rank's updates: ``gather`` stacks a tensor of every rank,
        rank 0 first (identity in one process)."""
        self.to(x.device)
        proposal = self.propose(model, x, y, idx)
        self.apply(*(gather(t) for t in proposal))

    def propose(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor):
        """This rank's (idx, new sigma, label, difficulty) for a batch, before any rank applies them."""
        candidates = candidate_sigmas(self.sigma[idx], self.eta, self.sigma_min, self.sigma_max)
        was_training = model.training
        model.eval()
        p_correct = estimate_p_correct(model, x, y, candidates, self.m_update)
        model.train(was_training)
        new = choose_sigmas(candidates, p_correct, self.eta, self.sigma_min, self.sigma_max, self.m_update)
        known = self.difficulty[idx]
        difficulty = torch.where(torch.isnan(known), p_correct[:, 1].to(known.dtype), known)
        return idx, new, y, difficulty

    def apply(self, idx: torch.Tensor, sigma: torch.Tensor, label: torch.Tensor, difficulty: torch.Tensor) -> None:
        """Write (idx, sigma, label, difficulty) rows, the first occurrence of a repeated index winning."""
        keep = first_occurrence(idx)
        self.sigma[idx[keep]] = sigma[keep].to(self.sigma.dtype)
        self.label[idx[keep]] = label[keep]
        self.difficulty[idx[keep]] = difficulty[keep].to(self.difficulty.dtype)

    def state_dict(self) -> dict:
        """The checkpoint's entries (under ``checkpoint["insta_rs"]``): the three tensors and ``visits``."""
        state = {key: getattr(self, name).detach().cpu().clone() for name, key in self.STATE_KEYS.items()}
        return {**state, "visits": self.visits, "initialised": self.initialised}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()``; ValueError when it holds no table of this length."""
        if "sigma_table" not in state or state["sigma_table"].shape != self.sigma.shape:
            raise ValueError(f"no sigma table of length {len(self)}")
        for name, key in self.STATE_KEYS.items():
            setattr(self, name, state[key].clone())
        self.visits = int(state.get("visits", 0))
        self.initialised = bool(state.get("initialised", False))

    def initialise(self, idx: torch.Tensor, sigma: torch.Tensor) -> None:
        """Set the sigmas of ``idx`` (the initial search, ``search_initial_sigmas``) and mark the table
        initialised, so a resumed run does not search again."""
        self.to(sigma.device)
        self.sigma[idx] = sigma.to(self.sigma.dtype)
        self.initialised = True

    def statistics(self) -> dict[str, float]:
        """Quantiles, mean and the fractions of sigmas at either bound (within 1e-6 relative)."""
        values = self.sigma.detach().double().cpu()
        stats = {f"q{int(q * 100):02d}": float(torch.quantile(values, q)) for q in QUANTILES}
        stats["mean"] = float(values.mean())
        stats["at_min"] = float((values <= self.sigma_min * (1 + 1e-6)).double().mean())
        stats["at_max"] = float((values >= self.sigma_max * (1 - 1e-6)).double().mean())
        return stats

    def export(self, config: dict) -> dict:
        """The content of ``train_sigma.pt``: ``idx`` (LongTensor, the dataset indices of the examples stage 2
        visited, ascending), ``sigma`` (FloatTensor, their learned sigmas), ``label`` (LongTensor, their
        labels), ``difficulty`` (FloatTensor; NaN where unknown) and ``config`` (the run's resolved config)."""
        visited = (self.label >= 0).nonzero().view(-1).cpu()
        return {"idx": visited, "sigma": self.sigma.cpu()[visited], "label": self.label.cpu()[visited],
                "difficulty": self.difficulty.cpu()[visited], "config": config}


PROBE_SIGNALS = ("prob", "correct")
DOWN, UP = 0, 1


def probe_signal(logits: torch.Tensor, y: torch.Tensor, signal: str) -> torch.Tensor:
    """What one training forward f(x_i + s_i e_i) says about the label, per row (float32, no gradient):
    ``prob``, the softmax probability of y (an unbiased one-draw estimate of the soft smoothed classifier's
    probability of y at s_i); ``correct``, 1 if the prediction is y else 0 (one draw of phat_y(s_i))."""
    logits = logits.detach().float()
    if signal == "prob":
        return torch.softmax(logits, dim=1).gather(1, y.view(-1, 1)).view(-1)
    return (logits.argmax(dim=1) == y).float()


def side_sigmas(sigma: torch.Tensor, eta: float, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """(B, 2): sigma * (e^-eta, e^+eta), clipped to [sigma_min, sigma_max] (columns DOWN, UP)."""
    factors = torch.tensor([np.exp(-eta), np.exp(eta)], dtype=sigma.dtype, device=sigma.device)
    return (sigma.view(-1, 1) * factors).clamp(sigma_min, sigma_max)


class ProbeSigmaTable(SigmaTable):
    """The table with the rule that makes no forward pass of its own (``update_rule=probe``).

    Per example, besides ``sigma``, ``label`` and ``difficulty`` (here the label's signal at the example's first
    stage-2 visit: the stage-1 model at sigma0 e^(+-eta), one draw): ``probe_mean`` (N, 2), the running mean of
    the signal (``probe_signal``) observed at sigma e^-eta (column DOWN) and sigma e^+eta (UP); ``probe_count``
    (N, 2), how many visits it averages, capped at ``memory`` (past that, an exponential moving average of
    weight 1/memory); ``probe_side`` (N,), the side of the last visit (-1 before the first).

    A visit (``training_sigmas`` before the step, ``observe`` after it): the side is the other one than last
    time (a random one at the first visit); the step trains the example at that side's sigma; its forward's
    signal enters that side's mean; when both sides have been seen, sigma moves down if the two means average
    below 1/2 (the estimate at sigma itself), else to the side of the larger
    Rhat = s * PhiInv(clamp(mean, 1/(2 memory), 1 - 1/(2 memory))) (``estimated_radius``), and stays on a
    tie. The means carry over a move (measured one step away from where the sides now are; ``memory`` sets
    how fast they forget). Under DDP every rank gathers all ranks' (index, side, signal, label) and applies them in the same
    order, the lowest rank's winning a repeated index, so the tables stay identical.
    """

    STATE_KEYS = {**SigmaTable.STATE_KEYS, "probe_mean": "probe_mean", "probe_count": "probe_count",
                  "probe_side": "probe_side"}
    DIFFICULTY = "stage-1 model's signal at sigma0 e^(+-eta), first visit (one draw)"

    def __init__(self, size: int, sigma0: float, eta: float, sigma_min: float, sigma_max: float, memory: int,
                 signal: str = "prob"):
        # m_update = memory: the clamp of the estimated radius is half a visit, as the search rule's half a draw
        super().__init__(size, sigma0, eta, sigma_min, sigma_max, memory, 1)
        self.signal = signal
        self.probe_mean = torch.zeros((size, 2))
        self.probe_count = torch.zeros((size, 2), dtype=torch.long)
        self.probe_side = torch.full((size,), -1, dtype=torch.long)
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def memory(self) -> int:
        return self.m_update

    def training_sigmas(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor,
                        gather: Callable[[torch.Tensor], torch.Tensor] = _same) -> torch.Tensor:
        """The batch's training sigmas sigma_i e^(+-eta), one side per row (no forward pass; the random first
        sides come from torch's global generator)."""
        self.to(x.device)
        last = self.probe_side[idx]
        first = torch.randint(0, 2, (len(idx),), device=x.device)
        side = torch.where(last < 0, first, 1 - last)
        self._pending = (idx, side)
        self.visits += 1
        return side_sigmas(self.sigma[idx], self.eta, self.sigma_min, self.sigma_max).gather(
            1, side.view(-1, 1)).view(-1)

    def observe(self, logits: torch.Tensor, y: torch.Tensor, idx: torch.Tensor,
                gather: Callable[[torch.Tensor], torch.Tensor] = _same) -> None:
        """The training forward's logits (on the rows' noisy inputs at the sides ``training_sigmas`` gave):
        every rank's signals are gathered and applied (``apply_probe``)."""
        pending, side = self._pending
        if not torch.equal(pending, idx):
            raise RuntimeError("ProbeSigmaTable.observe: not the batch of the last training_sigmas")
        self._pending = None
        signal = probe_signal(logits, y, self.signal)
        self.apply_probe(*(gather(t) for t in (idx, side, signal, y)))

    @torch.no_grad()
    def apply_probe(self, idx: torch.Tensor, side: torch.Tensor, signal: torch.Tensor, label: torch.Tensor) -> None:
        """Record the signals (a repeated index: the first occurrence only), then move each visited sigma."""
        keep = first_occurrence(idx)
        idx, side, signal, label = idx[keep], side[keep], signal[keep].to(self.probe_mean.dtype), label[keep]
        count = self.probe_count[idx, side]
        mean = self.probe_mean[idx, side]
        weight = 1.0 / (count + 1).clamp(max=self.memory).to(mean.dtype)
        self.probe_mean[idx, side] = mean + (signal - mean) * weight
        self.probe_count[idx, side] = (count + 1).clamp(max=self.memory)
        self.probe_side[idx] = side
        self.label[idx] = label
        known = self.difficulty[idx]
        self.difficulty[idx] = torch.where(torch.isnan(known), signal.to(known.dtype), known)
        sigma = self.sigma[idx]
        sides = side_sigmas(sigma, self.eta, self.sigma_min, self.sigma_max)
        score = estimated_radius(sides, self.probe_mean[idx], self.memory)
        seen = (self.probe_count[idx] > 0).all(dim=1)
        wrong = self.probe_mean[idx].mean(dim=1) < 0.5  # the label's estimate at sigma itself is below 1/2
        up = seen & ~wrong & (score[:, UP] > score[:, DOWN])
        down = seen & (wrong | (score[:, DOWN] > score[:, UP]))
        self.sigma[idx] = torch.where(up, sides[:, UP], torch.where(down, sides[:, DOWN], sigma))


class SigmaTableMonitor(pl.Callback):
    """Logs the table of ``pl_module.sigma_table`` at every training epoch's end (``sigma_table/q10`` ...,
    ``mean``, ``at_min``, ``at_max``, and a histogram ``sigma_table/hist`` on W&B or TensorBoard-like
    loggers), and at the end of training writes ``train_sigma.pt`` (``SigmaTable.export``) and its figure
    ``sigma_hist_train.png`` in ``run_dir`` (rank 0 only; the tables of all ranks are identical)."""

    def __init__(self, run_dir: str | Path | None):
        self.run_dir = None if run_dir is None else Path(run_dir)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        table = pl_module.sigma_table
        # every rank holds the same table: syncing (the mean of equal values) changes nothing, and says so to DDP
        pl_module.log_dict({f"sigma_table/{key}": value for key, value in table.statistics().items()},
                           on_step=False, on_epoch=True, sync_dist=True)
        if trainer.is_global_zero:
            log_histogram(trainer.loggers, table.sigma.cpu().numpy(), trainer.current_epoch)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.run_dir is None or not trainer.is_global_zero:
            return
        exported = pl_module.sigma_table.export(pl_module.run_config)
        buffer = io.BytesIO()
        torch.save(exported, buffer)
        write_atomic(self.run_dir / TRAIN_SIGMA_FILE, buffer.getvalue())
        plot_sigma_table(exported["sigma"].numpy(), exported["difficulty"].numpy(), self.run_dir / "sigma_hist_train.png",
                         train_plot_title(len(exported["idx"]), len(pl_module.sigma_table), trainer.current_epoch),
                         pl_module.sigma_table.DIFFICULTY)


def train_plot_title(visited: int, size: int, epochs: int) -> str:
    """The title of sigma_hist_train.png: how many of the table's examples stage 2 visited (only those have
    a learned sigma), after how many epochs."""
    return f"Insta-RS Train: {visited:,} of {size:,} training examples visited, after {epochs} epochs"


def log_histogram(loggers, values: np.ndarray, epoch: int) -> None:
    """``sigma_table/hist`` on every logger that takes histograms (W&B, TensorBoard-like ones)."""
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            import wandb

            logger.experiment.log({"sigma_table/hist": wandb.Histogram(values), "epoch": epoch})
        elif hasattr(getattr(logger, "experiment", None), "add_histogram"):
            logger.experiment.add_histogram("sigma_table/hist", values, global_step=epoch)


def plot_sigma_table(sigmas, difficulty, path: str | Path, title: str,
                     difficulty_label: str = SigmaTable.DIFFICULTY) -> None:
    """sigma_hist_train.png: the table's histogram, and each example's sigma against its difficulty
    signal (``difficulty_label``: for the search rule the stage-1 model's accuracy under noise at sigma0 on
    that example; NaN where unknown)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sigmas = np.asarray(sigmas, dtype=float)
    difficulty = np.asarray(difficulty, dtype=float)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    top = 1.1 * float(np.nanmax(sigmas)) if np.isfinite(sigmas).any() else 1.0
    left.hist(sigmas, bins=np.linspace(0.0, top, 41), color="tab:blue")
    left.set_xlim(0.0, top)  # a linear axis from 0, as the certification runs' sigma histograms
    left.set_xlabel("sigma (pixel units)")
    left.set_ylabel("training examples")
    left.set_title("per-example sigma")
    known = np.isfinite(difficulty)
    jitter = np.random.default_rng(0).uniform(-0.015, 0.015, known.sum())
    right.scatter(difficulty[known] + jitter, sigmas[known], s=4, alpha=0.4)
    right.set_xlabel(difficulty_label)
    right.set_ylabel("sigma")
    right.set_title("sigma vs difficulty")
    fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_atomic(path, buffer.getvalue())
