"""`mlpl`: one subcommand per DVC stage, plus user tools. dvc.yaml calls these same commands."""

from __future__ import annotations

import gc
import importlib
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
import typer.core

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  rich_markup_mode=None,  # click's plain help: no `<bool>` / `{arg}` placeholders
                  help="Multi-label pseudo-labels from a frozen CLIP-style model, as a cached DVC pipeline. "
                       "The stage commands are listed in DAG order; `dvc repro` runs them.")


class _Command(typer.core.TyperCommand):
    """Usage lines as `mlpl predict [OPTIONS] IMAGES_DIR`, not typer's `{IMAGES_DIR}`."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = (param.metavar or param.name or "").upper()
                pieces.append(name if param.required else f"[{name}]")
        return pieces


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"mlpl {version('mlpl')}")
        raise typer.Exit()


@app.callback()
def _options(show_version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False) -> None:
    pass

PARAMS_OPTION = typer.Option(Path("params.yaml"), "--params", "-p", help="Params file (run from the project root).")


def _run_stage(name: str, params_file: Path, **kwargs) -> None:
    from pipeline.storage import DataError
    from stages.common import Params, ParamsError
    from stages.validate import validate_once

    try:
        module = importlib.import_module(f"stages.{name}")
        params = Params.load(params_file)
        validate_once(params)  # the whole file, before anything is computed or written
        module.run(params, **kwargs)
    except (ParamsError, DataError, FileNotFoundError, ValueError) as e:
        typer.secho(f"mlpl {name}: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


def _stage_command(name: str, doc: str):
    def command(params: Path = PARAMS_OPTION) -> None:
        _run_stage(name, params)

    command.__doc__ = doc
    app.command(name)(command)


_stage_command("validate", "Check every params key (types, ranges, names, paths) without computing anything.")
_stage_command("prepare", "Build the dataset manifest (and images of the embedded benchmark).")
_stage_command("mask", "Choose which train labels are known, from top-level `ratio` and `seed`.")
_stage_command("teacher", "Train the toy teacher, or resolve real open_clip weights offline.")
@app.command("score")
def score(params: Path = PARAMS_OPTION,
          max_shards: int = typer.Option(None, "--max-shards", min=1,
                                         help="Stop after scoring this many shards (per process); a rerun "
                                              "resumes.")) -> None:
    """Score global view, grid tiles and random crops of every image → data/scores.zarr (resumable).

    Under torchrun (`torchrun --standalone --nproc_per_node=N -m stages.score`) the processes split the
    shards between them; see docs/scaling.md.
    """
    _run_stage("score", params, max_shards=max_shards)


_stage_command("init", "Initial pseudo labels from cached scores: z0, cut estimator, CDUL aggregate.")
_stage_command("correct", "Order-persistent correction of the initial labels (+ known labels).")
_stage_command("features", "Encode the train images once with the frozen tower, for composites in feature space.")
_stage_command("sew", "Adapt on the corrected labels and refine them by EM.")
_stage_command("ceiling", "Train the same adapter on the true train labels (supervised ceiling).")
_stage_command("distill", "Export or train the standalone student from the refined labels.")
_stage_command("evaluate", "Score every label table and model against ground truth → reports/.")


@app.command("predict", cls=_Command)
def predict(images_dir: Annotated[Path, typer.Argument(metavar="IMAGES_DIR",
                                                      help="Folder of images (recursive), or one image file.")],
            out: Annotated[Path, typer.Option("--out", "-o", help="Output Parquet table.")] = Path("preds.parquet"),
            model: Annotated[Path, typer.Option("--model", "-m", help="Student checkpoint.")] = Path(
                "data/models/student.pt"),
            threshold: Annotated[float, typer.Option(
                "--threshold", min=0.0, max=1.0, help="Probability at or above which a class is in `labels`.")] = 0.5,
            on_bad_input: Annotated[str, typer.Option(
                "--on-bad-input", help="skip: leave undecodable files out and list them in OUT's .issues.parquet; "
                                       "fail: decode every image first, exit naming the bad ones, writing "
                                       "nothing.")] = "skip",
            batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
            num_workers: Annotated[int, typer.Option("--num-workers", min=0)] = 0) -> None:
    """Run the standalone student on every image of a folder → per-class logits, probabilities and labels."""
    from pipeline.storage import DataError
    from stages import predict as predict_stage

    try:
        predict_stage.run(images_dir, out, model, batch_size, num_workers, threshold, on_bad_input)
    except (FileNotFoundError, ValueError, DataError) as e:
        typer.secho(f"mlpl predict: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


@app.command("export")
def export(out: Annotated[Path, typer.Option("--out", "-o", help="Output file.")] = Path("pseudo_labels.csv"),
           labels: Annotated[str, typer.Option(
               "--labels", help="Which labels: refined (the pipeline's final train labels), corrected (train and "
                                "test rows), or an initial estimator: cut, cdul, z0, tiles, crops.")] = "refined",
           fmt: Annotated[str, typer.Option(
               "--format", help="csv: image,labels,split (the folder-dataset input format); coco: COCO-style JSON "
                                "with image-level annotations and scores. Default: from OUT's suffix (.csv, "
                                ".json); one that names the other format is an error.")] = None,
           threshold: Annotated[float, typer.Option(
               "--threshold", min=0.0, max=1.0, help="Probability at or above which a class is a label.")] = 0.5,
           ) -> None:
    """Write pseudo labels for another trainer: CSV or COCO-style JSON (after `dvc repro`)."""
    from pipeline.storage import DataError
    from stages import export as export_stage

    try:
        export_stage.run(out, labels, fmt, threshold)
    except (FileNotFoundError, ValueError, DataError) as e:
        typer.secho(f"mlpl export: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


@app.command("compare")
def compare(html: Annotated[Path, typer.Option("--html", help="Also write the table as an HTML page here.")] = None,
            ) -> None:
    """The experiments side by side: the params that differ and the ladder's figures (`dvc exp show`)."""
    from stages import compare as compare_stage

    try:
        compare_stage.run(html)
    except ValueError as e:
        typer.secho(f"mlpl compare: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


@app.command("config", cls=_Command)
def config(file: Annotated[Path, typer.Argument(metavar="FILE", help="A config of configs/ (its differences "
                                                                      "from params.yaml).")],
           write: Annotated[bool, typer.Option("--write", help="Apply it to the params file in place, comments "
                                                               "kept, for `dvc repro`.")] = False,
           params: Path = PARAMS_OPTION) -> None:
    """Apply a config: print its `dvc exp run` flags (`mlpl config FILE | xargs dvc exp run`) or --write it."""
    from stages import configs as configs_stage
    from stages.common import ParamsError

    try:
        configs_stage.run(file, params, write)
    except (ParamsError, ValueError) as e:
        typer.secho(f"mlpl config: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


@app.command("merge-answers", cls=_Command)
def merge_answers(files: Annotated[list[Path], typer.Argument(metavar="FILE...", help="Answers files "
                                                                           "(data/answers.parquet format).")],
                  out: Annotated[Path, typer.Option("--out", "-o", help="The merged answers file.")] = Path(
                      "data/answers.parquet")) -> None:
    """Merge reviewers' answers files: per entry the latest answer wins; conflicting entries are listed."""
    from pipeline.storage import DataError
    from stages import answers as answers_stage

    try:
        answers_stage.run(files, out)
    except (FileNotFoundError, ValueError, DataError) as e:
        typer.secho(f"mlpl merge-answers: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


@app.command("review", cls=_Command)
def review(port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1.")] = 8765,
           answers: Annotated[Path, typer.Option("--answers", help="The answers file it writes (what `known: "
                                                                   "answers` reads).")] = Path("data/answers.parquet"),
           ) -> None:
    """Review the pseudo labels in the browser (the answer that helps most first); answers are saved at once.
    Ctrl-C stops."""
    from stages import review as review_stage

    try:
        review_stage.run(port, answers)
    except (FileNotFoundError, ValueError, OSError) as e:
        typer.secho(f"mlpl review: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


@app.command("info")
def info() -> None:
    """Print the dataset, the teacher and the cached artifacts with their sizes (from the project's root or
    any folder in it)."""
    from stages import info as info_stage

    root = project_root(Path.cwd())
    if root is None:
        typer.secho(f"mlpl info: {Path.cwd()} is not in an mlpl project (no dvc.yaml and params.yaml here or in a "
                    "folder above); run it in the project", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    if root != Path.cwd().resolve():
        print(f"project: {root}")
        os.chdir(root)  # the project's paths are relative to its root, as in dvc.yaml
    info_stage.run()


def project_root(start: Path) -> Path | None:
    """The nearest folder at or above `start` holding both dvc.yaml and params.yaml (as DVC finds its repo
    from a subfolder); None where there is none."""
    for folder in (start.resolve(), *start.resolve().parents):
        if (folder / "dvc.yaml").is_file() and (folder / "params.yaml").is_file():
            return folder
    return None


def workspace_code(cwd: Path | None = None) -> Path | None:
    """The mlpl checkout in the working directory where it is not the one this process imported from: a DVC
    experiment's workspace (`dvc exp run --queue` runs each in a copy under .dvc/tmp/exps), a benchmark's
    project copy, or another clone beside an editable install. DVC hashed that checkout's files for the
    stage, so its code is the one that must run; None where it already is (or cwd is no checkout)."""
    here = (cwd or Path.cwd()).resolve()
    # the same file, not the same folder: a checkout whose stages/ links to this one's must not exec forever
    if (here / "stages" / "cli.py").resolve() == Path(__file__).resolve():
        return None
    marks = ("dvc.yaml", "stages/cli.py", "pipeline/__init__.py")
    return here if all((here / m).is_file() for m in marks) else None


def main() -> None:  # pragma: no cover
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if workspace_code() is not None:  # run the workspace's own code: `-c` puts the working directory first
        os.execv(sys.executable, [sys.executable, "-c", "from stages.cli import main; main()", *sys.argv[1:]])
    try:
        app(prog_name="mlpl")  # exits through SystemExit with the command's status
    finally:
        # The interpreter's last full collection walks every object the imports made (torch, its compiler
        # stack and open_clip: ~4·10^5) for ~0.7 s per stage process (a tiny project's `mlpl sew`: 4.9 s →
        # 4.2 s); every output is written and closed by now, so skip it.
        gc.freeze()
