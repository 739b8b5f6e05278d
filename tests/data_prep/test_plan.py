"""The preprocessing plan is resolved by one rule: the build command and a training config give
the same plan for every dataset layout, and it is written into the manifest."""

from __future__ import annotations

import json

import pytest

from data_prep import build_shards as bs
from data_prep.layouts import LAYOUTS
from data_prep.plan import MODALITY_DEFAULTS, PreprocessingPlan, plan_options, resolve_plan
from data_prep.synthetic.phantom_layouts import write_layout
from lesionjax.core.windows import parse_windows

# The synthetic writer of each registered layout ("phantom" is the pairs layout's other name,
# lesjak_multi reads the lesjak folders).
WRITER = {name: name for name in LAYOUTS} | {"phantom": "pairs", "lesjak_multi": "lesjak"}
MR_LAYOUTS = {"atlas2", "lesjak", "lesjak_multi"}
SHAPE, SPACING = (32, 32, 6), (7.2, 7.2, 24.0)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    roots = {}
    for writer in sorted(set(WRITER.values())):
        root = tmp_path_factory.mktemp(writer)
        roots[writer] = write_layout(writer, root, 2, seed=4, shape=SHAPE, spacing=SPACING)
    return roots


def _config(name, src, out):
    from lesionjax.config_defaults import segmentation_config

    c = segmentation_config()
    c.data.source = "folder"
    c.data.dataset = name
    c.data.raw_dir = str(src)
    c.data.shards_dir = str(out)
    c.data.prep_workers = 1
    c.data.allow_skips = True
    return c


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_build_command_and_training_config_resolve_the_same_plan(name, written, tmp_path):
    from lesionjax.tasks.data import build_config_shards

    src = written[WRITER[name]]
    code = bs.main(
        ["--dataset", name, "--src", str(src), "--out", str(tmp_path / "cli")]
        + ["--workers", "1", "--no-progress", "--allow-skips"]
    )
    assert code == 0
    from_cli = json.loads((tmp_path / "cli" / bs.MANIFEST).read_text())["plan"]
    shards = build_config_shards(_config(name, src, tmp_path / "cfg"), tmp_path, progress=False)
    assert shards.plan == from_cli
    modality = "MR" if name in MR_LAYOUTS else "CT"
    expected = {"instance2022": ("brain", "subdural", "wide")}.get(
        name, MODALITY_DEFAULTS[modality]["windows"]
    )
    assert from_cli["modality"] == modality
    assert from_cli["windows"] == [list(w) for w in parse_windows(expected)]
    assert from_cli["dataset"] == name
    assert from_cli["size"] is None and from_cli["spacing"] is None
    assert PreprocessingPlan.from_dict(from_cli).to_dict() == from_cli


def test_options_override_dataset_defaults_which_override_modality_defaults():
    plan = resolve_plan("instance2022", "CT", {}, LAYOUTS["instance2022"].plan_defaults)
    assert plan.windows == tuple(parse_windows(["brain", "subdural", "wide"]))
    plan = resolve_plan(
        "instance2022",
        "CT",
        {"windows": ["ich"], "size": 64},
        LAYOUTS["instance2022"].plan_defaults,
    )
    assert plan.windows == tuple(parse_windows(["ich"])) and plan.size == (64, 64)
    assert resolve_plan("atlas2", "MR", {}).windows == ((0.0, 1.0),)


def test_config_options_leave_unset_values_to_the_defaults():
    from lesionjax.config_defaults import segmentation_config

    d = segmentation_config().data
    assert plan_options(d) == {}
    d.windows = ("brain",)
    d.size = 128
    d.normalize_method = "zscore"
    assert plan_options(d) == {"windows": ("brain",), "size": 128, "normalize_method": "zscore"}


def test_a_config_setting_wins_over_the_dataset_default_on_the_command_line_too(written, tmp_path):
    src = written["instance2022"]
    config = tmp_path / "exp.py"
    config.write_text(
        "from lesionjax.config_defaults import segmentation_config\n"
        "def get_config(arg=None):\n"
        "    c = segmentation_config()\n"
        "    c.data.dataset = 'instance2022'\n"
        "    c.data.windows = ('ich',)\n"
        "    return c\n"
    )
    out = tmp_path / "out"
    code = bs.main(
        ["--config", str(config), "--src", str(src), "--out", str(out), "--no-progress"]
        + ["--workers", "1", "--allow-skips"]
    )
    assert code == 0
    plan = json.loads((out / bs.MANIFEST).read_text())["plan"]
    assert plan["windows"] == [[-50.0, 150.0]]
