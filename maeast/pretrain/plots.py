"""Pictures of a run: the loss curves from its JSONL log, and what the model does with one clip.

    plot_run("runs/demo")                                   # -> runs/demo/curves.png
    visualize("runs/demo", "clip.flac", "clip.png")         # input fbank | mask | reconstruction

matplotlib with the Agg backend: no display needed.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from maeast.artifacts import features_of, load_model  # noqa: E402
from maeast.audio import AudioError, load_clip  # noqa: E402
from maeast.train.logging import read_log  # noqa: E402
from maeast.errors import MaeastError  # noqa: E402
from maeast.features import fbank  # noqa: E402
from maeast.model import unpatchify  # noqa: E402


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Training and held-out MSE and InfoNCE with their baselines, the learning rate, and the online probe's
    accuracy beside the fbank-statistics baseline (when the run probed) -> PNG."""
    run_dir = Path(run_dir)
    records = read_log(run_dir)
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    probes = [r for r in records if r.get("kind") == "probe"]
    if not train:
        raise MaeastError(f"{run_dir / 'log.jsonl'} has no training steps; give the folder of a `maeast pretrain` run")
    out = Path(out) if out else run_dir / "curves.png"
    fig, axes = plt.subplots(1, 4 if probes else 3, figsize=(20 if probes else 15, 4.2))
    for ax, part, baseline, label in ((axes[0], "mse", "mse_zero", "predicting zeros"),
                                      (axes[1], "infonce", "infonce_chance", "chance: ln(masked tokens)")):
        _line(ax, train, part, "train", color="tab:blue", alpha=0.8)
        _line(ax, evals, part, "held-out", color="tab:orange", marker="o")
        _line(ax, evals, baseline, f"held-out, {label}", color="gray", linestyle="--")
        ax.set_title(f"{part.upper() if part == 'mse' else 'InfoNCE'} on masked tokens")
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    _line(axes[2], train, "lr", "learning rate", color="tab:green")
    axes[2].set_title("learning rate")
    axes[2].set_xlabel("step")
    axes[2].grid(alpha=0.3)
    if probes:
        _probe_panel(axes[3], probes)
    fig.suptitle(str(run_dir))
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _probe_panel(ax, probes: list[dict]) -> None:
    """The online probe's test accuracy over steps, the fbank-statistics baseline dashed beside each probe."""
    percent = [{k: 100 * v if k in PROBE_KEYS else v for k, v in r.items()} for r in probes]
    for key, color in (("linear", "tab:red"), ("knn", "tab:purple")):
        _line(ax, percent, key, f"{key} probe, frozen encoder", color=color, marker="o")
        _line(ax, percent, f"fbank_{key}", f"{key} probe, fbank mean+std", color=color, linestyle="--")
    ax.set_title(f"online probe: test accuracy ({probes[-1].get('clips', '?')} clips)")
    ax.set_xlabel("step")
    ax.set_ylabel("%")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


PROBE_KEYS = ("linear", "knn", "fbank_linear", "fbank_knn")


def _line(ax, records: list[dict], key: str, label: str, **style) -> None:
    points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    if points:
        ax.plot(*zip(*points), label=label, **style)


@torch.no_grad()
def reconstruct(checkpoint: str | Path, audio: str | Path, seed: int = 0, max_seconds: float | None = None) -> dict:
    """One clip through a checkpoint's model: input, mask and reconstruction as [time, mel] images."""
    model, meta = load_model(checkpoint)
    preset = features_of(meta)
    try:
        clip = load_clip(Path(audio), 16000)
    except (AudioError, OSError) as e:
        raise MaeastError(f"{audio}: cannot read it as audio ({e})") from None
    wave = torch.from_numpy(clip.waveform)
    seconds = max_seconds or meta["pretraining"].get("max_seconds", 10.0)
    wave = wave[: round(seconds * 16000)]
    x = fbank(wave, 16000, preset)[None]  # [1, T, F]
    cfg = model.cfg
    if x.shape[1] < cfg.patch_time:
        raise MaeastError(f"{audio} is too short: {x.shape[1]} frames, one token needs {cfg.patch_time}")
    out = model(x, None, torch.Generator().manual_seed(seed))
    tokens = model.encoder.tokenize(x)
    patches = tokens.patches  # [1, N, P] the input as the model sees it
    filled = patches.scatter(1, out.ids_masked[..., None].expand(-1, -1, patches.shape[-1]), out.recon.float())
    mask = out.mask[..., None].expand_as(patches)  # [1, N, P]
    image = lambda t: unpatchify(t, out.grid, cfg.patch_time, cfg.patch_freq)[0, :, :cfg.n_mels]  # noqa: E731
    real = ~out.target_pad
    mse = float((out.recon.float() - out.target.float()).square().mean(-1)[real].mean())
    zero = float(out.target.float().square().mean(-1)[real].mean())
    return {"input": image(patches), "mask": image(mask), "reconstruction": image(filled), "mse": mse,
            "mse_zero": zero, "seconds": x.shape[1] * preset.frame_shift_ms / 1000, "step": meta["pretraining"]["step"]}


def visualize(checkpoint: str | Path, audio: str | Path, out: str | Path, seed: int = 0,
              max_seconds: float | None = None) -> Path:
    """Input fbank, the mask over it, and the reconstruction (visible input + predicted patches) -> PNG."""
    r = reconstruct(checkpoint, audio, seed, max_seconds)
    fig, axes = plt.subplots(3, 1, figsize=(12, 9), sharex=True)
    low, high = float(r["input"].min()), float(r["input"].max())
    masked_view = r["input"].masked_fill(r["mask"] > 0, float("nan"))
    panels = (("input fbank (normalized as the model sees it)", r["input"]),
              ("mask: masked patches blank", masked_view),
              (f"reconstruction: visible input + predicted masked patches (masked MSE {r['mse']:.3f}, "
               f"zeros {r['mse_zero']:.3f})", r["reconstruction"]))
    for ax, (title, img) in zip(axes, panels):
        shown = ax.imshow(img.T.numpy(), origin="lower", aspect="auto", vmin=low, vmax=high, cmap="magma",
                          interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("mel bin")
    axes[-1].set_xlabel("frame (10 ms)")
    fig.colorbar(shown, ax=axes, shrink=0.6)
    fig.suptitle(f"{Path(audio).name}, {r['seconds']:.1f} s, step {r['step']}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
