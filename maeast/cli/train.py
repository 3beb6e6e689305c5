"""`maeast pretrain`, `maeast plot`, `maeast visualize`: thin commands over maeast.engine.

Registered as top-level commands by `register(app)` (maeast/cli/__init__.py).
"""

from __future__ import annotations

from pathlib import Path

import typer

from maeast.cli.common import console, friendly

EXTRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}


@friendly
def pretrain_command(
    ctx: typer.Context,
    config: str = typer.Option(..., "--config", "-c", help="A shipped config name (pretrain_patch_chunk: the "
                               "paper's main patch model; pretrain_frame_random: its frame model; "
                               "pretrain_patch_random, pretrain_frame_chunk, pretrain_small, pretrain_tiny) or a "
                               "YAML file; docs/recipes.md compares each with the official recipe."),
    deepspeed_config: Path | None = typer.Option(None, "--deepspeed-config", "--deepspeed_config",
                                                 help="ZeRO/precision/offload JSON (launch/ds_zero*.json); "
                                                 "default: ZeRO stage 0, bf16 on CUDA, fp32 on CPU."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in run.dir from its latest checkpoint "
                                "(run.resume must; --run.resume auto: continue it if there is one, else start)."),
) -> None:
    """Pretrain MAE-AST as one process on the DeepSpeed engine. Extra --section.key VALUE arguments override
    the config (e.g. --optim.lr 2e-4 --run.dir runs/mine). For many processes or nodes use
    `deepspeed launch/pretrain.py` (or torchrun). SIGTERM or SIGUSR1 saves a checkpoint after the current step
    and exits 75; --run.resume auto continues it."""
    from maeast.pretrain import load_config, pretrain
    cfg = load_config(config, list(ctx.args))
    result = pretrain(cfg, deepspeed_config_path=deepspeed_config, resume=resume)
    figures = f"step {result.step}, loss {result.losses[-1]:.4f}" if result.losses else f"step {result.step}"
    if result.eval:
        figures += (f", held-out mse {result.eval['mse']:.4f} (zeros {result.eval['mse_zero']:.4f}), "
                    f"infonce {result.eval.get('infonce', float('nan')):.3f} (chance {result.eval['infonce_chance']:.3f})")
    console.print(f"done in {result.seconds:.0f} s: {figures}; encoder: {result.encoder}", highlight=False,
                  soft_wrap=True)


@friendly
def plot_command(
    run_dir: Path = typer.Argument(..., help="The run directory (its log.jsonl)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="PNG to write (default RUN_DIR/curves.png)."),
) -> None:
    """Draw a run's loss curves (training and held-out, with their baselines) and learning rate."""
    from maeast.pretrain.plots import plot_run
    console.print(str(plot_run(run_dir, out)), highlight=False, soft_wrap=True)


@friendly
def visualize_command(
    audio: Path = typer.Argument(..., help="An audio file (any format maeast reads)."),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A run directory (its latest checkpoint) or "
                                    "RUN/checkpoints/step_N."),
    out: Path = typer.Option(..., "--out", "-o", help="PNG to write."),
    seed: int = typer.Option(0, "--seed", help="Seed of the mask."),
    seconds: float | None = typer.Option(None, "--seconds", help="Crop the clip to this many seconds "
                                         "(default: the run's data.max_seconds)."),
) -> None:
    """Draw a clip's input fbank, the mask and the model's reconstruction, one above the other."""
    from maeast.pretrain.plots import visualize
    console.print(str(visualize(checkpoint, audio, out, seed, seconds)), highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add pretrain, plot and visualize as top-level commands of the `maeast` app."""
    app.command("pretrain", context_settings=EXTRA_ARGS)(pretrain_command)
    app.command("plot")(plot_command)
    app.command("visualize")(visualize_command)
