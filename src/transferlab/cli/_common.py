"""Shared CLI plumbing: the typer app, error handling, output helpers (options: `_options`).

Library errors (`TransferlabError`) print as one red line on stderr and exit with code 2; no
traceback. Ctrl-C exits with 130. Anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C")

app = typer.Typer(
    name="transferlab",
    help="Transfer learning on images: pretrained backbones, cached features, linear probes.\n\n"
    "Start with `transferlab demo`, then `transferlab fit DATA --out DIR`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_USER_ERROR = 2


def handle_errors(func: F) -> F:
    """Turn library errors into a clear message and a non-zero exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from transferlab.exceptions import TransferlabError

        _configure_logging()
        try:
            return func(*args, **kwargs)
        except TransferlabError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            err.print(
                "[yellow]interrupted[/]: finished work (cached features, saved files) is kept"
            )
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def command(name: str, *, group: typer.Typer = app) -> Callable[[F], F]:
    """Register a function as the command `name` of `group`, with `handle_errors` around it."""

    def register(func: F) -> F:
        return group.command(name)(handle_errors(func))

    return register


def _configure_logging() -> None:
    level = os.environ.get("TRANSFERLAB_LOG", "WARNING").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.WARNING), format="%(levelname)s %(name)s: %(message)s"
    )


def print_json(data: Any) -> None:
    """`data` as indented JSON on stdout, through the library's one encoder."""
    from transferlab._internal.json import dumps

    typer.echo(dumps(data))


def print_step(step: str) -> None:
    """Progress of a long run, dimmed on stderr (stdout stays for the result)."""
    err.print(f"[dim]» {step}[/]")


def print_failures(failures: Iterable[Any]) -> None:
    """The images an extraction skipped, one line each on stderr."""
    for f in failures:
        err.print(f"skipped {f.path}: {f.reason}", markup=False)


def default_run_dir(data: Path, command: str) -> Path:
    """`runs/<command>-<data folder name>-<time>`: where a run goes without `--out`."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{command}-{data.resolve().name or 'data'}-{stamp}"


def config_from(cls: type[C], params: Mapping[str, Any], **changes: Any) -> C:
    """The run config `cls` from a command's parameters (``locals()`` on its first line).

    A command names its parameters as the config names its fields (the flags are declared apart
    from the names), so every parameter that is a field goes over as it is; `changes` gives the
    fields whose value the command converts or renames (``out``, ``num_workers``, ...).
    """
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{**{k: v for k, v in params.items() if k in names}, **changes})


def print_int8(extractor: Any) -> None:
    """One line on an int8 run's fidelity to fp32, as measured when its export was made."""
    from transferlab.pipeline._shared import int8_summary

    q = int8_summary(extractor)
    if q:
        out.print(
            f"int8 features: mean cosine to fp32 {q['mean_cosine_to_fp32']:.4f} (worst image "
            f"{q['min_cosine_to_fp32']:.4f}) on {q['fidelity_images']} images "
            f"{q['fidelity_measured_on']}; calibrated on {q['calibration_images']}"
        )


def print_domain(m: dict[str, Any]) -> None:
    """The --target/--remedy lines: the remedy, why, the plain figure, the images used; or
    the advice to try one (val/ drawn, training images photos)."""
    if m.get("remedy_advice"):
        err.print(f"[yellow]advice:[/] {escape(m['remedy_advice'])}")
    if not m.get("domain"):
        return
    d = m["domain"]
    line = f"  remedy [bold]{d['remedy']}[/] ({escape(d['chosen_by'])})"
    if d.get("plain_val_accuracy") is not None:
        line += f"; without it {d['plain_val_accuracy']:.4f} on the same val images"
    out.print(line)
    out.print(f"  images used: {escape(d['images_used'])}")


def print_fit_summary(result: Any) -> None:
    """The short summary `fit`, `finetune` and `demo` end with (skipped files on stderr)."""
    m = result.metrics
    for s in m["skipped"]:
        err.print(f"[yellow]skipped[/] {escape(s['path'])}: {escape(s['reason'])}")
    if m.get("multi_label"):
        out.print(
            f"[bold]{m['backbone']} / {m['layer']}[/] multi-label probe on {len(m['classes'])} labels"
        )
        out.print(f"  train {m['n_train']}  val {m['n_val']}  skipped {m['n_skipped']}")
        out.print(
            f"  [bold green]val mAP {m['mAP']:.4f}[/]  micro F1 {m['f1_micro']:.4f}  macro F1 {m['f1_macro']:.4f}"
            f"  (thresholds tuned on val; micro F1 at 0.5: {m['at_threshold_0.5']['f1_micro']:.4f})"
        )
    else:
        if m.get("method") == "finetune":
            head = f"[bold]{m['backbone']}[/] fine-tuned on {len(m['classes'])} classes"
        else:
            head = f"[bold]{m['backbone']} / {m['layer']}[/] + {m['classifier']} probe on {len(m['classes'])} classes"
        out.print(head)
        counts = f"  train {m['n_train']}  val {m['n_val']}"
        counts += f"  test {m['n_test']}" if m.get("n_test") else ""
        out.print(counts + f"  skipped {m['n_skipped']}")
        out.print(
            f"  [bold green]val accuracy {m['accuracy']:.4f}[/]  balanced {m['balanced_accuracy']:.4f}  "
            f"log loss {m['log_loss']:.4f}"
        )
        if m.get("probe_val_score") is not None:
            out.print(f"  linear probe on the same validation images: {m['probe_val_score']:.4f}")
        if "test" in m:
            out.print(f"  test accuracy {m['test']['accuracy']:.4f}")
        print_domain(m)
        if m.get("int8"):
            q = m["int8"]
            out.print(
                f"  int8 features: mean cosine to fp32 {q['mean_cosine_to_fp32']:.4f} on "
                f"{q['fidelity_images']} training images {q['fidelity_measured_on']}"
            )
            if "probe_agreement_val" in q:
                out.print(
                    f"  the probe on int8 vs fp32 features of the val images: same answer for "
                    f"{q['probe_agreement_val']:.1%} (val accuracy with fp32 features "
                    f"{q['val_accuracy_same_probe_fp32_features']:.4f})"
                )
        if "stage_seconds" in m:
            st = m["stage_seconds"]
            out.print(
                f"  time {m['seconds']:.1f} s: extraction {st['extract']:.1f} s ({m['n_cached']} cached), "
                f"probe {st['probe']:.2f} s"
            )
        else:
            out.print(
                f"  time {m['seconds']:.1f} s, {m['epochs_run']} epochs, best epoch {m['best_epoch']}"
            )
    if m.get("leakage"):
        err.print(f"[yellow]leakage:[/] {escape(m['leakage'])}")
    out.print(f"  model:  {result.model_dir}")
    out.print(f"  report: {result.report}")
