from dataclasses import dataclass, field

import pytest

from maeast.configio import from_dict, merge, parse_overrides, to_dict
from maeast.errors import MaeastError


@dataclass
class Optim:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.98)

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


@dataclass
class Run:
    steps: int = 10
    name: str | None = None
    bf16: bool = False


@dataclass
class Top:
    optim: Optim = field(default_factory=Optim)
    run: Run = field(default_factory=Run)


def test_round_trip_and_overrides():
    cfg = from_dict(Top, merge({"optim": {"lr": 3e-4}}, parse_overrides(["--run.steps", "7", "optim.betas=[0.8, 0.9]",
                                                                        "--run.bf16=true"])))
    assert cfg.optim.lr == 3e-4 and cfg.run.steps == 7 and cfg.optim.betas == (0.8, 0.9) and cfg.run.bf16
    assert from_dict(Top, to_dict(cfg)) == cfg


def test_unknown_key_names_itself():
    with pytest.raises(MaeastError, match="unknown config key 'optim.lrr'"):
        from_dict(Top, {"optim": {"lrr": 1}})
    with pytest.raises(MaeastError, match="unknown config key 'colour'"):
        from_dict(Top, {"colour": 1})


def test_bad_values_are_one_line_errors():
    with pytest.raises(MaeastError, match="lr must be positive"):
        from_dict(Top, {"optim": {"lr": -1}})
    with pytest.raises(MaeastError, match="cannot read 'many' as int"):
        from_dict(Top, {"run": {"steps": "many"}})
    with pytest.raises(MaeastError, match="needs a value"):
        parse_overrides(["--run.steps"])
