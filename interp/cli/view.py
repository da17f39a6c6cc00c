"""`interp view`: the offline explorer page of a run, an analysis directory or a checkpoint suite."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from interp.cli.checks import check_device
from interp.memory import format_bytes


def cmd_view(args: argparse.Namespace) -> None:
    from tqdm.auto import tqdm

    from interp.view import write_view  # the explorer: imported only by this command
    from interp.view.examples import ExampleInput, LossInput, parse_tokens, read_example_batch

    examples = [*(ExampleInput("--text", text=text) for text in args.text), *(parse_tokens(t) for t in args.tokens),
                *(read_example_batch(args.example_batch) if args.example_batch else [])]

    bars: dict[str, Any] = {}

    def progress(run: str, done: int, total: int) -> None:
        bar = bars.get(run) or bars.setdefault(run, tqdm(total=total, desc=f"attention patterns, {run}", leave=False))
        bar.update(done - bar.n)
        if done == total:
            bar.close()

    loss = LossInput(tuple(args.loss_text), Path(args.loss_batch) if args.loss_batch else None)
    page = write_view(Path(args.dir), device=check_device(args.device), progress=progress, examples=examples,
                      loss=loss, cache=args.cache)
    print(f"wrote {page} ({format_bytes(page.stat().st_size)}); open it in a browser (it works offline)")
    if args.open:
        import webbrowser

        webbrowser.open(page.resolve().as_uri())
