"""``make check-gpu``: every GPU path of the project once, through the real entry points, one line per path.

    python -m insta_rs.check_gpu [--out outputs/check_gpu] [--only NAME ...] [--dry-run]

Each path of ``PATHS`` runs ``train.py`` / ``certify.py`` / ``python -m insta_rs.bench`` as subprocesses at tiny
sizes (what users run, not a re-implementation), then checks what they wrote, and prints

    PASS  certify-fixed        6.1 s  8 rows
    FAIL  compile             41.0 s  RuntimeError: ... (the last line of the error; the whole log is in --out)
    SKIP  ddp-train            0.0 s  one GPU visible: DDP needs at least 2

A path whose prerequisite (``needs``) did not pass fails with the prerequisite's name. The whole run is sized
for at most 10 minutes on one GPU; paths not started within that budget are skipped. Without CUDA it refuses
in one line (exit 2); ``--dry-run`` prints every command instead (no GPU needed). Exit code 1 when a path
failed, 0 otherwise. docs/gpu.md explains each path.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
SHARED_CIFAR = "data/cifar10-jpg-12k"
BUDGET_S = 570.0          # all paths together: 10 minutes less start-up
COMMAND_TIMEOUT_S = 300   # one subprocess

# The paths, in the order they run: name -> what it exercises (README.md lists the same, tests/test_check_gpu.py).
PATHS = {
    "train-digits": "train.py trainer=gpu: the small CNN on digits across sigma {0.12, 0.25, 0.5, 1.0}, 2 epochs",
    "train-cifar-jpg": "train.py trainer=gpu: one epoch of cifar_vgg on the CIFAR-10 JPEG subset (else a synthetic "
                       "ImageFolder)",
    "train-insta-rs": "train.py trainer=gpu train=insta_rs: Insta-RS Train's per-example sigma updates on the GPU",
    "certify-fixed": "certify.py trainer=gpu: Cohen's fixed sigma",
    "certify-grid": "certify.py trainer=gpu sigma_search=grid: the sound finite-set rule",
    "certify-insta-rs": "certify.py trainer=gpu sigma_search=insta_rs: the Insta-RS search",
    "certify-selector": "train.py train=selector then certify.py sigma_search=selector, both on the GPU",
    "autocast-bf16": "certify.py certify.autocast=bf16",
    "autocast-fp16": "certify.py certify.autocast=fp16",
    "channels-last": "certify.py certify.channels_last=true",
    "compile": "certify.py certify.compile=true (torch.compile)",
    "sequential": "certify.py certify.sampling=sequential",
    "ddp-train": "train.py trainer=ddp: DDP training over NCCL on every visible GPU",
    "ddp-certify": "certify.py trainer=ddp: certification sharded over every visible GPU, rows equal to one GPU's",
    "wandb-offline": "train.py trainer=gpu logger=wandb: an offline W&B run",
    "bench-certify": "python -m insta_rs.bench certify on the GPU against the CPU (draws per second)",
}

GPU = "trainer=gpu"
QUIET_TRAIN = ("print_config=false", "trainer.enable_progress_bar=false")
CERTIFY = ("certify.n0=64", "certify.n=2000", "certify.skip=20", "certify.max=8", "certify.progress=false",
           "logger=none", "print_config=false")
BENCH = ("--n", "10000", "--rows", "4", "--repeats", "2", "--batch-sizes", "1000,2000")


@dataclass
class Context:
    """Where a check writes (``out``), how many GPUs it sees, and the CIFAR data it trains on."""

    out: Path
    gpus: int
    cifar_root: Path | None      # the shared CIFAR-10 JPEG subset, or None: a synthetic ImageFolder under out

    def run_dir(self, name: str) -> Path:
        return self.out / name

    @property
    def digits_ckpt(self) -> Path:
        return self.run_dir("train-digits") / "checkpoints" / "last.ckpt"

    @property
    def insta_ckpt(self) -> Path:
        return self.run_dir("train-insta-rs") / "checkpoints" / "last.ckpt"


@dataclass(frozen=True)
class Check:
    """One path: its commands (argument lists after ``python``), what must have passed before, the GPUs it
    needs, and a check of what the commands wrote (returns the detail printed after PASS; raises on failure)."""

    commands: Callable[[Context], list[list[str]]]
    verify: Callable[[Context], str]
    needs: tuple[str, ...] = ()
    min_gpus: int = 1
    prepare: Callable[[Context], None] | None = None


class CheckFailed(Exception):
    """A path's outputs are not what its commands should have written."""


# -- commands --------------------------------------------------------------------------------------------------

def _train(ctx: Context, name: str, *overrides: str) -> list[str]:
    return ["train.py", *overrides, *QUIET_TRAIN, f"hydra.run.dir={ctx.run_dir(name)}"]


def _certify(ctx: Context, name: str, *overrides: str, ckpt: Path | None = None) -> list[str]:
    return ["certify.py", f"ckpt_path={ckpt or ctx.digits_ckpt}", *CERTIFY, *overrides,
            f"hydra.run.dir={ctx.run_dir(name)}"]


def _fixed(name: str, *overrides: str) -> Callable[[Context], list[list[str]]]:
    return lambda ctx: [_certify(ctx, name, GPU, "sigma_search=fixed", "sigma_search.sigma=0.25", *overrides)]


def _cifar_data(ctx: Context) -> list[str]:
    if ctx.cifar_root is not None:
        return ["dataset=cifar10_jpg_12k", f"dataset.root={ctx.cifar_root}"]
    return ["dataset=image_folder", f"dataset.root={ctx.out / 'synthetic_images'}"]


def write_synthetic_image_folder(root: Path, classes: int = 10, train: int = 20, test: int = 4) -> None:
    """root/{train,test}/class_k/*.png: random 32x32 RGB images, a stand-in for the CIFAR-10 JPEG subset."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("test", test)):
        for k in range(classes):
            folder = root / split / f"class_{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")


# -- checks of the outputs -------------------------------------------------------------------------------------

def _file(path: Path) -> Path:
    if not path.is_file():
        raise CheckFailed(f"{path} was not written")
    return path


def _trained(name: str) -> Callable[[Context], str]:
    def verify(ctx: Context) -> str:
        _file(ctx.run_dir(name) / "checkpoints" / "last.ckpt")
        return "checkpoints/last.ckpt written"
    return verify


def _rows(ctx: Context, name: str) -> list[list[str]]:
    lines = _file(ctx.run_dir(name) / "certify.tsv").read_text().splitlines()
    return [line.split("\t") for line in lines]


def _certified(name: str) -> Callable[[Context], str]:
    def verify(ctx: Context) -> str:
        rows = _rows(ctx, name)
        summary = json.loads(_file(ctx.run_dir(name) / "summary.json").read_text())
        if len(rows) < 2:
            raise CheckFailed(f"{name}: certify.tsv has no rows")
        return f"{len(rows) - 1} rows, ACR {summary['acr']:.3f}"
    return verify


def _same_rows(ctx: Context) -> str:
    """ddp-certify's rows equal certify-fixed's (one GPU), the time column aside."""
    sharded, single = _rows(ctx, "ddp-certify"), _rows(ctx, "certify-fixed")
    header = sharded[0]
    keep = [i for i, column in enumerate(header) if column != "time"]
    strip = lambda rows: [[row[i] for i in keep] for row in rows]  # noqa: E731
    if header != single[0] or strip(sharded) != strip(single):
        raise CheckFailed("the sharded rows differ from one GPU's (outputs/check_gpu/ddp-certify/certify.tsv "
                          "against certify-fixed/certify.tsv)")
    return f"{len(sharded) - 1} rows on {ctx.gpus} GPUs, equal to one GPU's"


def _wandb_run(ctx: Context) -> str:
    runs = sorted((ctx.run_dir("wandb-offline") / "wandb").glob("offline-run-*"))
    if not runs:
        raise CheckFailed("no wandb/offline-run-* folder in the run directory")
    return f"{runs[-1].name}"


def _bench(ctx: Context) -> str:
    """The (a) rates (``Smooth.certify_batch``, draws per second) of the two bench runs, in the order they ran
    (cuda, cpu): the last line of each run is its ``name=value`` pairs."""
    lines = [line for line in _file(ctx.out / "logs" / "bench-certify.log").read_text().splitlines()
             if line.startswith("speedup_vs_naive=")]
    if len(lines) != 2:
        raise CheckFailed(f"expected the pairs line of 2 bench runs in logs/bench-certify.log, found {len(lines)}")
    gpu, cpu = (float(dict(part.split("=", 1) for part in line.split())["a_draws_per_s"]) for line in lines)
    return f"small_cnn, n = 10,000: cuda {gpu:,.0f} draws/s, cpu {cpu:,.0f} draws/s ({gpu / cpu:.1f}x)"


def _bench_commands(ctx: Context) -> list[list[str]]:
    return [["-m", "insta_rs.bench", "certify", "--device", device, *BENCH] for device in ("cuda", "cpu")]


CHECKS: dict[str, Check] = {
    "train-digits": Check(
        lambda ctx: [_train(ctx, "train-digits", GPU, "train.sigma=[0.12,0.25,0.5,1.0]", "train.epochs=2",
                            "logger=csv")],
        _trained("train-digits")),
    "train-cifar-jpg": Check(
        lambda ctx: [_train(ctx, "train-cifar-jpg", GPU, *_cifar_data(ctx), "model=cifar_vgg", "train.epochs=1",
                            "train.batch_size=128", "train.lr=0.1", "num_workers=4", "logger=csv")],
        _trained("train-cifar-jpg"),
        prepare=lambda ctx: None if ctx.cifar_root else write_synthetic_image_folder(ctx.out / "synthetic_images")),
    "train-insta-rs": Check(
        lambda ctx: [_train(ctx, "train-insta-rs", GPU, "train=insta_rs", "train.epochs=2", "train.stage1_epochs=1",
                            "logger=csv")],
        _trained("train-insta-rs")),
    "certify-fixed": Check(_fixed("certify-fixed"), _certified("certify-fixed"), needs=("train-digits",)),
    "certify-grid": Check(
        lambda ctx: [_certify(ctx, "certify-grid", GPU, "sigma_search=grid")],
        _certified("certify-grid"), needs=("train-digits",)),
    "certify-insta-rs": Check(
        lambda ctx: [_certify(ctx, "certify-insta-rs", GPU, "sigma_search=insta_rs")],
        _certified("certify-insta-rs"), needs=("train-digits",)),
    "certify-selector": Check(
        lambda ctx: [
            ["train.py", "train=selector", f"base_ckpt={ctx.insta_ckpt}", GPU, "selector.epochs=1", "selector.draws=4",
             "logger=none", "print_config=false", f"hydra.run.dir={ctx.run_dir('certify-selector') / 'selector'}"],
            _certify(ctx, "certify-selector", GPU, "sigma_search=selector",
                     f"sigma_search.ckpt_path={ctx.run_dir('certify-selector') / 'selector' / 'selector.pt'}",
                     ckpt=ctx.insta_ckpt)],
        _certified("certify-selector"), needs=("train-insta-rs",)),
    "autocast-bf16": Check(_fixed("autocast-bf16", "certify.autocast=bf16"), _certified("autocast-bf16"),
                           needs=("train-digits",)),
    "autocast-fp16": Check(_fixed("autocast-fp16", "certify.autocast=fp16"), _certified("autocast-fp16"),
                           needs=("train-digits",)),
    "channels-last": Check(_fixed("channels-last", "certify.channels_last=true"), _certified("channels-last"),
                           needs=("train-digits",)),
    "compile": Check(_fixed("compile", "certify.compile=true"), _certified("compile"), needs=("train-digits",)),
    "sequential": Check(
        _fixed("sequential", "certify.sampling=sequential", "certify.first_stage=500"),
        _certified("sequential"), needs=("train-digits",)),
    "ddp-train": Check(
        lambda ctx: [_train(ctx, "ddp-train", "trainer=ddp", "train.epochs=1", "logger=csv")],
        _trained("ddp-train"), min_gpus=2),
    "ddp-certify": Check(
        lambda ctx: [_certify(ctx, "ddp-certify", "trainer=ddp", "sigma_search=fixed", "sigma_search.sigma=0.25")],
        _same_rows, needs=("train-digits", "certify-fixed"), min_gpus=2),
    "wandb-offline": Check(
        lambda ctx: [_train(ctx, "wandb-offline", GPU, "train.epochs=1", "logger=wandb")],
        _wandb_run),
    "bench-certify": Check(_bench_commands, _bench),
}
assert list(CHECKS) == list(PATHS), "CHECKS and PATHS must name the same paths in the same order"


# -- running ---------------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    name: str
    status: str        # PASS | FAIL | SKIP
    seconds: float
    detail: str

    def line(self) -> str:
        return f"{self.status:4s}  {self.name:<17s}{self.seconds:6.1f} s  {self.detail}"


def last_line(text: str) -> str:
    """The last non-empty line of a log (where a Python error or the project's one-line refusal ends)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def execute(argv: list[str], log: Path, timeout: float) -> tuple[int, str]:
    """Run ``python argv`` in the project folder, append its output to ``log``; (exit code, last line)."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "MPLBACKEND": "Agg"}
    env.pop("INSTA_RS_RUN_DIR", None)
    command = [sys.executable, *argv]
    try:
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        output = (error.stdout or b"").decode() if isinstance(error.stdout, bytes) else (error.stdout or "")
        with log.open("a") as f:
            f.write(f"$ {' '.join(command)}\n{output}\n(timed out after {timeout:.0f} s)\n")
        return 124, f"timed out after {timeout:.0f} s: {' '.join(argv[:1])}"
    with log.open("a") as f:
        f.write(f"$ {' '.join(command)}\n{result.stdout}\n{result.stderr}\n")
    return result.returncode, last_line(result.stderr or result.stdout)


@dataclass
class Runner:
    ctx: Context
    run: Callable[[list[str], Path, float], tuple[int, str]] = execute
    budget_s: float = BUDGET_S
    outcomes: dict[str, Outcome] = field(default_factory=dict)

    def check(self, name: str, started: float) -> Outcome:
        check = CHECKS[name]
        if self.ctx.gpus < check.min_gpus:
            return Outcome(name, "SKIP", 0.0, f"{self.ctx.gpus} GPU visible: this path needs at least "
                                              f"{check.min_gpus}")
        missing = [need for need in check.needs if self.outcomes.get(need, Outcome(need, "", 0, "")).status != "PASS"]
        if missing:
            return Outcome(name, "FAIL", 0.0, f"needs {', '.join(missing)}, which did not pass")
        left = self.budget_s - (time.perf_counter() - started)
        if left <= 0:
            return Outcome(name, "SKIP", 0.0, f"not started: the {self.budget_s:.0f}-second budget is spent")
        begin = time.perf_counter()
        log = self.ctx.out / "logs" / f"{name}.log"
        try:
            if check.prepare is not None:
                check.prepare(self.ctx)
            for argv in check.commands(self.ctx):
                code, line = self.run(argv, log, min(COMMAND_TIMEOUT_S, max(left, 30.0)))
                if code != 0:
                    return Outcome(name, "FAIL", time.perf_counter() - begin, f"exit {code}: {line}")
            detail = check.verify(self.ctx)
        except Exception as error:  # a failed check of the outputs, or an error of the harness itself
            return Outcome(name, "FAIL", time.perf_counter() - begin, f"{type(error).__name__}: {error}")
        return Outcome(name, "PASS", time.perf_counter() - begin, detail)

    def run_all(self, names: list[str], echo: Callable[[str], None] = print) -> list[Outcome]:
        started = time.perf_counter()
        (self.ctx.out / "logs").mkdir(parents=True, exist_ok=True)
        for name in names:
            outcome = self.check(name, started)
            self.outcomes[name] = outcome
            echo(outcome.line())
        return [self.outcomes[name] for name in names]


def find_cifar(root: Path = ROOT) -> Path | None:
    """The shared CIFAR-10 JPEG subset (INSTA_RS_SHARED, else the shared folder beside the project), or None."""
    shared = Path(os.environ.get("INSTA_RS_SHARED") or root.parent / "shared")
    path = (shared / SHARED_CIFAR).resolve()
    return path if (path / "train").is_dir() and (path / "test").is_dir() else None


def no_cuda() -> str | None:
    """Why no CUDA device can be used, or None. On Linux an empty CUDA_VISIBLE_DEVICES or a missing NVIDIA
    driver (/dev/nvidiactl) answers without importing torch; otherwise torch.cuda.is_available() decides."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        return "no CUDA device is visible (CUDA_VISIBLE_DEVICES is empty)"
    if sys.platform.startswith("linux") and not Path("/dev/nvidiactl").exists():
        return "no CUDA device is visible (no NVIDIA driver: /dev/nvidiactl does not exist)"
    import torch

    if not torch.cuda.is_available():
        return f"no CUDA device is visible (torch {torch.__version__}, built for CUDA {torch.version.cuda})"
    return None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m insta_rs.check_gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "check_gpu",
                   help="where the runs and their logs go (emptied first)")
    p.add_argument("--only", nargs="+", choices=list(PATHS), metavar="NAME",
                   help="run these paths only (with the paths they need): " + ", ".join(PATHS))
    p.add_argument("--dry-run", action="store_true", help="print every command instead of running it (no GPU needed)")
    return p


def selected(only: list[str] | None) -> list[str]:
    """The paths to run, in PATHS order: ``only`` and, transitively, the paths they need."""
    if not only:
        return list(PATHS)
    wanted, stack = set(), list(only)
    while stack:
        name = stack.pop()
        if name not in wanted:
            wanted.add(name)
            stack.extend(CHECKS[name].needs)
    return [name for name in PATHS if name in wanted]


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    names = selected(args.only)
    if args.dry_run:
        ctx = Context(args.out.resolve(), gpus=2, cifar_root=find_cifar())
        for name in names:
            print(f"# {name}: {PATHS[name]}")
            for command in CHECKS[name].commands(ctx):
                print("python " + " ".join(command))
        return 0
    refusal = no_cuda()
    if refusal:
        print(f"check-gpu: {refusal}: run it on a machine with an NVIDIA GPU, or --dry-run to list the commands",
              file=sys.stderr)
        return 2
    import torch

    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    ctx = Context(out, gpus=torch.cuda.device_count(), cifar_root=find_cifar())
    print(f"check-gpu: {ctx.gpus} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA "
          f"{torch.version.cuda}; CIFAR data: {ctx.cifar_root or 'synthetic ImageFolder'}; logs in {out / 'logs'}",
          flush=True)
    start = time.perf_counter()
    outcomes = Runner(ctx).run_all(names, echo=lambda line: print(line, flush=True))
    counts = {status: sum(o.status == status for o in outcomes) for status in ("PASS", "FAIL", "SKIP")}
    print(f"check-gpu: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped in "
          f"{time.perf_counter() - start:.0f} s")
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
