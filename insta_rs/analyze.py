"""Tables and curves for certification files, ours or Cohen et al.'s released ones.

    python -m insta_rs.analyze PATH [PATH ...] [--radii 0,0.25,...] [--dataset imagenet] [--out DIR]

PATH: a certification or prediction file, a run folder (its certify.tsv or predict.tsv), or a folder of runs
(every such file below it), as ``compare`` takes them. Prints a markdown table with one row per (file,
guarantee label): rows, ACR, certified accuracy at each radius of the grid, abstain rate (ALGORITHMS.md
section 5), each with its 95% interval over the certified inputs (docs/statistics.md). Rows of different guarantee
labels are never pooled, and a table that holds several prints the note that ``compare`` prints.
A file is labelled as ``compare`` labels files: by the shortest end of its path that tells it from the
others (a certify.tsv by its folder; a numbered folder of a Hydra multirun with its parent: ``12-00-00/0``).
The grid is ``--radii`` if given, else the standard grid
of ``--dataset`` (ImageNet's for imagenet*, CIFAR-10's otherwise) up to the largest certified radius of any
file, rounded up to the grid's step. With ``--out DIR`` also writes DIR/table.md and
DIR/certified_accuracy.png (one curve per file and guarantee, with the sigma its rows share and its 95% band;
``instance`` curves dotted and listed apart: they are not certificates).
Prediction files (PREDICT rows without a radius: ``certify.mode=predict``'s predict.tsv, Cohen et al.'s
predict.py output) get their own table: rows, accuracy, abstain rate and seconds per input per guarantee label.
A malformed file: one line on stderr, exit code 1; a bad command line (an option value, a path that does not
exist, a folder with no run, a .json or .png file): exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import analysis
from .errors import ConfigError, InstaRSError


def parse_radii(text: str) -> tuple[float, ...]:
    """``"0,0.25,0.5"`` -> (0.0, 0.25, 0.5); ConfigError unless a non-empty list of numbers >= 0."""
    try:
        radii = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        radii = ()
    if not radii or any(not (r >= 0) or r == float("inf") for r in radii):
        raise ConfigError(f"--radii={text!r} is invalid: expected comma-separated radii >= 0, e.g. 0,0.25,0.5")
    return radii


def run_labels(paths: list[Path]) -> list[str]:
    """A label per file: the shortest end of its path that no other file's path ends with
    (``analysis.path_labels``: a certify.tsv stands for its folder, a ``.tsv``/``.txt`` extension is dropped, so
    Cohen et al.'s ``sigma_0.25`` stays whole; a numbered folder keeps its parent); a file given twice gets a
    suffix `` #2``, `` #3``, ... in the order given."""
    labels, seen = [], {}
    for base in analysis.path_labels(paths):
        seen[base] = seen.get(base, 0) + 1
        labels.append(base if seen[base] == 1 else f"{base} #{seen[base]}")
    return labels


def analyze(paths: list[str | Path], radii: tuple[float, ...] | None, out: str | Path | None = None,
            dataset: str | None = None) -> str:
    """Read every file (``analysis.run_files``: files, run folders, folders of runs), return the markdown table;
    with ``out``, also write table.md and certified_accuracy.png there (the curves share one radius range, each
    with its 95% band; ``instance`` curves dotted, apart from the certificates). ``radii`` None: ``dataset``'s
    standard grid up to the largest certified radius of any file (``analysis.grid_up_to_reach``)."""
    paths = analysis.run_files(paths)
    labelled = list(zip(run_labels(paths), paths))
    predictions = {label: analysis.summarize_predictions_by_guarantee(analysis.read_predictions(p))
                   for label, p in labelled if analysis.is_prediction_file(p)}
    frames = {label: analysis.read_certification(p) for label, p in labelled if label not in predictions}
    if radii is None:
        radii = analysis.grid_up_to_reach(analysis.radius_grid(dataset), frames.values())
    summaries = {label: analysis.summarize_by_guarantee(df, radii) for label, df in frames.items()}
    tables = [analysis.markdown_table(summaries, radii, notes=False)] if frames else []
    tables += [analysis.prediction_table(predictions, notes=False)] if predictions else []
    table = "\n".join(tables)
    labels = [guarantee for by in summaries.values() for guarantee in by]
    table += analysis.table_notes(labels + [g for by in predictions.values() for g in by])
    if out is not None:
        from .certification_file import write_atomic

        out = Path(out)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"--out={str(out)!r} cannot be created ({error.strerror}): expected a writable folder") from None
        top = max((float(df.loc[df["correct"] == 1, "radius"].max()) for df in frames.values()
                   if (df["correct"] == 1).any()), default=0.0)
        max_radius = 1.05 * top if top > 0 else 1.0
        curves, bands, guarantees = {}, {}, {}
        for label, df in frames.items():
            for guarantee in summaries[label]:
                subset = df[df["guarantee"].astype(str) == guarantee]
                legend = analysis.curve_label(label, None, guarantee, sigma=analysis.single_sigma(subset))
                curves[legend] = analysis.certified_accuracy_curve(subset, max_radius=max_radius)
                bands[legend] = analysis.curve_band(curves[legend][1], len(subset))
                guarantees[legend] = guarantee
        write_atomic(out / "table.md", table)
        if curves:
            analysis.plot_certified_accuracy(curves, out / "certified_accuracy.png", guarantees=guarantees, bands=bands)
    return table


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit code (0, or the InstaRSError's: 1 data, 2 configuration)."""
    parser = argparse.ArgumentParser(prog="python -m insta_rs.analyze",
                                     description="Certified accuracy and ACR tables for certification TSV files.")
    parser.add_argument("files", nargs="+", metavar="PATH",
                        help="certification files (ALGORITHMS.md section 6), prediction files (predict.tsv), run "
                             "folders or folders of runs")
    parser.add_argument("--radii", default=None, help="comma-separated radius grid, e.g. 0,0.25,0.5 (default: the "
                                                      "standard grid up to the largest certified radius, rounded up "
                                                      "to its step)")
    parser.add_argument("--dataset", default=None,
                        help="standard grid for this data set: imagenet* -> 0,0.5,...,3.5, else 0,0.25,...,2.25")
    parser.add_argument("--out", default=None, metavar="DIR", help="write table.md and certified_accuracy.png here")
    args = parser.parse_args(argv)
    try:
        radii = parse_radii(args.radii) if args.radii is not None else None
        table = analyze(args.files, radii, args.out, dataset=args.dataset)
    except InstaRSError as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return error.exit_code
    print(table, end="")
    if args.out is not None:
        print(f"wrote table.md{' and certified_accuracy.png' if 'ACR' in table else ''} in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
