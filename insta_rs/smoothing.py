"""Gaussian randomized smoothing: sampling, counting, CERTIFY and PREDICT (ALGORITHMS.md section 1).

``Smooth`` wraps a base classifier f. The smoothed classifier at noise level sigma is
g(x) = argmax_c P[f(x + sigma * e) = c], e ~ N(0, I), with inputs in [0, 1] pixel units.
Noise is drawn on the model's device, always in float32 (even when the model runs under autocast),
and classes are counted on the device with ``bincount``.

How the draws are made (the same on every path, so nothing here changes the statistics):

- Every request for ``num`` draws of one input from a generator is served by ``normal_`` calls of
  exactly ``NOISE_BLOCK`` draws each (the last one: the remainder), in order. The noise an input gets
  therefore depends only on the generator's state and ``num``: not on ``batch_size``, not on which other
  inputs share its forward passes, not on where chunks are cut, and not on ``channels_last``.
- The noisy input is ``x + (sigma * e)`` in float32 (sigma rounded to float32), as one multiply then one add.
- Requests that draw from different generators are filled by up to ``noise_threads`` threads at once (each
  generator serves its own requests in order, in one thread), which changes nothing in the draws.
- ``noise="split"`` (opt-in; the default ``"stream"`` is the stream above) cuts every request into stripes
  of ``NOISE_STRIPE`` draws, stripe j drawn (in ``NOISE_BLOCK`` calls) from its own generator, seeded with
  the j-th of the numbers the row's generator gives for that request (one ``randint`` call per request).
  Stripes can then be drawn by several threads even when one input fills every forward pass. The noise
  still depends only on the row's generator and ``num`` (not on ``batch_size`` or the thread count), and
  it is still float32 standard normal noise, but a different stream: rows differ from ``"stream"`` rows.
- Several requests (inputs, each with its own sigma, and CERTIFY's selection and estimation draws) are
  packed back to back into chunks of ``batch_size`` draws; every forward pass has exactly ``batch_size``
  inputs (the last chunk is padded and its padding is not counted). A draw's prediction is then a
  function of its noisy input and ``batch_size`` alone, so with the same seed and ``batch_size`` the
  counts are identical whether inputs are certified one at a time or together (``certify_batch``), and a
  compiled model (``compile=True``) sees one shape and compiles once. Another ``batch_size`` draws the
  same noise; the model's floating-point result may then differ in its last bits (kernels depend on the
  batch shape), which can only matter for a draw whose top two logits tie to rounding.
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .certificates import (
    ABSTAIN,
    check_alpha,
    clopper_pearson_lower,
    cohen_radius,
    predict_is_confident,
)
from .certificates.sequential import SequentialPlan
from .errors import ConfigError, check

_DRAWS: dict[int, int] = {}
"""Draws made per generator (by id) while ``count_draws`` is active: every draw of a row, search included."""
_COUNTING = [0]


@contextlib.contextmanager
def count_draws():
    """Within this block, count every noise draw made from each generator (by ``id``), on every ``Smooth``
    (the classifier's and a selector's alike); ``draws_of(generator)`` reads the count."""
    _COUNTING[0] += 1
    try:
        yield
    finally:
        _COUNTING[0] -= 1
        if not _COUNTING[0]:
            _DRAWS.clear()


def draws_of(generator) -> int:
    """How many noise draws ``generator`` has served since the enclosing ``count_draws`` began."""
    return _DRAWS.get(id(generator), 0)


def charge_draws(generator, copies) -> None:
    """Count the draws served by ``copies`` (generators standing in for ``generator``) as ``generator``'s."""
    if _COUNTING[0]:
        _DRAWS[id(generator)] = draws_of(generator) + sum(draws_of(copy) for copy in copies)


NOISE_BLOCK = 64
"""Draws per ``normal_`` call. Part of the definition of the noise stream: changing it changes every row."""

NOISE_STRIPE = 256
"""noise="split": draws per stripe (each stripe from its own generator). Part of the definition of that stream."""

NOISE_MODES = ("stream", "split")

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


@dataclass(frozen=True)
class Certificate:
    """The result of CERTIFY at one input.

    predict: the certified class, or ABSTAIN (-1) when pA_lower < 1/2.
    radius: sigma * PhiInv(pA_lower), the L2 radius in pixel units within which g_sigma is constant
        with probability >= 1 - alpha over the noise draws; 0 when abstaining.
    p_lower: the one-sided Clopper-Pearson lower bound on P[f(x + sigma e) = predict].
    count: how many of the n selection-independent draws landed on the candidate class.
    n: the estimation draws used (with sequential sampling, those drawn before it stopped).
    sigma: the noise level that was certified.
    candidate: the class the n0 selection draws picked (also when abstaining).
    """

    predict: int
    radius: float
    p_lower: float
    count: int
    n: int
    sigma: float
    candidate: int = ABSTAIN


def noise_sigma(sigma: float) -> float:
    """The sigma the noise is actually scaled by: ``sigma`` rounded to float32 (the noise is drawn and scaled in
    float32). Radii are computed with it, so a radius is that of the smoothing that was sampled: for
    sigma = 0.12 the float64 value would give a radius about 2e-8 too large."""
    return float(np.float32(sigma))


def row_generator(seed: int, idx: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded from (seed, idx) alone, so a row's draws do not depend on which rows ran before it."""
    state = np.random.SeedSequence([int(seed), int(idx)]).generate_state(2, dtype=np.uint32)
    gen = torch.Generator(device=device)
    gen.manual_seed(int(state[0]) << 32 | int(state[1]))
    return gen


def autocast_dtype_of(value) -> torch.dtype | None:
    """null | bf16 | fp16 (or a torch dtype) -> the autocast dtype; ConfigError for anything else."""
    if value is None or isinstance(value, torch.dtype) and value in (torch.bfloat16, torch.float16):
        return value
    if isinstance(value, str) and value.lower() in AUTOCAST_DTYPES:
        return AUTOCAST_DTYPES[value.lower()]
    raise ConfigError(f"autocast={value!r} is invalid: expected null (float32), bf16 or fp16")


class _Stream:
    """``num`` standard normal draws from one generator, served in order, ``NOISE_BLOCK`` draws per ``normal_`` call."""

    __slots__ = ("generator", "num", "drawn", "pending", "staging")

    def __init__(self, generator, num: int):
        self.generator, self.num = generator, num
        self.drawn = 0          # draws generated so far (whole blocks)
        self.pending = None     # generated but not yet used draws of the last block (a view of ``staging``)
        self.staging = None     # where a block that straddles two chunks is drawn (its tail waits for the next)

    def fill(self, out: torch.Tensor) -> None:
        """Write this stream's next ``len(out)`` draws into ``out``."""
        want, filled = out.shape[0], 0
        if self.pending is not None:
            take = min(self.pending.shape[0], want)
            out[:take].copy_(self.pending[:take])
            self.pending = self.pending[take:] if take < self.pending.shape[0] else None
            filled = take
        while filled < want:
            size = min(NOISE_BLOCK, self.num - self.drawn)
            self.drawn += size
            if want - filled >= size:
                out[filled:filled + size].normal_(generator=self.generator)
                filled += size
            else:  # the block straddles the end of the chunk: keep its tail for the next chunk
                if self.staging is None:
                    self.staging = torch.empty((min(NOISE_BLOCK, self.num), *out.shape[1:]), dtype=out.dtype,
                                               device=out.device)
                block = self.staging[:size]
                block.normal_(generator=self.generator)
                take = want - filled
                out[filled:].copy_(block[:take])
                self.pending = block[take:]
                filled = want


class _Request:
    """``num`` draws of one input x at one sigma from ``generator``, counted into ``counts`` (a view).

    noise="stream": one ``_Stream`` on ``generator``. noise="split": stripes of ``NOISE_STRIPE`` draws, stripe j a
    ``_Stream`` on a generator seeded with the j-th of ``ceil(num / NOISE_STRIPE)`` numbers drawn from ``generator``
    when the request is made (requests on one generator are made in the order they are served)."""

    __slots__ = ("x", "sigma", "num", "generator", "counts", "streams", "served")

    def __init__(self, x: torch.Tensor, sigma: torch.Tensor, num: int, generator, counts: torch.Tensor,
                 noise: str = "stream"):
        self.x, self.sigma, self.num, self.generator, self.counts = x, sigma, num, generator, counts
        self.served = 0
        if noise == "stream" or num <= 0:
            self.streams = [_Stream(generator, num)]
            return
        stripes = -(-num // NOISE_STRIPE)
        device = generator.device if generator is not None else x.device
        seeds = torch.randint(0, 2 ** 62, (stripes,), generator=generator, device=device, dtype=torch.int64)
        self.streams = [_Stream(torch.Generator(device=device).manual_seed(int(seed)),
                                min(NOISE_STRIPE, num - j * NOISE_STRIPE)) for j, seed in enumerate(seeds.tolist())]

    def pieces(self, out: torch.Tensor) -> list[tuple[_Stream, torch.Tensor]]:
        """(stream, slice of ``out``) for this request's next ``len(out)`` draws, in order."""
        if len(self.streams) == 1:
            self.served += out.shape[0]
            return [(self.streams[0], out)]
        pieces, at = [], 0
        while at < out.shape[0]:
            j, within = divmod(self.served, NOISE_STRIPE)
            take = min(self.streams[j].num - within, out.shape[0] - at)
            pieces.append((self.streams[j], out[at:at + take]))
            at += take
            self.served += take
        return pieces


class Smooth:
    """A smoothed classifier around ``base_classifier`` (Cohen, Rosenfeld & Kolter 2019).

    ``certify`` returns a sound L2 certificate of g_sigma at x (guarantee ``sound``: it holds with
    probability >= 1 - alpha over the noise). ``predict`` returns g_sigma(x) or ABSTAIN, wrong with
    probability at most alpha. ``batch_size`` is the number of noisy images per forward pass.

    Speed options (none changes how the noise is drawn; see the module docstring):
    autocast_dtype: None (float32), torch.bfloat16/torch.float16 or "bf16"/"fp16": run the base model
        under autocast; the noise is still drawn and added in float32. The counts are then those of the
        model evaluated in low precision, which can differ from float32 near decision boundaries.
    channels_last: convert the model (in place) and every chunk to channels_last (faster convolutions
        on CPU and on GPUs; the model's result may differ from float32 NCHW in its last bits).
    compile: run the model through ``torch.compile`` (one static chunk shape, compiled on first use).
    noise: "stream" (the default) or "split" (stripes from their own generators, so that one input's draws can be
        made by several threads; a different stream, see the module docstring).
    noise_threads: threads that draw the noise (None: ``torch.get_num_threads()`` on the CPU, 1 on other devices);
        it changes no draw, only how many generators are served at once.
    phase_seconds: set to a dict to accumulate wall seconds per phase (noise, shift, forward, count) of
        every chunk; it synchronizes CUDA after each phase, so leave it None when speed matters.
    """

    def __init__(
        self,
        base_classifier: nn.Module,
        num_classes: int,
        batch_size: int = 1000,
        device: torch.device | str | None = None,
        autocast_dtype: torch.dtype | str | None = None,
        channels_last: bool = False,
        compile: bool = False,
        noise: str = "stream",
        noise_threads: int | None = None,
    ):
        check(isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1,
              "batch_size", batch_size, "an integer >= 1")
        check(isinstance(channels_last, bool), "channels_last", channels_last, "true or false")
        check(isinstance(compile, bool), "compile", compile, "true or false")
        check_noise_settings(noise, noise_threads)
        self.base_classifier = base_classifier.eval()
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else _module_device(base_classifier)
        self.autocast_dtype = autocast_dtype_of(autocast_dtype)
        self.channels_last = channels_last
        if channels_last:
            self.base_classifier.to(memory_format=torch.channels_last)
        self.compile = compile
        self._forward_module = torch.compile(self.base_classifier, dynamic=False) if compile else self.base_classifier
        self.noise, self.noise_threads = noise, noise_threads
        self._pool: ThreadPoolExecutor | None = None
        self._pool_threads = 0
        self.phase_seconds: dict[str, float] | None = None
        self.takes_sigma = bool(getattr(base_classifier, "takes_sigma", False))
        """The model is f(x, sigma) (per-level experts): every forward pass also gets each row's sigma."""
        self.sequential: SequentialPlan | None = None
        """Set to a SequentialPlan to certify sequentially (SOUND.md 3e): CERTIFY's n is then the maximum."""

    @torch.inference_mode()
    def sample_counts(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor | float,
        num: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Class counts of f(x_b + sigma_b * e) over ``num`` draws for each input of the batch.

        x: (B, C, H, W) or one (C, H, W) image; sigma: a float or a (B,) tensor (one sigma per input).
        The inputs' draws come from ``generator`` one input after the other and share forward passes.
        Returns a (B, num_classes) int64 tensor on the model's device, or (num_classes,) for one image.
        """
        single = x.dim() == 3
        if single:
            x = x.unsqueeze(0)
        x = x.to(self.device, torch.float32)
        rows = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=torch.float32).to(self.device).reshape(-1).expand(rows)
        counts = torch.zeros(rows, self.num_classes, dtype=torch.long, device=self.device)
        self._count([_Request(x[b], sigma[b], num, generator, counts[b], self.noise) for b in range(rows)],
                    x.shape[1:])
        return counts[0] if single else counts

    def certify(
        self,
        x: torch.Tensor,
        sigma: float,
        n0: int,
        n: int,
        alpha: float,
        generator: torch.Generator | None = None,
    ) -> Certificate:
        """CERTIFY(f, sigma, x, n0, n, alpha) of ALGORITHMS.md 1: select the class with n0 draws, bound its
        probability with n fresh draws. Sound with probability >= 1 - alpha."""
        return self.certify_batch(x.unsqueeze(0), [sigma], n0, n, alpha, [generator])[0]

    @torch.inference_mode()
    def certify_batch(
        self,
        xs: torch.Tensor | Sequence[torch.Tensor],
        sigmas: Sequence[float] | float,
        n0: int,
        n: int,
        alpha: float,
        generators: Sequence[torch.Generator | None],
    ) -> list[Certificate]:
        """CERTIFY (ALGORITHMS.md 1) of several inputs at once, each with its own sigma and generator.

        Row i's result equals ``certify(xs[i], sigmas[i], n0, n, alpha, generators[i])``: its n0 selection
        draws, then its n estimation draws, come from ``generators[i]`` alone. The rows only share forward
        passes, so a row's certificate does not depend on the other rows. Each is sound with probability
        >= 1 - alpha. (Selection and estimation draws of a row can share a forward pass because the
        estimation counts are kept for every class and read at the candidate afterwards.)
        """
        xs = torch.stack(list(xs)) if not isinstance(xs, torch.Tensor) else xs
        rows = xs.shape[0]
        sigmas = [float(sigmas)] * rows if isinstance(sigmas, (int, float)) else [float(s) for s in sigmas]
        generators = list(generators)
        check(len(sigmas) == rows and len(generators) == rows, "sigmas", len(sigmas),
              f"one sigma and one generator per input ({rows} inputs, {len(generators)} generators)")
        for sigma in sigmas:
            check_certify_settings(sigma, n0, n, alpha)
        if rows == 0:
            return []
        xs = xs.to(self.device, torch.float32)
        sigma_t = torch.tensor(sigmas, dtype=torch.float32).to(self.device)
        if self.sequential is not None:
            return self._certify_sequential(xs, sigma_t, sigmas, n0, n, alpha, generators)
        selection = torch.zeros(rows, self.num_classes, dtype=torch.long, device=self.device)
        estimation = torch.zeros(rows, self.num_classes, dtype=torch.long, device=self.device)
        requests = []
        for i in range(rows):
            requests.append(_Request(xs[i], sigma_t[i], n0, generators[i], selection[i], self.noise))
            requests.append(_Request(xs[i], sigma_t[i], n, generators[i], estimation[i], self.noise))
        self._count(requests, xs.shape[1:])
        candidates = selection.argmax(dim=1)
        counts = estimation.gather(1, candidates.view(-1, 1)).view(-1).tolist()
        results = []
        for candidate, count, sigma in zip(candidates.tolist(), counts, sigmas):
            p_lower = clopper_pearson_lower(count, n, alpha)
            if p_lower < 0.5:
                results.append(Certificate(ABSTAIN, 0.0, p_lower, count, n, sigma, candidate))
            else:
                results.append(Certificate(candidate, cohen_radius(noise_sigma(sigma), p_lower), p_lower, count, n,
                                           sigma, candidate))
        return results

    def _certify_sequential(self, xs, sigma_t, sigmas, n0: int, n_max: int, alpha: float,
                            generators) -> list[Certificate]:
        """CERTIFY with the draws in stages (SOUND.md 3e): n0 draws pick each row's candidate; then the rows
        still running draw up to the bound's next look together, and each row stops as ``decide`` says
        (early abstain, tolerance or the radii list). The bound is the plan's union-bound schedule or
        confidence sequence over at most ``n_max`` draws at total level ``alpha``; the reported lower bound is
        the best of the looks, all of which hold together with probability >= 1 - alpha."""
        rows = xs.shape[0]
        selection = torch.zeros(rows, self.num_classes, dtype=torch.long, device=self.device)
        self._count([_Request(xs[i], sigma_t[i], n0, generators[i], selection[i], self.noise) for i in range(rows)],
                    xs.shape[1:])
        candidates = selection.argmax(dim=1).tolist()
        bound = self.sequential.bound(n_max, alpha)
        successes, best, trials = [0] * rows, [0.0] * rows, 0
        results: list[Certificate | None] = [None] * rows
        active = list(range(rows))
        for look in bound.looks():
            counts = torch.zeros(len(active), self.num_classes, dtype=torch.long, device=self.device)
            self._count([_Request(xs[i], sigma_t[i], look - trials, generators[i], counts[j], self.noise)
                         for j, i in enumerate(active)], xs.shape[1:])
            got = counts.gather(1, torch.tensor([candidates[i] for i in active], device=self.device).view(-1, 1))
            trials, still = look, []
            for i, k in zip(active, got.view(-1).tolist()):
                successes[i] += k
                decision, _, best[i] = self.sequential.decide(successes[i], trials, bound, noise_sigma(sigmas[i]),
                                                              best[i])
                if decision == "continue":
                    still.append(i)
                else:
                    certified = decision == "certified"
                    results[i] = Certificate(candidates[i] if certified else ABSTAIN,
                                             cohen_radius(noise_sigma(sigmas[i]), best[i]) if certified else 0.0,
                                             best[i], successes[i], trials, sigmas[i], candidates[i])
            active = still
            if not active:
                break
        return results

    def predict(
        self,
        x: torch.Tensor,
        sigma: float,
        n: int,
        alpha: float,
        generator: torch.Generator | None = None,
    ) -> int:
        """PREDICT of ALGORITHMS.md 1: the top class if the binomial test of the top two counts rejects
        p = 1/2 at level alpha, else ABSTAIN. Returns a wrong class with probability at most alpha."""
        check_certify_settings(sigma, 1, n, alpha)
        counts = self.sample_counts(x, sigma, n, generator)
        top2 = counts.topk(2)
        c1, c2 = int(top2.values[0]), int(top2.values[1])
        return int(top2.indices[0]) if predict_is_confident(c1, c2, alpha) else ABSTAIN

    # -- the sampling loop ----------------------------------------------------------------------------

    def _count(self, requests: list[_Request], shape: torch.Size) -> None:
        """Serve the requests in order, ``batch_size`` draws per forward pass, adding into their counts."""
        requests = [r for r in requests if r.num > 0]
        if not requests:
            return
        if _COUNTING[0]:
            for request in requests:
                _DRAWS[id(request.generator)] = _DRAWS.get(id(request.generator), 0) + request.num
        size, device, classes = self.batch_size, self.device, self.num_classes
        chunk = torch.empty((size, *shape), dtype=torch.float32, device=device)
        model_input = chunk
        if self.channels_last and len(shape) == 3:
            model_input = torch.empty_like(chunk, memory_format=torch.channels_last)
        timing = self.phase_seconds
        clock = self._clock if timing is not None else None
        row_sigma = torch.empty(size, dtype=torch.float32, device=device) if self.takes_sigma else None
        current, offset = 0, 0
        while current < len(requests):
            # which draws of which requests go into this chunk
            segments, used = [], 0
            while used < size and current < len(requests):
                request = requests[current]
                take = min(size - used, request.num - offset)
                segments.append((request, used, take))
                used += take
                offset += take
                if offset == request.num:
                    current, offset = current + 1, 0
            if clock:
                start = clock()
            self._fill([piece for request, at, take in segments for piece in request.pieces(chunk[at:at + take])])
            if used < size:  # only the last chunk: pad with zeros (finite), whose predictions are not counted
                chunk[used:].zero_()
            if clock:
                start = self._tick(timing, "noise", start)
            for request, at, take in segments:
                chunk[at:at + take].mul_(request.sigma).add_(request.x)
            if model_input is not chunk:
                model_input.copy_(chunk)
            if clock:
                start = self._tick(timing, "shift", start)
            predictions = self._predict(model_input, segments, row_sigma)
            if clock:
                start = self._tick(timing, "forward", start)
            for request, at, take in segments:
                request.counts += torch.bincount(predictions[at:at + take], minlength=classes)
            if clock:
                self._tick(timing, "count", start)

    def _fill(self, pieces: list[tuple[_Stream, torch.Tensor]]) -> None:
        """Each stream writes its draws into its slice. Streams on one generator are served in order by one
        thread; streams on different generators by up to ``noise_threads`` threads at once (same draws)."""
        groups: dict[int, list] = {}
        for stream, out in pieces:
            groups.setdefault(id(stream.generator), []).append((stream, out))
        threads = self.noise_threads or (torch.get_num_threads() if self.device.type == "cpu" else 1)
        if threads <= 1 or len(groups) <= 1:
            for stream, out in pieces:
                stream.fill(out)
            return
        if self._pool is None or self._pool_threads != threads:
            if self._pool is not None:
                self._pool.shutdown()
            self._pool, self._pool_threads = ThreadPoolExecutor(threads, thread_name_prefix="insta-rs-noise"), threads
        tasks = list(groups.values())
        per_thread = [tasks[k::threads] for k in range(min(threads, len(tasks)))]
        for future in [self._pool.submit(_fill_groups, share) for share in per_thread]:
            future.result()

    def __getstate__(self):  # a thread pool does not pickle (ddp_sim ranks); each process makes its own
        state = dict(self.__dict__)
        state["_pool"] = None
        return state

    def _predict(self, model_input: torch.Tensor, segments, row_sigma: torch.Tensor | None) -> torch.Tensor:
        """The base classifier's class for every row of one chunk. A model that takes sigma (per-level experts,
        ``insta_rs.experts``) also gets each row's sigma; the padding rows after the last segment get its sigma."""
        with self._autocast():
            if row_sigma is None:
                return self._forward_module(model_input).argmax(dim=1)
            for request, at, take in segments:
                row_sigma[at:at + take] = request.sigma
            row_sigma[at + take:] = segments[-1][0].sigma
            return self._forward_module(model_input, row_sigma).argmax(dim=1)

    def _clock(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _tick(self, timing: dict, phase: str, start: float) -> float:
        now = self._clock()
        timing[phase] = timing.get(phase, 0.0) + now - start
        return now

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


@torch.inference_mode()  # a worker thread: inference mode is per thread, and the chunk is an inference tensor
def _fill_groups(groups) -> None:
    for group in groups:
        for stream, out in group:
            stream.fill(out)


def check_noise_settings(noise, noise_threads) -> None:
    """ConfigError for a noise mode other than stream | split, or noise_threads not null or an integer >= 1."""
    check(noise in NOISE_MODES, "noise", noise, "stream (the default) or split (stripes drawn by several threads)")
    check(noise_threads is None or (isinstance(noise_threads, int) and not isinstance(noise_threads, bool)
                                    and noise_threads >= 1),
          "noise_threads", noise_threads, "null (all of torch's threads on the CPU) or an integer >= 1")


def _module_device(module: nn.Module) -> torch.device:
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return torch.device("cpu")


def check_certify_settings(sigma: float, n0: int, n: int, alpha: float) -> None:
    """ConfigError for values CERTIFY cannot use: sigma <= 0 or NaN, n0 < 1, n < 1, alpha outside (0, 1)."""
    check(isinstance(sigma, (int, float)) and sigma > 0 and np.isfinite(sigma), "sigma", sigma, "a finite number > 0")
    check(isinstance(n0, int) and n0 >= 1, "n0", n0, "an integer >= 1")
    check(isinstance(n, int) and n >= 1, "n", n, "an integer >= 1")
    check_alpha(alpha)
