"""model.views: each clip tokenized once and masked K times. K = 1 is today's step bitwise (the model and a whole
run against MAEAST.forward as it was); the views' masks are independent draws, each a function of the
micro-batch's generator and the view; the loss is the views' mean; the loader reads batch / K clips; a run with
K > 1 resumes bitwise, and on another worker layout continues the same curve; bad values are one-line errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from maeast.errors import MaeastError
from maeast.model import MAEAST, build_model, make_config
from maeast.model.decoder import gather_tokens
from maeast.model.flops import forward_flops, pretrain_flops, step_flops
from maeast.model.losses import mae_loss
from maeast.model.mae_ast import MAEOutput, view_generators, view_masks
from maeast.model.masking import MASKS
from maeast.pretrain import load_config, pretrain
from maeast.train.logging import read_log
from tests.conftest import make_demo_shards, step_keys

MASK_CASES = [
    ("random", {}),
    ("chunk", {}),
    ("tf", {}),
    ("chunk_official", {}),
    ("retain_spans", {"patch_time": 2, "patch_freq": 128, "span_prob": 0.3}),
    ("mask_spans", {"patch_time": 2, "patch_freq": 128}),
]
SHORT = ["schedule.steps=6", "schedule.warmup_steps=2", "data.batch_size=4", "optim.global_batch=8",
         "eval.every=3", "eval.batches=2", "run.save_every_steps=3", "run.log_every=1", "run.trace_keys=true"]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def clips(B: int = 3, T: int = 160, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-mel-like features [B, T, 128] and a padding mask (the later clips shorter)."""
    g = gen(seed)
    x = torch.linspace(-2.0, -8.0, 128)[None, None, :] + 1.5 * torch.randn(B, T, 128, generator=g) - 4.0
    lengths = torch.tensor([T - 30 * b for b in range(B)])
    return x, torch.arange(T)[None, :] >= lengths[:, None]


def todays_forward(self, features, padding_mask=None, generator=None, views=None) -> MAEOutput:
    """MAEAST.forward as it was before model.views (commit ee6318d), line for line, on the model's own parts."""
    tokens = self.encoder.tokenize(features, padding_mask)
    m = self.mask_fn(tokens.rows_real, tokens.grid, generator=generator)
    x = self.encoder.add_positions(self.input_dropout(tokens.x))  # [B, N, D]
    latent, _ = self.encoder.transformer(gather_tokens(x, m.ids_keep), m.keep_pad if tokens.padded else None,
                                         generator)  # [B, K, D]
    recon, classify = self.decoder(latent, m, tokens.padded, generator)  # [B, M, P] each
    target = gather_tokens(tokens.patches, m.ids_masked)  # [B, M, P]
    loss, parts = mae_loss(recon, classify, target, ~m.masked_pad, self.cfg.mse_weight,
                           self.cfg.infonce_weight, self.cfg.norm_targets)
    return MAEOutput(loss, parts, m.mask, m.ids_masked, m.masked_pad, recon, classify, target, tokens.grid)


# ---- K = 1 is today's step -------------------------------------------------------------------------

@pytest.mark.parametrize("mask_type,extra", MASK_CASES)
@pytest.mark.parametrize("padded", [False, True])
def test_one_view_is_todays_forward_bitwise(mask_type, extra, padded):
    """Dropout, layerdrop and the masks on: the same loss, outputs and gradients, bit for bit."""
    x, pad = clips()
    pad = pad if padded else None
    results = []
    for forward in (MAEAST.forward, todays_forward):
        torch.manual_seed(0)
        model = build_model("tiny", mask_type=mask_type, layerdrop=0.3, decoder_layerdrop=0.3, **extra)
        torch.manual_seed(1)  # dropout's global RNG
        out = forward(model, x, pad, gen(2))
        out.loss.backward()
        results.append((out, {n: p.grad for n, p in model.named_parameters()}))
    (new, new_grads), (old, old_grads) = results
    assert torch.equal(new.loss, old.loss)
    for name in ("mask", "ids_masked", "target_pad", "recon", "classify", "target"):
        assert torch.equal(getattr(new, name), getattr(old, name)), name
    for n, g in new_grads.items():  # a layer that layerdrop skipped has none, in both
        assert (g is None and old_grads[n] is None) or torch.equal(g, old_grads[n]), n


def test_one_view_flops_are_todays():
    for preset in ("tiny", "small_frame", "base"):
        cfg = make_config(preset)
        assert step_flops(cfg, 4, 998) == 3 * 4 * sum(forward_flops(cfg, 998).values())
        assert pretrain_flops(cfg, [998, 500]) == 3 * (sum(forward_flops(cfg, 998).values())
                                                      + sum(forward_flops(cfg, 500).values()))


def test_views_flops_count_the_projection_once():
    cfg, cfg4 = make_config("small_frame"), make_config("small_frame", views=4)
    parts = forward_flops(cfg, 200)
    rest = sum(parts.values()) - parts["projection"]
    assert step_flops(cfg4, 2, 200) == 3 * 2 * (parts["projection"] + 4 * rest)
    assert pretrain_flops(cfg4, [200, 200]) == step_flops(cfg4, 2, 200)


# ---- the views' masks ------------------------------------------------------------------------------

@pytest.mark.parametrize("mask_type,extra", MASK_CASES)
def test_each_view_is_the_mask_of_its_own_generator(mask_type, extra):
    """View v's rows are exactly mask_fn on the v-th generator drawn from the micro-batch's; the stack is
    view-major; the same micro-batch seed gives the same views, another seed other ones."""
    model = build_model("tiny", mask_type=mask_type, views=3, **extra)
    x, pad = clips()
    tokens = model.encoder.tokenize(x, pad)
    m, _ = view_masks(model.mask_fn, tokens.rows_real, tokens.grid, 3, gen(5))
    B = x.shape[0]
    for v, g in enumerate(view_generators(gen(5), 3)):
        alone = model.mask_fn(tokens.rows_real, tokens.grid, generator=g)
        assert torch.equal(m.mask[v * B:(v + 1) * B], alone.mask)
        assert torch.equal(m.ids_restore[v * B:(v + 1) * B], alone.ids_restore)
        real = ~m.masked_pad[v * B:(v + 1) * B, :alone.ids_masked.shape[1]]
        assert torch.equal(m.ids_masked[v * B:(v + 1) * B, :alone.ids_masked.shape[1]][real], alone.ids_masked[real])
    again, _ = view_masks(model.mask_fn, tokens.rows_real, tokens.grid, 3, gen(5))
    other, _ = view_masks(model.mask_fn, tokens.rows_real, tokens.grid, 3, gen(6))
    assert torch.equal(again.mask, m.mask) and not torch.equal(other.mask, m.mask)
    views = m.mask.view(3, B, -1)
    assert not torch.equal(views[0], views[1]) and not torch.equal(views[1], views[2])
    # every view masks each clip's own count of its real tokens (the span masks: a count of its own per view)
    counts = views.sum(-1)  # [V, B]
    if mask_type not in ("retain_spans", "mask_spans"):
        assert torch.equal(counts, counts[:1].expand_as(counts))


@pytest.mark.parametrize("mask_type", ["random", "chunk", "tf"])
def test_views_are_independent_draws(mask_type):
    """Two views of the same clips overlap as two independent masks do: as much as the masks of two different
    clips in one view (for random: ratio^2 of the tokens masked in both, 0.5625, against 0.75 for a copy), and
    their masked indicators correlate as two clips' do (not at all, for random)."""
    ratio, B, V = 0.75, 64, 4
    model = build_model("tiny", mask_type=mask_type, views=V)
    tokens = model.encoder.tokenize(clips(B, 160)[0])
    m, _ = view_masks(model.mask_fn, tokens.rows_real, tokens.grid, V, gen(3))
    views = m.mask.view(V, B, -1)  # [V, B, N]
    across_views = torch.stack([(views[a] * views[b]).mean() for a in range(V) for b in range(a + 1, V)]).mean()
    across_clips = (views * views.roll(1, dims=1)).mean()  # clip b against clip b - 1, in the same view
    assert float(across_clips) == pytest.approx(float(across_views), abs=0.02)
    if mask_type == "random":
        assert float(across_views) == pytest.approx(ratio ** 2, abs=0.02)
    corr = lambda a, b: float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])  # noqa: E731
    # chunk and tf masks favour some grid places (a token's chance depends on where it sits), so any two
    # independent masks correlate a little: as two different clips' masks do
    assert corr(views[0], views[1]) == pytest.approx(corr(views[0], views[0].roll(1, dims=0)), abs=0.05)
    if mask_type == "random":
        assert abs(corr(views[0], views[1])) < 0.05


def test_view_generators_follow_the_micro_batch_generator():
    """Seeds drawn from the micro-batch's generator: a fresh one at the same seed gives the same views; the
    global RNG (no generator) stays the global RNG for every view."""
    a = [g.initial_seed() for g in view_generators(gen(11), 4)]
    assert a == [g.initial_seed() for g in view_generators(gen(11), 4)]
    assert len(set(a)) == 4 and a != [g.initial_seed() for g in view_generators(gen(12), 4)]
    assert view_generators(None, 3) == [None, None, None]


def test_the_loss_is_the_mean_of_the_views_losses():
    """No dropout: the K-view forward's loss is the mean of K one-view forwards, each on its view's generator
    (every view masks as many tokens, so the token mean is the views' mean); the clips are tokenized once."""
    model = build_model("tiny", views=3, dropout=0.0, attn_dropout=0.0, input_dropout=0.0, layerdrop=0.0)
    x, pad = clips()
    out = model(x, pad, gen(4))
    B = x.shape[0]
    assert out.recon.shape[0] == 3 * B and out.target.shape[0] == 3 * B
    singles = [model(x, pad, g, 1) for g in view_generators(gen(4), 3)]
    assert out.loss.item() == pytest.approx(sum(s.loss.item() for s in singles) / 3, rel=1e-5)
    for v, s in enumerate(singles):
        assert torch.equal(out.mask[v * B:(v + 1) * B], s.mask)
        assert torch.equal(out.target[v * B:(v + 1) * B], s.target)  # the same clip, tokenized once
        torch.testing.assert_close(out.recon[v * B:(v + 1) * B], s.recon)


@pytest.mark.parametrize("mask_type,extra", MASK_CASES)
def test_every_mask_type_trains_with_views(mask_type, extra):
    model = build_model("tiny", mask_type=mask_type, views=2, **extra)
    x, pad = clips()
    out = model(x, pad, gen())
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# ---- config --------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2"])
def test_views_must_be_a_positive_integer(bad):
    with pytest.raises(MaeastError, match=r"^model config: views must be an integer >= 1") as e:
        make_config("tiny", views=bad)
    assert "\n" not in str(e.value)


def test_batch_sizes_must_divide_by_views(tmp_path):
    with pytest.raises(MaeastError, match=r"^optim.global_batch 8 is not a multiple of model.views 3") as e:
        load_config("pretrain_tiny", ["model.views=3", "data.batch_size=4", "optim.global_batch=8"])
    assert "\n" not in str(e.value)
    with pytest.raises(MaeastError, match=r"^data.batch_size 2 is not a multiple of model.views 4"):
        load_config("pretrain_tiny", ["model.views=4", "data.batch_size=2", "optim.global_batch=8"])
    cfg = load_config("pretrain_tiny", ["model.views=4", "data.batch_size=8", "optim.global_batch=16"])
    assert cfg.loader_config().batch_size == 2 and cfg.clips_per_step == 4
    assert cfg.eval_loader_config().batch_size == 8  # held-out batches: clips, one view each
    assert load_config("pretrain_tiny").loader_config() == load_config("pretrain_tiny", ["model.views=1"]).loader_config()
    assert "views" not in make_config("tiny", views=4).to_dict()  # a run choice: the model's records leave it out


# ---- runs ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_demo_shards(tmp_path_factory.getbasetemp() / "views_demo")


def tiny(shards: Path, run_dir: Path, *extra: str):
    return load_config("pretrain_tiny", [*SHORT, f"data.shards=[{shards}]", f"run.dir={run_dir}", *extra])


def train_records(run_dir: Path) -> list[dict]:
    return [r for r in read_log(run_dir) if r["kind"] == "train"]


@pytest.fixture(scope="module")
def two_views(shards, tmp_path_factory):
    """An uninterrupted 6-step run with model.views 2."""
    return pretrain(tiny(shards, tmp_path_factory.mktemp("views2"), "model.views=2"))


@pytest.fixture(scope="module")
def one_view(shards, tmp_path_factory):
    """The same run with no views key."""
    return pretrain(tiny(shards, tmp_path_factory.mktemp("views_default")))


def test_one_view_run_is_todays_run_bitwise(shards, one_view, tmp_path, monkeypatch):
    """A whole run (trainer, accumulation, evaluation) with model.views 1, and with no views key, against the
    same run through MAEAST.forward as it was: the same losses, bit for bit, and no views in the log."""
    explicit = pretrain(tiny(shards, tmp_path / "explicit", "model.views=1"))
    default = one_view
    monkeypatch.setattr(MAEAST, "forward", todays_forward)
    today = pretrain(tiny(shards, tmp_path / "today"))
    assert explicit.losses == default.losses == today.losses
    assert explicit.eval == today.eval
    assert not any("views" in r for r in train_records(explicit.run_dir))


def test_views_run_reads_batch_over_views_clips(two_views, one_view):
    records = train_records(two_views.run_dir)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert all(r["clips"] == 4 and r["views"] == 8 for r in records)  # global batch 8 views = 4 clips x 2
    assert all(r["views_per_s"] == pytest.approx(2 * r["clips_per_s"]) for r in records)
    keys = step_keys(two_views.run_dir)
    assert all(len(keys[s]) == 4 for s in range(1, 7))  # the loader delivered 4 clips a step (2 a micro-batch)
    assert min(two_views.losses[3:]) < two_views.losses[0]
    # held-out batches are the clips of a one-view run, one view each: as many masked tokens
    assert {k: two_views.eval[k] for k in ("clips", "infonce_chance")} == \
        {k: one_view.eval[k] for k in ("clips", "infonce_chance")}


def test_views_run_resumes_bitwise(shards, two_views, tmp_path):
    first = pretrain(tiny(shards, tmp_path, "model.views=2", "run.stop_at=3"))
    second = pretrain(tiny(shards, tmp_path, "model.views=2"), resume=True)
    assert first.losses + second.losses == two_views.losses  # bitwise, step by step
    assert step_keys(tmp_path) == step_keys(two_views.run_dir)
    assert second.eval == two_views.eval
    with pytest.raises(MaeastError, match="model.views is 4, the run has 2"):  # views change the curve
        pretrain(tiny(shards, tmp_path, "model.views=4"), resume=True)


def test_views_run_resumes_bitwise_under_zero2(shards, tmp_path):
    zero2 = Path(__file__).resolve().parents[1] / "launch" / "ds_zero2.json"
    full = pretrain(tiny(shards, tmp_path / "full", "model.views=2"), zero2)
    first = pretrain(tiny(shards, tmp_path / "split", "model.views=2", "run.stop_at=3"), zero2)
    second = pretrain(tiny(shards, tmp_path / "split", "model.views=2"), zero2, resume=True)
    assert first.losses + second.losses == full.losses


def test_views_run_continues_on_another_worker_layout(shards, tmp_path_factory):
    """Saved mid-epoch with 2 loader workers, resumed with 1: the rest of the epoch is re-dealt over the new
    slots (maeast.loaders.elastic) in loader batches of batch / K clips, each step's micro-batch places hold the
    clips they held in the uninterrupted run, and the loss follows its curve."""
    full_dir, split_dir = tmp_path_factory.mktemp("views_w2"), tmp_path_factory.mktemp("views_w2_w1")
    full = pretrain(tiny(shards, full_dir, "model.views=2", "data.num_workers=2"))
    first = pretrain(tiny(shards, split_dir, "model.views=2", "data.num_workers=2", "run.stop_at=2"))
    second = pretrain(tiny(shards, split_dir, "model.views=2", "data.num_workers=1"), resume=True)
    events = [r["message"] for r in read_log(split_dir) if r["kind"] == "event"]
    assert any("re-dealt over 1 x 1" in e for e in events), events  # saved mid-epoch: a re-deal, not a new epoch
    ours, theirs = slot_keys(split_dir), slot_keys(full_dir)
    assert {k: v for k, v in ours.items() if k[0] <= 3} == {k: v for k, v in theirs.items() if k[0] <= 3}
    assert first.losses == full.losses[:2]
    assert second.losses[0] == pytest.approx(full.losses[2], rel=1e-5, abs=1e-6)
    assert all(len(v) == 2 for v in ours.values())  # 2 clips a micro-batch, 2 views each


def slot_keys(run_dir: Path) -> dict[tuple[int, int], list[str]]:
    out: dict[tuple[int, int], list[str]] = {}
    for line in (run_dir / "keys" / "rank0.tsv").read_text().splitlines():
        step, slot, key = line.split("\t")
        out.setdefault((int(step), int(slot)), []).append(key)
    return {k: sorted(v) for k, v in out.items()}


def test_views_is_a_run_choice_of_the_model_not_its_architecture():
    cfg = make_config("tiny", views=2)
    assert dataclasses.replace(cfg, views=1).to_dict() == cfg.to_dict()
    assert set(MASKS) == {name for name, _ in MASK_CASES}  # every mask type is tested with views above


def test_views_refuse_max_tokens_batches():
    # A max_tokens batch holds as many clips as fit, so it has no fixed clip count to split into views.
    with pytest.raises(MaeastError, match=r"^model.views 2 with data.max_tokens") as e:
        load_config("pretrain_patch_chunk", ["model.views=2"])
    assert "\n" not in str(e.value) and "model.views 1" in str(e.value)
    assert load_config("pretrain_patch_chunk", ["model.views=2", "data.max_tokens=null", "data.batch_size=8",
                                                "optim.global_batch=160"]).clips_per_step == 80
