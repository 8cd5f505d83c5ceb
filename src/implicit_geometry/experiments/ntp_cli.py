"""``igeom run ntp``."""

from __future__ import annotations

import click

from implicit_geometry.experiments.cli_common import common_run_options, emit_summary


@click.command("ntp")
@click.option("--corpus", default="synthetic", show_default=True, help="synthetic, shakespeare (see `igeom ntp fetch-shakespeare`) or a text file.")
@click.option("--data-dir", default="data/shakespeare", show_default=True, help="Folder of the Shakespeare texts.")
@click.option("--tokenizer", default="char", show_default=True, help="char or word.")
@click.option("--context", type=int, default=0, show_default=True, help="Context length T (0: 3 for text, 2 for synthetic; at T=8 most contexts occur once and a small model stays far from the entropy).")
@click.option("--max-chars", type=int, default=200000, show_default=True, help="Characters of text used.")
@click.option("--dim", type=int, default=64, show_default=True)
@click.option("--layers", type=int, default=2, show_default=True)
@click.option("--heads", type=int, default=4, show_default=True)
@click.option("--steps", type=int, default=1200, show_default=True, help="Transformer training steps (AdamW).")
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--lr", type=float, default=3e-3, show_default=True)
@click.option("--measure-contexts", type=int, default=300, show_default=True, help="Most frequent contexts whose Gram is measured.")
@click.option("--bilinear-steps", type=int, default=6000, show_default=True, help="Log-bilinear model steps (0 skips it).")
@click.option("--records", type=int, default=30, show_default=True)
@common_run_options
def command(corpus, data_dir, tokenizer, context, max_chars, dim, layers, heads, steps, batch_size, lr, measure_contexts,
            bilinear_steps, records, seeds, first_seed, device, out, resume, as_json, quiet) -> None:
    """Predict the NTP geometry of a corpus and compare a trained causal transformer (and the log-bilinear model) with it."""
    from implicit_geometry.experiments.ntp import NtpConfig, run_ntp

    if resume is not None:
        emit_summary(run_ntp(resume=resume, progress=not quiet), as_json)
        return
    config = NtpConfig(corpus=corpus, data_dir=data_dir, tokenizer=tokenizer, context=context, max_chars=max_chars, dim=dim,
                       layers=layers, heads=heads, steps=steps, batch_size=batch_size, lr=lr, measure_contexts=measure_contexts,
                       bilinear_steps=bilinear_steps, bilinear_direction_steps=max(0, bilinear_steps - 200), records=records, seeds=seeds, first_seed=first_seed, device=device)
    emit_summary(run_ntp(config, out, progress=not quiet), as_json)
