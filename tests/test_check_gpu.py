"""`make check-gpu` (insta_rs.check_gpu) without a GPU: it refuses in one line, every command it would run is a
valid command of its entry point, it reports one line per path, and README.md lists the same paths."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import ROOT, run_script
from insta_rs import check_gpu
from insta_rs.check_gpu import CHECKS, PATHS, Context, Runner

README_BLOCK = re.compile(r"<!-- check-gpu paths -->\n(.*?)\n<!-- /check-gpu paths -->", re.S)


def test_without_cuda_it_refuses_in_one_line_with_exit_2(tmp_path):
    result = run_script("-m insta_rs.check_gpu", "--out", str(tmp_path / "out"), check=False,
                        env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 2, result.stderr
    assert not (tmp_path / "out").exists()
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0] and "--dry-run" in lines[0], result.stderr


def test_readme_lists_the_same_paths():
    text = (ROOT / "README.md").read_text()
    block = README_BLOCK.search(text)
    assert block, ("README.md has no block between <!-- check-gpu paths --> and <!-- /check-gpu paths -->: "
                   "add one bullet per insta_rs.check_gpu.PATHS entry, `- name: what`")
    listed = [re.fullmatch(r"- `?([\w-]+)`?: (.+)", line.strip()) for line in block.group(1).strip().splitlines()]
    assert all(listed), f"every line of the README's check-gpu block must read `- name: what`:\n{block.group(1)}"
    assert {m.group(1): m.group(2) for m in listed} == PATHS
    assert [m.group(1) for m in listed] == list(PATHS)


def test_every_command_composes_and_builds_its_settings(compose, tmp_path):
    """Each train.py / certify.py command composes with Hydra as its entry point would (hydra.* aside) and its
    settings pass their checks; each bench command parses. Nothing runs, so no GPU is needed. The CIFAR epoch
    is composed twice: on the shared subset and on the synthetic ImageFolder made when it is missing."""
    from insta_rs import bench, cli
    from insta_rs.certification import CertifySettings
    from insta_rs.selector_training import SelectorSettings

    cli.register_train_configs()
    commands = [(name, argv) for name, check in CHECKS.items()
                for argv in check.commands(Context(tmp_path, gpus=2, cifar_root=None))]
    commands += [("train-cifar-jpg", argv) for argv in
                 CHECKS["train-cifar-jpg"].commands(Context(tmp_path, gpus=2, cifar_root=tmp_path / "cifar"))]
    assert {name for name, _ in commands} == set(PATHS)
    datasets = []
    for name, argv in commands:
        where = f"{name}: python {' '.join(argv)}"
        if argv[:2] == ["-m", "insta_rs.bench"]:
            args = bench.parser().parse_args(argv[2:])
            assert args.what == "certify" and args.device in ("cuda", "cpu"), where
            continue
        script, overrides = argv[0], [o for o in argv[1:] if not o.startswith("hydra.")]
        assert script in ("train.py", "certify.py"), where
        cfg = compose(script[:-3], overrides)
        if script == "certify.py":
            cli.settings(CertifySettings, cfg.certify, "certify")
        elif cfg.get("selector") is not None:
            cli.settings(SelectorSettings, cli.resolved(cfg.selector), "selector")
        else:
            cli.build_group(cli.resolved(cfg.train), "train", _convert_="all")
        assert cfg.trainer.accelerator == "gpu", where
        if name == "train-cifar-jpg":
            datasets.append((cfg.dataset.name, cfg.dataset.root))
    assert datasets == [("image_folder", str(tmp_path / "synthetic_images")),
                        ("cifar10-jpg-12k", str(tmp_path / "cifar"))]


def test_dry_run_prints_every_path_without_a_gpu(tmp_path, capsys):
    assert check_gpu.main(["--dry-run", "--out", str(tmp_path)]) == 0
    headers = [line[2:].split(":")[0] for line in capsys.readouterr().out.splitlines() if line.startswith("# ")]
    assert headers == list(PATHS)


def test_one_line_per_path_failures_carry_their_last_line_and_block_what_needs_them(tmp_path):
    """The runner with the subprocesses replaced: certify-fixed's command fails, so ddp-certify (which compares
    with it) fails naming it; one GPU skips the DDP paths; the rest pass their output checks."""
    ctx = Context(tmp_path, gpus=1, cifar_root=tmp_path / "cifar")
    ran = []

    def fake_run(argv, log, timeout):
        ran.append(argv)
        run_dir = next((Path(a.split("=", 1)[1]) for a in argv if a.startswith("hydra.run.dir=")), None)
        if run_dir is not None and run_dir.name == "certify-fixed":
            return 1, "RuntimeError: CUDA error: no kernel image is available"
        if argv[0] == "train.py":
            (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            (run_dir / "checkpoints" / "last.ckpt").write_text("")
            (run_dir / "wandb" / "offline-run-1").mkdir(parents=True, exist_ok=True)
        elif argv[0] == "certify.py":
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "certify.tsv").write_text("idx\tlabel\tradius\ttime\n0\t1\t0.5\t0.1\n")
            (run_dir / "summary.json").write_text('{"acr": 0.5}')
        else:
            with log.open("a") as f:
                f.write(f"speedup_vs_naive=2 a_draws_per_s={'50000' if 'cuda' in argv else '1000'} model=small_cnn\n")
        return 0, ""

    lines = []
    outcomes = {o.name: o for o in Runner(ctx, run=fake_run).run_all(list(PATHS), echo=lines.append)}
    assert [line.split()[1] for line in lines] == list(PATHS)
    assert outcomes["certify-fixed"].status == "FAIL" and "no kernel image" in lines[list(PATHS).index("certify-fixed")]
    assert outcomes["ddp-train"].status == "SKIP" and outcomes["ddp-certify"].status == "SKIP"
    assert outcomes["bench-certify"].status == "PASS" and "(50.0x)" in outcomes["bench-certify"].detail
    passed = {name for name, o in outcomes.items() if o.status == "PASS"}
    assert passed == set(PATHS) - {"certify-fixed", "ddp-train", "ddp-certify"}
    assert all(argv[0] != "train.py" or "trainer=ddp" not in argv for argv in ran)

    ctx2 = Context(tmp_path / "two", gpus=2, cifar_root=None)
    outcomes = {o.name: o for o in Runner(ctx2, run=fake_run).run_all(["train-digits", "ddp-certify"], echo=len)}
    assert outcomes["ddp-certify"].status == "FAIL" and "certify-fixed" in outcomes["ddp-certify"].detail
