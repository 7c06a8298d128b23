"""How fast certification runs, against a naive loop and against the model's own forward pass.

    python -m insta_rs.bench certify [--model small_cnn|cifar_resnet20|cifar_vgg] [--width 16] [--autocast bf16]
                                     [--noise split] [--noise-threads 2] [--n 10000] [--rows 2] [--quick]
    python -m insta_rs.bench certify --ranks 2 [--model ...] [--rows 16]   # sharded over 2 CPU processes
    python -m insta_rs.bench search  [--model small_cnn|cifar_resnet20] [--n 100000] [--quick]
    python -m insta_rs.bench sequential --ckpt RUN/checkpoints/last.ckpt [--radii 0.25,0.5,0.75,1.0] [--rows 200]

``certify`` measures, in one process with one model (random initialisation from ``--seed``), one n and
one ``torch.set_num_threads`` value, three rates in noise draws per second (a draw is one noisy image
through the model; CERTIFY of one input makes n0 + n of them, ALGORITHMS.md 1):

- (a) our certification: ``Smooth.certify_batch`` of ``--rows`` inputs at the best chunk size and memory
  format found for (c), the noise drawn as ``--noise`` and ``--noise-threads`` say; (a0) the same with the
  noise drawn in one thread from the default stream (how every run drew it before noise threads: the
  "before" of (a), shown when (a) differs from it); (a') ``Smooth.certify`` one input at a time, what a loop
  that calls it once per input gets (no forward pass shared between inputs);
- (b) a naive per-input loop like the field's reference code: repeat the image to a batch of 1000, add
  ``randn_like`` noise, take the argmax, count the classes in a Python loop over the predictions;
- (c) the ceiling: the model's forward pass alone on a ready batch, at its best batch size (and memory
  format) among ``--batch-sizes``.

Each is warmed up, then measured ``--repeats`` times, interleaved round by round so that a background
load hits all three alike; the median is reported. The bench prints a/b and a/c, where the time of (a) and
(a0) goes (noise = drawing it, shift = multiply by sigma and add x, forward, count, other), and ends with one
line of ``name=value`` pairs (``speedup_vs_naive=... fraction_of_forward=... noise_share=...
a0_noise_share=... speedup_noise_threads=a/a0``) for scripts. ``--width`` sets the first stage's channels of
small_cnn or cifar_vgg, ``--autocast bf16`` runs the forward passes of (a), (a0), (a') and (c) in bfloat16.
``--clock cpu`` measures the rates in CPU seconds of the process instead of wall seconds: on a machine shared
with other jobs, with ``--threads 1 --noise-threads 1``, it compares paths as an idle core would.

``certify --ranks R`` times ``insta_rs.distributed.certify_sharded`` (the path of ``certify.py
trainer=ddp_sim``: sharding, per-rank shard files, merge) on R CPU processes against one process, both
with the same cores, checks that the rows agree, and ends with ``speedup_ranks=...``.

``search`` runs the Insta-RS sigma search (``insta_rs.search.insta_rs.InstaRSSearch`` at its default
knobs, ALGORITHMS.md 2) and prints its draws and seconds as a fraction of the certification that
follows it (n0 + n draws at the chosen sigma), ending with ``search_draws_fraction=...
search_seconds_fraction=...``. With ``small_cnn`` the model is first trained briefly on the digits data
(``--train-steps``) so that the search sees a real margin landscape; ``cifar_resnet20`` stays random.

``sequential --ckpt PATH`` certifies the same ``--rows`` inputs of a trained run's test split (every
``--skip``-th) twice in one process, with ``certify.sampling=fixed`` at ``--n`` draws and with
``sequential`` at a maximum of ``--n`` (same alpha, same seed; ``--bound union|anytime|both``, ``--tolerance``),
and prints both certified-accuracy curves and ACRs, the mean draws and seconds per input, and the ratios.
``--radii 0.25,0.5,0.75,1.0`` runs the sequential certifications in radii mode (``certify.radii``: r = 0, then
each listed radius, is a target) instead of the tolerance rule. It prints the certified-accuracy difference
(sequential - fixed) at every radius of the grid and ends with ``draws_reduction=X seconds_reduction=Y
acr_ratio=Z max_accuracy_drop=W max_accuracy_difference=V draws_fixed=... draws_sequential=...`` (the last
bound's figures; max_accuracy_drop is the largest drop of certified accuracy over the radius grid, as a
fraction, and max_accuracy_difference the largest difference either way). ``--sigma-search`` takes the
conf/sigma_search names fixed, grid, cascade and best_level.

``--quick`` shrinks everything (tiny model, small n, one repeat) for the test suite: its figures are
well-formed but mean nothing about speed, and ``bench certify --quick`` says so. Every flag's ``--help``
shows its default.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time

import numpy as np
import torch

from .certificates import ABSTAIN, clopper_pearson_lower, cohen_radius
from .errors import ConfigError, InstaRSError, check
from .models import CifarResNet, CifarVGG, SmallCNN, count_parameters
from .smoothing import NOISE_MODES, Smooth, autocast_dtype_of, row_generator

MODELS = ("small_cnn", "cifar_resnet20", "cifar_vgg")
NAIVE_BATCH = 1000
"""The reference code's batch (Cohen et al., core.py: ``batch_size=1000``)."""


# -- models and inputs ----------------------------------------------------------------------------------

def build_model(name: str, quick: bool, seed: int, width: int | None = None) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    """A randomly initialised model (weights fixed by ``seed``) and its input shape (C, H, W). ``width``: the first
    stage's channels of small_cnn or cifar_vgg (None: the model's default, 4 with ``quick``)."""
    check(name in MODELS, "--model", name, " or ".join(MODELS))
    torch.manual_seed(seed)
    if name == "small_cnn":
        shape = (1, 8, 8)
        kwargs = {"width": 4, "hidden": 16} if quick else {}
        if width is not None:
            kwargs["width"] = width
        model = SmallCNN(10, shape, mean=(0.3,), std=(0.4,), **kwargs)
    elif name == "cifar_vgg":
        shape = (3, 32, 32)
        model = CifarVGG(10, shape, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26),
                         width=width if width is not None else 4 if quick else 8)
    else:
        shape = (3, 32, 32)
        kwargs = {"depth": 8, "width": 4} if quick else {"depth": 20}
        model = CifarResNet(10, shape, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26), **kwargs)
    return model.eval(), shape


def random_inputs(rows: int, shape, seed: int) -> torch.Tensor:
    return torch.rand((rows, *shape), generator=torch.Generator().manual_seed(seed + 1))


# -- (b) the naive loop -----------------------------------------------------------------------------------

def naive_counts(model, x: torch.Tensor, sigma: float, num: int, num_classes: int, device) -> np.ndarray:
    """Class counts over ``num`` draws, the way the field's reference code makes them: batches of
    NAIVE_BATCH copies of x plus ``randn_like`` noise, predictions moved to the host and counted one by one."""
    counts = np.zeros(num_classes, dtype=np.int64)
    remaining = num
    with torch.no_grad():
        while remaining > 0:
            this_batch = min(NAIVE_BATCH, remaining)
            remaining -= this_batch
            batch = x.to(device).repeat((this_batch, 1, 1, 1))
            noise = torch.randn_like(batch) * sigma
            predictions = model(batch + noise).argmax(1)
            for label in predictions.cpu().numpy():
                counts[label] += 1
    return counts


def naive_certify(model, x, sigma: float, n0: int, n: int, alpha: float, num_classes: int, device):
    """CERTIFY (ALGORITHMS.md 1) on top of ``naive_counts``: (predict, radius)."""
    candidate = int(naive_counts(model, x, sigma, n0, num_classes, device).argmax())
    count = int(naive_counts(model, x, sigma, n, num_classes, device)[candidate])
    p_lower = clopper_pearson_lower(count, n, alpha)
    return (ABSTAIN, 0.0) if p_lower < 0.5 else (candidate, cohen_radius(sigma, p_lower))


# -- timing ------------------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
"""``--clock``: wall seconds, or the CPU seconds of this process (every thread), which a machine shared with other
jobs does not inflate; with ``--threads 1 --noise-threads 1`` a CPU second is a wall second of an idle core."""
_clock = [time.perf_counter]


def timed(fn, device: torch.device) -> float:
    """Seconds of one call of fn on the ``--clock`` (wall by default; CUDA synchronized before and after)."""
    _sync(device)
    start = _clock[0]()
    fn()
    _sync(device)
    return _clock[0]() - start


def forward_rate(model, batch: torch.Tensor, device, autocast_dtype, draws: int) -> float:
    """Draws per second of the bare forward pass + argmax on a ready batch, timed over at least ``draws``
    images (whole batches, back to back) after one warm-up call."""
    def run():
        with torch.inference_mode(), _autocast(device, autocast_dtype):
            model(batch).argmax(1)

    run()  # warm-up (and compilation, for a compiled model)
    calls = max(1, math.ceil(draws / batch.shape[0]))

    def run_all():
        for _ in range(calls):
            run()

    return calls * batch.shape[0] / timed(run_all, device)


def _autocast(device: torch.device, dtype):
    import contextlib

    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


def _prepare(model, channels_last: bool, compile_model: bool):
    model = copy.deepcopy(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model, dynamic=False) if compile_model else model


def search_ceiling(model, shape, batch_sizes, formats, device, autocast_dtype, compile_model, calls: int,
                   draws: int):
    """The forward rate for every (batch size, memory format); returns ({(bs, cl): rate}, best key).
    Each configuration is measured ``calls`` times (``draws`` images each), round by round across configurations (so a burst of
    background load does not pick the winner), and its median is kept."""
    prepared = {cl: _prepare(model, cl, compile_model).to(device) for cl in formats}
    batches = {}
    for cl in formats:
        for bs in batch_sizes:
            batch = torch.rand((bs, *shape), device=device)
            batches[(bs, cl)] = batch.contiguous(memory_format=torch.channels_last) if cl else batch
    samples = {key: [] for key in batches}
    for _ in range(calls):
        for (bs, cl), batch in batches.items():
            samples[(bs, cl)].append(forward_rate(prepared[cl], batch, device, autocast_dtype, draws))
    rates = {key: statistics.median(values) for key, values in samples.items()}
    return rates, max(rates, key=rates.get)


# -- bench certify -----------------------------------------------------------------------------------------

def bench_certify(args) -> dict:
    """Rates (a), (a1), (b) and (c) of the module docstring for one model; prints them, their ratios and where
    the time of (a) goes, ends with the ``name=value`` line, and returns its pairs."""
    device = torch.device(args.device)
    autocast_dtype = autocast_dtype_of(None if args.autocast == "none" else args.autocast)
    check(args.clock == "wall" or device.type == "cpu", "--clock", args.clock, "wall on a GPU")
    _clock[0] = CLOCKS[args.clock]
    model, shape = build_model(args.model, args.quick, args.seed, args.width)
    model = model.to(device)
    inputs = random_inputs(max(args.rows, args.repeats + 1), shape, args.seed)
    formats = {"auto": (False, True), "on": (True,), "off": (False,)}[args.channels_last]
    _print_certify_header(args, model, shape, device)
    batch_size, channels_last = _best_forward(args, model, shape, formats, device, autocast_dtype)
    paths = _CertifyPaths(args, model, shape, inputs, device, autocast_dtype, batch_size, channels_last)
    paths.warm_up()
    samples = _certify_samples(paths, args, device)
    rate = {key: statistics.median(values) for key, values in samples.items()}
    shares = {key: _phase_shares(paths, key, device) for key in paths.smooths}
    _print_certify_table(args, paths, rate, samples, shares, batch_size, channels_last)
    pairs = _certify_pairs(args, paths, rate, shares, batch_size, channels_last)
    print(format_pairs(pairs), flush=True)
    return pairs


QUICK_WARNING = ("--quick: a tiny model, a small n and one repeat, to check that the bench runs; its figures mean "
                 "nothing about speed")


def _print_certify_header(args, model, shape, device) -> None:
    if args.quick:
        print(QUICK_WARNING, flush=True)
    print(f"bench certify ({args.clock} clock): model={args.model}{' (quick: tiny)' if args.quick else ''} input={shape} "
          f"params={count_parameters(model)} n0={args.n0} n={args.n} rows={args.rows} sigma={args.sigma} "
          f"threads={torch.get_num_threads()} device={device} autocast={args.autocast} compile={args.compile} "
          f"noise={args.noise} noise_threads={_noise_threads(args, device)} torch={torch.__version__}", flush=True)


def _noise_threads(args, device) -> int:
    """The threads that draw the noise in (a): --noise-threads, else torch's threads on the CPU, 1 elsewhere."""
    return args.noise_threads or (torch.get_num_threads() if device.type == "cpu" else 1)


def _best_forward(args, model, shape, formats, device, autocast_dtype) -> tuple[int, bool]:
    """The (batch size, channels_last) of the fastest forward pass (``search_ceiling``), printed with every rate."""
    rates, best = search_ceiling(model, shape, args.batch_sizes, formats, device, autocast_dtype, args.compile,
                                 calls=max(2, args.repeats), draws=2 * max(args.batch_sizes))
    print("forward ceiling search (draws/s): " + "  ".join(
        f"bs={bs}{' cl' if cl else ''}={rate:,.0f}" for (bs, cl), rate in rates.items()), flush=True)
    batch_size, channels_last = best
    print(f"best: batch_size={batch_size} channels_last={channels_last}", flush=True)
    return batch_size, channels_last


class _CertifyPaths:
    """The measured paths of ``bench certify``: (a) ``Smooth.certify_batch`` of the first ``--rows`` inputs with the
    noise settings of ``--noise`` and ``--noise-threads``; (a0) the same with the noise drawn in one thread from
    the default stream (how it was drawn before noise threads; measured only when (a) differs from it);
    (a') ``Smooth.certify`` of one input; (b) ``naive_certify`` of one input; (c) the forward pass alone."""

    def __init__(self, args, model, shape, inputs, device, autocast_dtype, batch_size: int, channels_last: bool):
        self.args, self.inputs, self.device, self.autocast_dtype = args, inputs, device, autocast_dtype
        self.batch_size, self.num_classes = batch_size, model.num_classes
        self.naive_model = copy.deepcopy(model)  # float32, NCHW, eager: the reference code's setting

        def smooth(noise: str, noise_threads: int) -> Smooth:
            return Smooth(copy.deepcopy(model), model.num_classes, batch_size=batch_size, device=device,
                          autocast_dtype=autocast_dtype, channels_last=channels_last, compile=args.compile,
                          noise=noise, noise_threads=noise_threads)

        threads = _noise_threads(args, device)
        self.smooths = {"a": smooth(args.noise, threads)}
        if (args.noise, threads) != ("stream", 1):
            self.smooths["a0"] = smooth("stream", 1)
        self.smooth = self.smooths["a"]
        self.ceiling_model = _prepare(model, channels_last, args.compile).to(device)
        self.ceiling_batch = torch.rand((batch_size, *shape), device=device)
        if channels_last:
            self.ceiling_batch = self.ceiling_batch.contiguous(memory_format=torch.channels_last)
        self.rows = inputs[: args.rows]

    def run_a(self, n: int | None = None, key: str = "a") -> None:
        args = self.args
        self.smooths[key].certify_batch(self.rows, args.sigma, args.n0, args.n if n is None else n, args.alpha,
                                        [row_generator(args.seed, i, self.device) for i in range(args.rows)])

    def run_single(self, i: int) -> None:
        args = self.args
        self.smooth.certify(self.inputs[i], args.sigma, args.n0, args.n, args.alpha,
                            row_generator(args.seed, i, self.device))

    def run_b(self, i: int, n: int | None = None) -> None:
        args = self.args
        naive_certify(self.naive_model, self.inputs[i], args.sigma, args.n0, args.n if n is None else n, args.alpha,
                      self.num_classes, self.device)

    def rate_c(self, draws: int) -> float:
        return forward_rate(self.ceiling_model, self.ceiling_batch, self.device, self.autocast_dtype, draws)

    def warm_up(self) -> None:
        """Every path once on a short run."""
        for key in self.smooths:
            self.run_a(n=min(self.args.n, 2 * self.batch_size), key=key)
        self.run_b(0, n=min(self.args.n, NAIVE_BATCH))
        self.rate_c(draws=1)


def _certify_samples(paths: _CertifyPaths, args, device) -> dict[str, list[float]]:
    """{path: draws/s of each of the ``--repeats`` rounds}, the paths interleaved within each round."""
    draws_per_row = args.n0 + args.n
    samples = {key: [] for key in [*paths.smooths, "single", "b", "c"]}
    for round_ in range(args.repeats):
        i = round_ % len(paths.inputs)
        samples["b"].append(draws_per_row / timed(lambda: paths.run_b(i), device))
        for key in paths.smooths:
            samples[key].append(args.rows * draws_per_row / timed(lambda: paths.run_a(key=key), device))
        samples["single"].append(draws_per_row / timed(lambda: paths.run_single(i), device))
        samples["c"].append(paths.rate_c(draws_per_row))
    return samples


def _phase_shares(paths: _CertifyPaths, key: str, device) -> dict[str, float]:
    """Where the time of path ``key`` (a or a0) goes: {phase: fraction of one more run}, timed per phase (not part
    of the rates), the rest as ``other``."""
    smooth = paths.smooths[key]
    smooth.phase_seconds = {}
    start = time.perf_counter()  # wall, like the phases, whatever --clock says
    paths.run_a(key=key)
    _sync(device)
    total = time.perf_counter() - start
    phases = dict(smooth.phase_seconds)
    smooth.phase_seconds = None
    phases["other"] = max(total - sum(phases.values()), 0.0)
    return {name: value / total for name, value in phases.items()}


def _print_certify_table(args, paths, rate: dict, samples: dict, shares: dict, batch_size: int,
                         channels_last: bool) -> None:
    b, c = rate["b"], rate["c"]
    threads = paths.smooths["a"].noise_threads
    print()
    print(f"{'':44s}{'draws/s':>12s}{'vs naive (x/b)':>16s}{'of forward (x/c)':>18s}")
    table = [(f"(a)  certify_batch, {args.rows} rows together", rate["a"])]
    if "a0" in rate:
        table.append(("(a0) as (a), noise in 1 thread (before)", rate["a0"]))
    table += [
        ("(a') certify, one input at a time", rate["single"]),
        ("(b)  naive loop (batch 1000, NCHW)", b),
        (f"(c)  forward only, bs={batch_size}{' cl' if channels_last else ''}", c),
    ]
    for label, value in table:
        print(f"{label:44s}{value:12,.0f}{value / b:15.2f}x{value / c:18.3f}")
    print(f"(a) noise={args.noise} noise_threads={threads}; (a') is what a loop calling Smooth.certify once per "
          f"input gets: no forward pass shared between inputs")
    print("samples (draws/s): " + "  ".join(f"{k}=[{', '.join(f'{v:,.0f}' for v in vals)}]"
                                           for k, vals in samples.items()))
    for key, share in shares.items():
        print(f"time of ({key}) by phase: " + "  ".join(f"{k} {100 * v:.1f}%" for k, v in share.items()))
    if args.quick:
        print(QUICK_WARNING)


def _certify_pairs(args, paths, rate: dict, shares: dict, batch_size: int, channels_last: bool) -> dict:
    a, single, b, c = rate["a"], rate["single"], rate["b"], rate["c"]
    pairs = {
        "speedup_vs_naive": a / b,
        "fraction_of_forward": a / c,
        "speedup_single_row": single / b,
        "fraction_single_row": single / c,
        "a_draws_per_s": a, "single_draws_per_s": single, "b_draws_per_s": b, "c_draws_per_s": c,
        "batch_size": batch_size, "channels_last": int(channels_last),
    }
    for key, share in shares.items():
        for phase in ("noise", "shift", "forward"):
            pairs[f"{phase}_share" if key == "a" else f"{key}_{phase}_share"] = share.get(phase, 0.0)
    if "a0" in rate:
        pairs["a0_draws_per_s"] = rate["a0"]
        pairs["speedup_noise_threads"] = a / rate["a0"]
    return {**pairs, "model": args.model, "width": args.width if args.width is not None else "default",
            "autocast": args.autocast, "noise": args.noise, "noise_threads": paths.smooths["a"].noise_threads,
            "n": args.n, "threads": torch.get_num_threads(), "clock": args.clock, "quick": int(args.quick)}


# -- bench certify --ranks R ---------------------------------------------------------------------------

def _sharded_seconds(certifier, dataset, indices, ranks: int, threads: int, out_dir) -> float:
    """Wall seconds of ``distributed.certify_sharded`` over ``indices`` with ``ranks`` CPU processes (Lightning
    ``ddp_spawn`` over gloo, ``threads`` torch threads each; process start-up included) or, for one rank, in
    this process. Returns the seconds; the merged TSV is left in ``out_dir``."""
    import os

    import pytorch_lightning as pl

    from . import distributed

    os.environ["OMP_NUM_THREADS"] = str(threads)  # read by the spawned processes
    torch.set_num_threads(threads)

    def make_trainer(callbacks):
        kwargs = {"strategy": "ddp_spawn", "devices": ranks} if ranks > 1 else {"devices": 1}
        return pl.Trainer(accelerator="cpu", logger=False, callbacks=callbacks, use_distributed_sampler=False,
                          enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
                          default_root_dir=str(out_dir), **kwargs)

    start = time.perf_counter()
    writer = distributed.RowWriter(out_dir / "certify.tsv")
    distributed.certify_sharded(certifier, dataset, indices, out_dir / "certify.tsv", {"bench": True},
                                make_trainer([writer]), writer)
    return time.perf_counter() - start


def bench_ranks(args) -> dict:
    """Certification of ``--rows`` inputs sharded over ``--ranks`` CPU processes against one process, each
    setting given the same cores (threads per rank = threads // ranks); rows are checked to be identical."""
    import logging
    import tempfile
    from pathlib import Path

    from .certification import Certifier
    from .search.base import FixedSigma

    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning_fabric").setLevel(logging.WARNING)
    check(args.ranks >= 2, "--ranks", args.ranks, "an integer >= 2 (the speed-up is against one rank)")
    threads = args.threads or torch.get_num_threads()
    per_rank = max(1, threads // args.ranks)
    model, shape = build_model(args.model, args.quick, args.seed)
    inputs = random_inputs(args.rows, shape, args.seed)
    dataset = [(inputs[i], 0, i) for i in range(args.rows)]
    smooth = Smooth(model, model.num_classes, batch_size=args.batch_size, device="cpu",
                    channels_last=args.channels_last != "off")
    certifier = Certifier(smooth, FixedSigma(args.sigma), args.n0, args.n, args.alpha, args.seed)
    print(f"bench certify --ranks {args.ranks}: model={args.model}{' (quick: tiny)' if args.quick else ''} "
          f"rows={args.rows} n0={args.n0} n={args.n} batch_size={args.batch_size} threads: 1 rank x {threads}, "
          f"{args.ranks} ranks x {per_rank} (processes started by Lightning ddp_spawn, gloo)", flush=True)
    seconds = {1: [], args.ranks: []}
    busy = {1: [], args.ranks: []}
    bodies = {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.repeats):
            for ranks in (1, args.ranks):
                out = Path(tmp) / f"r{ranks}_{round_}"
                out.mkdir()
                seconds[ranks].append(_sharded_seconds(certifier, dataset, list(range(args.rows)), ranks,
                                                       threads if ranks == 1 else per_rank, out))
                lines = (out / "certify.tsv").read_text().splitlines()
                bodies[ranks] = [line.split("\t")[:5] for line in lines]  # idx, label, predict, radius, correct
                # certification seconds without process start-up: the busiest rank's sum of its rows' times
                # (rank r certified positions r, r + R, ...; here position = idx)
                times = [float(line.split("\t")[5]) for line in lines[1:]]
                busy[ranks].append(max(sum(times[r::ranks]) for r in range(ranks)))
    torch.set_num_threads(threads)
    one, many = statistics.median(seconds[1]), statistics.median(seconds[args.ranks])
    draws = args.rows * (args.n0 + args.n)
    print(f"1 rank: {one:.2f} s ({draws / one:,.0f} draws/s)   {args.ranks} ranks: {many:.2f} s "
          f"({draws / many:,.0f} draws/s)   samples: " + "  ".join(f"{k}={[round(v, 2) for v in vals]}"
                                                               for k, vals in seconds.items()))
    busy_one, busy_many = statistics.median(busy[1]), statistics.median(busy[args.ranks])
    print(f"without process start-up (busiest rank's certification seconds): 1 rank {busy_one:.2f} s, "
          f"{args.ranks} ranks {busy_many:.2f} s")
    pairs = {"speedup_ranks": one / many, "speedup_ranks_steady": busy_one / max(busy_many, 1e-9), "ranks": args.ranks, "seconds_1_rank": one,
             f"seconds_{args.ranks}_ranks": many, "rows_identical": int(bodies[1] == bodies[args.ranks]),
             "model": args.model, "n": args.n, "rows": args.rows, "threads": threads}
    print(format_pairs(pairs), flush=True)
    return pairs


# -- bench search ------------------------------------------------------------------------------------------

def _digits_model(model, steps: int, sigma: float, seed: int):
    """Train ``model`` for ``steps`` SGD steps with Gaussian noise on the digits training split; returns
    the test images. A few hundred steps give a classifier with real margins in seconds."""
    from .data import Digits

    source = Digits()
    train = source.split("train")
    test = source.split("test")
    xs = torch.stack([train[i][0] for i in range(len(train))])
    ys = torch.tensor([train[i][1] for i in range(len(train))])
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(steps):
        pick = torch.randint(0, len(ys), (128,), generator=generator)
        batch = xs[pick] + sigma * torch.randn(xs[pick].shape, generator=generator)
        loss = torch.nn.functional.cross_entropy(model(batch), ys[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return torch.stack([test[i][0] for i in range(len(test))])


def bench_search(args) -> dict:
    try:
        from .search.insta_rs import InstaRSSearch
    except ImportError as error:
        raise ConfigError(f"bench search needs insta_rs.search.insta_rs.InstaRSSearch, which cannot be imported "
                          f"({error}): expected the Insta-RS search module to be installed") from None
    device = torch.device(args.device)
    model, shape = build_model(args.model, args.quick, args.seed)
    inputs = None
    if args.model == "small_cnn" and args.train_steps > 0:
        inputs = _digits_model(model, args.train_steps, sigma=0.25, seed=args.seed)
        inputs = inputs[torch.randperm(len(inputs), generator=torch.Generator().manual_seed(args.seed))]
    if inputs is None:
        inputs = random_inputs(args.rows, shape, args.seed)
    model = model.to(device)
    channels_last = args.channels_last == "on" or (args.channels_last == "auto" and device.type == "cpu")
    smooth = Smooth(model, model.num_classes, batch_size=args.batch_sizes[-1] if args.quick else args.batch_size,
                    device=device, channels_last=channels_last)
    method = InstaRSSearch()
    print(f"bench search: model={args.model} n0={args.n0} n={args.n} rows={args.rows} "
          f"batch_size={smooth.batch_size} threads={torch.get_num_threads()} device={device} "
          f"search={_knobs(method)}", flush=True)
    method.certify(smooth, inputs[0], args.n0, min(args.n, 2 * smooth.batch_size), args.alpha,
                   row_generator(args.seed, 10 ** 6, device))  # warm-up
    draws, search_seconds, certify_seconds = [], [], []
    for i in range(args.rows):
        start = time.perf_counter()
        result = method.certify(smooth, inputs[i], args.n0, args.n, args.alpha, row_generator(args.seed, i, device))
        _sync(device)
        total = time.perf_counter() - start
        draws.append(result.search_draws)
        search_seconds.append(result.search_time)
        certify_seconds.append(max(total - result.search_time, 1e-9))
        print(f"row {i}: sigma*={result.sigma:.4f} search_draws={result.search_draws} "
              f"search_s={result.search_time:.3f} certify_s={certify_seconds[-1]:.3f} predict={result.predict} "
              f"radius={result.radius:.4f}", flush=True)
    certify_draws = args.n0 + args.n
    pairs = {
        "search_draws_fraction": statistics.mean(draws) / certify_draws,
        "search_seconds_fraction": sum(search_seconds) / sum(certify_seconds),
        "search_draws_mean": statistics.mean(draws), "certify_draws": certify_draws,
        "search_seconds_mean": statistics.mean(search_seconds),
        "certify_seconds_mean": statistics.mean(certify_seconds),
        "model": args.model, "n": args.n, "rows": args.rows,
    }
    print(f"search / certification: draws {pairs['search_draws_fraction']:.3f}, "
          f"seconds {pairs['search_seconds_fraction']:.3f} (goal <= 0.10)")
    print(format_pairs(pairs), flush=True)
    return pairs


def _knobs(method) -> str:
    names = ("starts", "sigma_min", "sigma_max", "m", "T", "eta", "eta_min", "alpha_s")
    return ",".join(f"{k}={getattr(method, k)}" for k in names if hasattr(method, k)).replace(" ", "")


# -- command line ------------------------------------------------------------------------------------------

def bench_throughput(args) -> dict:
    """Certification throughput (draws per second of ``Smooth.certify`` at ``--n``) of several models, measured
    interleaved round by round in one process; ratios against the first model."""
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    for name in names:
        check(name in MODELS, "--models", args.models, f"a comma-separated list of {', '.join(MODELS)}")
    models = {name: build_model(name, args.quick, args.seed) for name in names}
    rates = {name: [] for name in names}
    print(f"bench throughput: Smooth.certify, n0={args.n0} n={args.n} batch_size={args.batch_size} "
          f"threads={torch.get_num_threads()}, {args.repeats} rounds", flush=True)
    for round_ in range(args.repeats + 1):  # round 0 warms up
        for name, (model, shape) in models.items():
            smooth = Smooth(model, 10, batch_size=args.batch_size, device="cpu")
            x = random_inputs(1, shape, args.seed)[0]
            start = time.perf_counter()
            smooth.certify(x, args.sigma, args.n0, args.n, args.alpha, row_generator(args.seed, round_))
            if round_:
                rates[name].append((args.n0 + args.n) / (time.perf_counter() - start))
    pairs = {}
    for name in names:
        rate = statistics.median(rates[name])
        pairs[f"{name}_draws_per_s"] = rate
        print(f"  {name:16s} {count_parameters(models[name][0]):>9,d} parameters  {rate:10.0f} draws/s  "
              f"{rate / statistics.median(rates[names[0]]):.2f}x {names[0]}", flush=True)
    print(format_pairs(pairs))
    return pairs


def _certify_rows(trained, settings, dataset, indices, seed: int, sigma_search: str) -> tuple[list[dict], float]:
    """The TSV rows of ``indices`` certified in this process with ``settings`` (no files), and the seconds."""
    from .certification import Certifier
    from .checkpoints import build_from_spec
    from .search.base import SearchContext

    spec = {"_target_": SIGMA_SEARCHES[sigma_search]}
    if sigma_search == "fixed":
        spec["sigma"] = trained.trained_sigma
    method = build_from_spec(spec, "insta_rs.search", "sigma_search")
    smooth = Smooth(trained.model, trained.num_classes, batch_size=settings.batch_size, device="cpu")
    smooth.sequential = settings.plan
    certifier = Certifier(smooth, method, settings.n0, settings.n, settings.alpha, seed)
    method.prepare(SearchContext(source=trained.source, num_classes=trained.num_classes, device="cpu",
                                 trained_sigma=trained.trained_sigma, ckpt_path=str(trained.path)))
    rows, start, group = [], time.perf_counter(), certifier.rows_per_group
    for at in range(0, len(indices), group):
        items = [dataset[i] for i in indices[at:at + group]]
        rows += certifier.rows([x for x, _, _ in items], [y for _, y, _ in items], indices[at:at + group])
    return rows, time.perf_counter() - start


def bench_sequential(args) -> dict:
    """Fixed against sequential certification on one trained model and one set of inputs (module docstring)."""
    import dataclasses

    import pandas as pd

    from . import analysis
    from .certification import CertifySettings
    from .checkpoints import load_run

    check(args.ckpt is not None, "--ckpt", None, "the checkpoint of a trained run (train.py writes one)")
    trained = load_run(args.ckpt)
    dataset = trained.source.split(args.split)
    indices = list(range(0, len(dataset), args.skip))[:args.rows]
    fixed = CertifySettings(n0=args.n0, n=args.n, alpha=args.alpha, batch_size=args.batch_size)
    radii = analysis.radius_grid(trained.source.info.name)
    rule = f"radii={list(args.radii)}" if args.radii else f"tolerance={args.tolerance}"
    print(f"bench sequential: {trained.source.info.name} {args.split} split, {len(indices)} inputs (every {args.skip}th), "
          f"model {trained.config['model']['_target_'].rsplit('.', 1)[1]} from {args.ckpt}, "
          f"sigma_search={args.sigma_search}, n0={args.n0}, n={args.n}, alpha={args.alpha}, {rule}", flush=True)
    _certify_rows(trained, fixed, dataset, indices[:1], args.seed, args.sigma_search)  # warm-up, not timed
    results = {}
    bounds = ("union", "anytime") if args.bound == "both" else (args.bound,)
    for name, settings in [("fixed", fixed)] + [(f"sequential/{b}", dataclasses.replace(
            fixed, sampling="sequential", bound=b, tolerance=args.tolerance,
            radii=list(args.radii) if args.radii else None)) for b in bounds]:
        rows, seconds = _certify_rows(trained, settings, dataset, indices, args.seed, args.sigma_search)
        frame = pd.DataFrame(rows)
        draws = frame["draws"] if "draws" in frame else args.n0 + args.n + frame["search_draws"]
        results[name] = {"acr": analysis.average_certified_radius(frame["radius"], frame["correct"]),
                         "curve": analysis.certified_accuracy(frame["radius"], frame["correct"], radii),
                         "draws": float(draws.mean()), "seconds": seconds / len(indices)}
        r = results[name]
        print(f"  {name:20s} ACR {r['acr']:.4f}  draws/input {r['draws']:9.0f}  s/input {r['seconds']:.3f}  "
              + " ".join(f"{k:g}:{v:.3f}" for k, v in r["curve"].items()), flush=True)
    return _sequential_pairs(results, bounds, len(indices))


def _sequential_pairs(results: dict, bounds, inputs: int) -> dict:
    """Per bound: the ratios against fixed n, the certified-accuracy difference (sequential - fixed) at every grid
    radius and the largest drop and largest absolute difference; the last bound's pairs are returned."""
    base = results["fixed"]
    for bound in bounds:
        r = results[f"sequential/{bound}"]
        difference = {k: r["curve"][k] - base["curve"][k] for k in base["curve"]}
        print(f"  sequential/{bound} - fixed, certified accuracy at each radius ({inputs} inputs): "
              + " ".join(f"{k:g}:{v:+.3f}" for k, v in difference.items()))
        pairs = {"draws_reduction": base["draws"] / r["draws"], "seconds_reduction": base["seconds"] / r["seconds"],
                 "acr_ratio": r["acr"] / base["acr"] if base["acr"] else float("nan"),
                 "max_accuracy_drop": max(0.0, -min(difference.values())),
                 "max_accuracy_difference": max(abs(v) for v in difference.values()),
                 "draws_fixed": base["draws"], "draws_sequential": r["draws"]}
        print(f"  sequential/{bound} against fixed: {format_pairs(pairs)}")
    print(format_pairs(pairs))
    return pairs


def _radii(text: str) -> tuple[float, ...]:
    try:
        radii = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        radii = ()
    if not radii or min(radii) <= 0 or not all(math.isfinite(r) for r in radii):
        raise ConfigError(f"--radii={text!r} is invalid: expected comma-separated radii > 0, e.g. 0.25,0.5,0.75,1.0")
    return radii


def format_pairs(pairs: dict) -> str:
    """One line of name=value pairs (floats with 4 significant decimals), for scripts."""
    def show(value):
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.0f}"
        return str(value)
    return " ".join(f"{name}={show(value)}" for name, value in pairs.items())


def parse_pairs(line: str) -> dict[str, str]:
    """The inverse of ``format_pairs`` (values stay strings)."""
    return dict(part.split("=", 1) for part in line.split())


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"--batch-sizes={text!r} is invalid: expected comma-separated integers >= 1")
    return sizes


COMMANDS = {
    "certify": "our certification (Smooth.certify_batch) against a naive per-input loop and the bare forward pass, "
               "in noise draws per second; --ranks R: sharded over R CPU processes against one",
    "search": "the Insta-RS sigma search's draws and seconds as a fraction of the certification that follows it",
    "sequential": "fixed against sequential certification of a trained checkpoint: draws, seconds and certified "
                  "accuracy, with their ratios",
    "throughput": "certification throughput (draws per second of Smooth.certify) of several models side by side",
}
ALL = tuple(COMMANDS)
DEFAULT_N = {"certify": 10_000, "search": 100_000, "sequential": 100_000, "throughput": 100_000}
DEFAULT_ROWS = {"certify": 2, "search": 3, "sequential": 200, "throughput": 1}
"""--n and --rows when not given (--quick: n 256 and rows 2 unless given)."""
SIGMA_SEARCHES = {"fixed": "insta_rs.search.base.FixedSigma", "grid": "insta_rs.search.finite_set.BestLevelSigma",
                  "cascade": "insta_rs.search.finite_set.CascadeSigma",
                  "best_level": "insta_rs.search.best_level.BestLevelSearch"}
"""``--sigma-search``: the conf/sigma_search names the bench can run (each at its class defaults), and their classes."""
CLASS_NAMES = {"BestLevelSigma": "grid", "CascadeSigma": "cascade", "BestLevelSearch": "best_level"}


def _sigma_search(text: str) -> str:
    """A config name; the class names of older command lines still work."""
    return CLASS_NAMES.get(text, text)

# every flag once: (flags, argparse keywords, the subcommands that take it); a subcommand that does not take a
# flag gets its default, so every subcommand's arguments have every attribute
FLAGS = [
    (("--models",), dict(default="cifar_resnet20,cifar_vgg",
                         help=f"comma-separated models to compare, of {', '.join(MODELS)}"), ("throughput",)),
    (("--ckpt",), dict(default=None, shown="none: required",
                       help="the trained run's checkpoint (<run dir>/checkpoints/last.ckpt)"),
     ("sequential",)),
    (("--skip",), dict(type=int, default=1, help="certify every skip-th input of --split"), ("sequential",)),
    (("--split",), dict(default="test", choices=("test", "val"),
                        help="the split to certify (val: to choose settings without the test split)"), ("sequential",)),
    (("--bound",), dict(default="both", choices=("union", "anytime", "both"),
                        help="the sequential bound(s) to measure against fixed sampling"), ("sequential",)),
    (("--tolerance",), dict(type=float, default=0.01, help="certify.tolerance of the sequential runs"),
     ("sequential",)),
    (("--sigma-search",), dict(default="fixed", type=_sigma_search, choices=tuple(SIGMA_SEARCHES),
                               help="the method, by its conf/sigma_search name: fixed (at the checkpoint's sigma), "
                                    "grid, cascade or best_level (levels: the class defaults)"), ("sequential",)),
    (("--radii",), dict(type=_radii, default=None, shown="none: the tolerance rule",
                        help="radii mode (certify.radii): comma-separated radii, e.g. 0.25,0.5,0.75,1.0; the "
                             "sequential runs stop once the next listed radius is out of reach (r = 0 first)"),
     ("sequential",)),
    (("--model",), dict(default="small_cnn", choices=MODELS,
                        help="the network, randomly initialised from --seed (search: small_cnn is first trained "
                             "briefly on digits)"), ("certify", "search")),
    (("--n",), dict(type=int, default=None, shown=DEFAULT_N, help="estimation draws per input"), ALL),
    (("--n0",), dict(type=int, default=100, help="selection draws per input"), ALL),
    (("--alpha",), dict(type=float, default=0.001, help="failure probability of each certificate"), ALL),
    (("--sigma",), dict(type=float, default=0.25, help="noise level in pixel units"), ("certify", "throughput")),
    (("--rows",), dict(type=int, default=None, shown=DEFAULT_ROWS, help="inputs per measurement"),
     ("certify", "search", "sequential")),
    (("--repeats",), dict(type=int, default=3, help="measurements of each path; the median is reported"),
     ("certify", "throughput")),
    (("--threads",), dict(type=int, default=None, shown=f"torch's, {torch.get_num_threads()} here",
                          help="torch.set_num_threads"), ALL),
    (("--batch-sizes",), dict(type=_batch_sizes, default=None, shown="128,256,512,1000,2000; --quick: 64,128",
                              help="forward batch sizes searched for the ceiling"),
     ("certify",)),
    (("--batch-size",), dict(type=int, default=1000,
                             help="certify.batch_size: noise draws per forward pass (certify: with --ranks)"),
     ("certify", "search", "sequential", "throughput")),
    (("--channels-last",), dict(choices=("auto", "on", "off"), default="auto",
                                help="channels_last memory format: on, off, or auto (certify: the faster; "
                                     "search: on for the CPU)"), ("certify", "search")),
    (("--autocast",), dict(choices=("none", "bf16", "fp16"), default="none",
                           help="mixed precision of the forward pass (certify.autocast)"), ("certify",)),
    (("--compile",), dict(action="store_true", help="torch.compile the model (certify.compile)"), ("certify",)),
    (("--width",), dict(type=int, default=None, shown="the model's: small_cnn 32, cifar_vgg 8; --quick: 4",
                        help="channels of the first stage of small_cnn or cifar_vgg (model.width)"), ("certify",)),
    (("--noise",), dict(choices=NOISE_MODES, default="stream",
                        help="certify.noise of (a): stream (the default stream) or split (stripes drawn by several "
                             "threads; other rows)"), ("certify",)),
    (("--noise-threads",), dict(type=int, default=None, shown="torch's threads on the CPU, 1 elsewhere",
                                help="certify.noise_threads of (a); (a0) draws the default stream in 1 thread"),
     ("certify",)),
    (("--device",), dict(default="cpu", help="torch device: cpu, cuda, cuda:1, ..."), ("certify", "search")),
    (("--clock",), dict(choices=tuple(CLOCKS), default="wall",
                        help="the rates' clock: wall, or cpu (this process's CPU seconds, all threads: for a shared "
                             "machine, with --threads 1 --noise-threads 1; the phase shares stay wall)"),
     ("certify",)),
    (("--train-steps",), dict(type=int, default=300, help="SGD steps on digits before the search (small_cnn)"),
     ("search",)),
    (("--ranks",), dict(type=int, default=1,
                        help=">= 2: time sharded certification on that many CPU processes against one"),
     ("certify",)),
    (("--seed",), dict(type=int, default=0, help="seed of the model's initialisation, the inputs and the noise"),
     ALL),
    (("--quick",), dict(action="store_true",
                        help="tiny model, small n, one repeat: checks that the bench runs; its figures mean nothing"),
     ALL),
]


def _with_default_in_help(kwargs: dict, command: str) -> dict:
    """The flag's keywords with "(default: X)" at the end of its help: ``shown`` (a text, or one per subcommand)
    when the parse default is None or differs by subcommand, else the default itself ("off" for a switch)."""
    kwargs = dict(kwargs)
    shown = kwargs.pop("shown", None)
    if isinstance(shown, dict):
        shown = shown[command]
    if shown is None:
        shown = "off" if kwargs.get("action") == "store_true" else kwargs.get("default")
    kwargs["help"] = f"{kwargs['help']} (default: {shown})"
    return kwargs


def parser() -> argparse.ArgumentParser:
    """``python -m insta_rs.bench NAME [flags]``: one subcommand per benchmark, each with its own flags and
    ``--help``."""
    p = argparse.ArgumentParser(prog="python -m insta_rs.bench", description=__doc__.split("\n\n")[0])
    subcommands = p.add_subparsers(dest="what", required=True, metavar="NAME",
                                   help="the benchmark: " + ", ".join(COMMANDS) + " (NAME --help: its flags)")
    for name, text in COMMANDS.items():
        sub = subcommands.add_parser(name, help=text, description=text)
        defaults = {}
        for flags, kwargs, commands in FLAGS:
            if name in commands:
                sub.add_argument(*flags, **_with_default_in_help(kwargs, name))
            else:
                defaults[flags[0].lstrip("-").replace("-", "_")] = False if kwargs.get("action") == "store_true" \
                    else kwargs.get("default")
        sub.set_defaults(**defaults)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.quick:
            args.n = 256 if args.n is None else args.n
            args.n0 = min(args.n0, 16)
            args.rows = 2 if args.rows is None else args.rows
            args.repeats = 1
            args.batch_sizes = args.batch_sizes or [64, 128]
            args.train_steps = min(args.train_steps, 20)
        if args.n is None:
            args.n = DEFAULT_N[args.what]
        if args.rows is None:
            args.rows = DEFAULT_ROWS[args.what]
        args.batch_sizes = args.batch_sizes or [128, 256, 512, 1000, 2000]
        for name in ("n", "n0", "rows", "repeats", "batch_size", "ranks"):
            value = getattr(args, name)
            check(value >= 1, f"--{name.replace('_', '-')}", value, "an integer >= 1")
        for name in ("width", "noise_threads"):
            value = getattr(args, name)
            check(value is None or value >= 1, f"--{name.replace('_', '-')}", value, "an integer >= 1")
        check(args.sigma > 0 and math.isfinite(args.sigma), "--sigma", args.sigma, "a finite number > 0")
        if args.threads is not None:
            check(args.threads >= 1, "--threads", args.threads, "an integer >= 1")
            torch.set_num_threads(args.threads)
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"--device={args.device!r} but no CUDA device is visible: use --device cpu")
        if args.what == "sequential":
            bench_sequential(args)
        elif args.what == "throughput":
            bench_throughput(args)
        elif args.what == "certify" and args.ranks != 1:
            if not args.quick and args.rows < 8 * args.ranks:
                args.rows = 8 * args.ranks  # enough rows to amortise starting the processes
            bench_ranks(args)
        else:
            (bench_certify if args.what == "certify" else bench_search)(args)
    except InstaRSError as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
