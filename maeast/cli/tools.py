"""`maeast embed`, `maeast predict`, `maeast convert-official` and `maeast export onnx`: thin commands over
maeast.inference and maeast.convert.

Registered as top-level commands by `register(app)` (maeast/cli/__init__.py).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from maeast.cli.common import console, err_console, friendly, new_app
from maeast.errors import MaeastError


@friendly
def embed_command(
    audio: Path = typer.Argument(..., help="An audio file (any format, rate and channel count maeast reads) or a "
                                 "folder: every audio file below it."),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="An encoder: RUN/encoder, a run or checkpoint folder, "
                                    "a `maeast convert-official` folder, or a fine-tuned classifier folder."),
    out: Path = typer.Option(..., "--out", "-o", help="FILE.safetensors (tensors clip/KEY, tokens/KEY) or FILE.npy "
                             "(rows in file order, keys in the sidecar FILE.json)."),
    tokens: bool = typer.Option(False, "--tokens", help="Also write per-token embeddings."),
    layer: int | None = typer.Option(None, "--layer", help="Transformer block 1..depth (or -1 for the last block); "
                                     "default: the encoder output."),
    layers: str | None = typer.Option(None, "--layers", help="all: every block's embeddings, stacked [L, ...] "
                                      "(the inputs of a SUPERB-style weighted sum of layers)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Chunks encoded together."),
    chunk_seconds: float | None = typer.Option(None, "--chunk-seconds", help="Longest piece encoded at once "
                                               "(default: the clip length the encoder was pretrained on)."),
    context_seconds: float | None = typer.Option(None, "--context-seconds", help="Overlap of consecutive pieces: "
                                                 "the context each sees on either side of the tokens it gives "
                                                 "(default: a tenth of a piece; 0: none)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ..."),
) -> None:
    """Clip embeddings (the mean over real tokens) and, with --tokens, token embeddings of audio files."""
    from maeast.inference import embed_files, save_embeddings
    if layers is not None and (layers != "all" or layer is not None):
        raise MaeastError(f"--layers {layers!r}: give --layers all (every block's embeddings) or --layer N, not both")
    result = embed_files(checkpoint, audio, tokens=tokens, layer=layers or layer, batch_size=batch_size,
                         chunk_seconds=chunk_seconds, context_seconds=context_seconds, device=device)
    written = save_embeddings(result, out)
    for key, reason in result.skipped:
        err_console.print(f"[yellow]skipped[/] {key}: {reason}", highlight=False, soft_wrap=True)
    audio_s = sum(result.seconds)
    console.print(f"embedded {len(result.keys)} file(s), {audio_s:.1f} s of audio, in {result.wall_seconds:.1f} s "
                  f"({audio_s / max(result.wall_seconds, 1e-9):.0f}x real time); skipped {len(result.skipped)}; "
                  f"wrote {', '.join(map(str, written))}", highlight=False, soft_wrap=True)


@friendly
def convert_official_command(
    ckpt: Path = typer.Argument(..., help="A published MAE-AST fairseq checkpoint, e.g. "
                                "chunk_patch_75_12LayerEncoder.pt or random_frame_75_12LayerEncoder.pt."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for encoder.safetensors + encoder.json (the export "
                             "`maeast embed` and fine-tuning read) and model.safetensors + model.json."),
) -> None:
    """Convert an official MAE-AST checkpoint into maeast's exported encoder (every tensor mapped by name and
    shape; anything that cannot be represented is refused)."""
    from maeast.convert import convert_official
    done = convert_official(ckpt, out)
    cfg = done.config
    table = Table(title=f"converted {ckpt.name}")
    table.add_column("field")
    table.add_column("value")
    for name, value in (("tokens", f"{cfg.patch_time} frames x {cfg.patch_freq} bins"),
                        ("encoder", f"{cfg.depth} x {cfg.dim} ({cfg.heads} heads, FFN {cfg.ffn_dim}, "
                                    f"{'pre' if cfg.pre_norm else 'post'}-LN)"),
                        ("decoder", f"{cfg.decoder_depth} x {cfg.decoder_dim}"),
                        ("tensors mapped", str(done.tensors)),
                        ("checked, left out", ", ".join(done.dropped) or "-"),
                        ("positions", f"the checkpoint's own tables, first {cfg.stored_positions} rows (they differ "
                                      f"from exact sinusoids)" if cfg.stored_positions else "exact sinusoids"),
                        ("source dtype", done.source_dtype), ("updates", str(done.step))):
        table.add_row(name, value)
    console.print(table)
    console.print(f"wrote {done.out}/encoder.safetensors, encoder.json, model.safetensors, model.json",
                  highlight=False, soft_wrap=True)


@friendly
def export_onnx_command(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="An encoder (RUN/encoder, a run or checkpoint folder, a "
                                    "`maeast convert-official` folder) or, with --classifier, a fine-tuned classifier."),
    out: Path = typer.Option(..., "--out", "-o", help="The ONNX file to write."),
    classifier: bool = typer.Option(False, "--classifier", help="Export the fine-tuned classifier (fbank -> logits) "
                                    "instead of the encoder (fbank -> tokens, clip embedding)."),
) -> None:
    """An ONNX graph of a saved model, fbank frames [B, T, F] in, for onnxruntime and other runtimes."""
    from maeast.inference.onnx import export_onnx
    meta = export_onnx(checkpoint, out, classifier)
    console.print(f"wrote {out}: fbank [batch, frames, {meta['features']['n_mels']}] -> {', '.join(meta['outputs'])}; "
                  f"the fbank recipe and {'labels' if classifier else 'token geometry'} are in its metadata (\"maeast\")",
                  highlight=False, soft_wrap=True)


@friendly
def predict_command(
    audio: Path = typer.Argument(..., help="An audio file (any format maeast reads) or a folder: every audio file below it."),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A fine-tuned classifier: RUN/fold{k}/classifier, "
                                    "RUN/main/classifier, or a run folder with one classifier."),
    top: int = typer.Option(5, "--top", "-k", help="Labels shown per file and window."),
    hop_seconds: float | None = typer.Option(None, "--hop-seconds", help="Between window starts (default: half "
                                             "the classifier's clip length)."),
    out: Path | None = typer.Option(None, "--json", help="Also write every file's and window's top labels here."),
    windows: bool = typer.Option(False, "--windows", help="Show every window's top label too."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ..."),
) -> None:
    """Top labels of a fine-tuned classifier for audio files of any length (sliding windows, then their mean)."""
    from maeast.files import write_json
    from maeast.inference.predict import predict_files
    result = predict_files(checkpoint, audio, hop_seconds, device=device)
    table = Table(title=f"{'sigmoid' if result.multi_label else 'softmax'} scores, mean over windows of "
                        f"{result.window_seconds:g} s every {result.hop_seconds:g} s")
    for column in ("file", "seconds", f"top {top}"):
        table.add_column(column)
    for f in result.files:
        table.add_row(f.key, f"{f.seconds:.2f}", ", ".join(f"{label} {score:.2f}" for label, score in
                                                          result.top(f.scores, top)))
        for start, end, scores in f.windows if windows else ():
            label, score = result.top(scores, 1)[0]
            table.add_row("", f"{start:.2f}-{end:.2f}", f"{label} {score:.2f}")
    console.print(table)
    for key, reason in result.skipped:
        err_console.print(f"[yellow]skipped[/] {key}: {reason}", highlight=False, soft_wrap=True)
    if out is not None:
        write_json(out, result.to_dict(top))
        console.print(f"wrote {out}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add embed and convert-official as top-level commands of the `maeast` app, and `maeast export onnx`."""
    app.command("embed")(embed_command)
    app.command("convert-official")(convert_official_command)
    app.command("predict")(predict_command)
    export = new_app("Export a saved model for other runtimes.")
    export.command("onnx")(export_onnx_command)
    app.add_typer(export, name="export")
