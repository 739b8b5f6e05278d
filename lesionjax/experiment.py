"""One experiment runner: a paper's grid of methods x folds, each a normal run folder, then the
paper's table and figures.

    python -m lesionjax.experiment --config configs/experiments/label_efficient.py \\
        [--workdir DIR] [--config.folds=0,1]

The experiment config names the configs its runs come from (paths relative to the experiment
config's folder, ``file.py:variant``), the overrides for each kind of run, the folds and the
methods (rows of the paper's table, ``METHODS``). The runner plans every job, prints how many
there are and an estimate of the time, then runs them (``lesionjax.jobs``: in order, or
``workers`` at a time in worker processes, each once the jobs it needs are done), one
progress line each:

- ``pretext/<task>``: the pretext runs (``configs/pretext/*.py``) on one shared pool;
  the local contrastive run starts from the global one;
- ``cavity``: the intracranial-cavity models (``configs/cavity.py``), on phantoms of their own
  seed, for the "+ ICM" rows;
- ``runs/<method>/fold<k>``: one segmentation run per method and test fold, all on the same
  shards (``DIR/shards``), the transfer methods starting from their pretext run;
- ``+ ICM`` rows: the ICH-only / Mixed runs re-evaluated with the cavity mask (``eval_icm``);
- ``tsne_pool``: a validation pool (another seed) for the t-SNE figure, and
  ``results/figure5_tsne_<task>.png``: Figure 5 of each pretext model on it.

A job whose result file exists is skipped, so running the same command again resumes. The
outputs go to ``DIR/results/`` (``lesionjax.eval.paper_outputs``): ``table3.md`` / ``.csv``,
``figure3_subtypes.png``, ``figure4_p_values.png``, ``figure5_tsne_<task>.png``, the full
comparison (every metric, Welch tests) in ``comparison/`` and ``experiment.md``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from lesionjax.cli import absl_flags_parser, config_flag_value, config_spec, run_command
from lesionjax.core.errors import ConfigError, UserError
from lesionjax.eval.runs import write_config
from lesionjax.jobs import Job, run_jobs

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default: runs/<config name>).")


@dataclasses.dataclass(frozen=True)
class Method:
    """A row of the label-efficient paper's Table 3."""

    name: str  # shown in the table
    supervision: str
    policy: str = "mixed"  # the segmentation sampling policy (ICH-only: "lesion")
    pretext: str = ""  # the pretext run it starts from (configs/pretext/<pretext>.py)
    init_parts: str = "encoder"
    icm_of: str = ""  # a "+ ICM" row: this method's runs, re-evaluated with the cavity mask


METHODS = {
    "ich_only": Method("ICH-only", "supervised", policy="lesion"),
    "ich_only_icm": Method("ICH-only + ICM", "supervised", icm_of="ich_only"),
    "mixed": Method("Mixed", "supervised"),
    "mixed_icm": Method("Mixed + ICM", "supervised", icm_of="mixed"),
    "context_restoration": Method(
        "Context restoration",
        "self-supervised",
        pretext="context_restoration",
        init_parts="encoder+decoder",
    ),  # fmt: skip
    "global_contrastive": Method(
        "Global contrastive", "self-supervised", pretext="global_contrastive"
    ),
    "local_contrastive": Method(
        "Local contrastive",
        "self-supervised",
        pretext="local_contrastive",
        init_parts="encoder+decoder",
    ),  # fmt: skip
    "binary": Method("Binary", "weakly supervised", pretext="binary"),
    "multilabel_ce": Method("Multi-label CE", "weakly supervised", pretext="multilabel_bce"),
    "multilabel_dice": Method("Multi-label Dice", "weakly supervised", pretext="multilabel_dice"),
}
KINDS = ("label_efficient", "model_comparison")


def load_config_file(spec: str, base: Path):
    """``file.py[:variant]`` (relative to ``base``) -> its ``get_config(variant)``, unlocked."""
    path_text, _, variant = spec.partition(":")
    path = Path(path_text)
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found (from {spec!r})")
    module_spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(variant or None)
    config.unlock()
    return config


def apply_overrides(config, overrides) -> None:
    """``overrides``: (("a.b", value), ...), set in ``config`` (keys must exist)."""
    for key, value in overrides:
        *parents, leaf = str(key).split(".")
        node = config
        for part in parents:
            if part not in node:
                raise ConfigError(f"override {key}={value!r}: the config has no {part!r}")
            node = node[part]
        if leaf not in node:
            raise ConfigError(f"override {key}={value!r}: the config has no {key!r}")
        node[leaf] = tuple(value) if isinstance(value, list) else value


def _method_config(exp, base: Path, workdir: Path, key: str, fold: int):
    method = METHODS[key]
    c = load_config_file(exp.segmentation, base)
    apply_overrides(c, exp.segmentation_overrides)
    c.name = f"{exp.name}_{key}_fold{fold}"
    c.progress = bool(exp.progress)
    c.data.raw_dir = str(workdir / "phantom")  # one phantom set and one shard set for all
    c.data.shards_dir = str(workdir / "shards")
    c.data.test_fold = int(fold)
    c.data.val_fold = (int(fold) + 1) % int(c.data.n_folds)
    c.data.policy = method.policy
    if method.pretext:
        c.train.init_from = str(workdir / "pretext" / method.pretext)
        c.train.init_parts = method.init_parts
    return c


def _pretext_config(exp, base: Path, workdir: Path, task: str):
    variant = f":{exp.pretext_variant}" if exp.pretext_variant else ""
    c = load_config_file(f"{exp.pretext_dir}/{task}.py{variant}", base)
    apply_overrides(c, exp.pretext_overrides)
    c.progress = bool(exp.progress)
    c.data.raw_dir = str(workdir / "pool" / "phantom")
    c.data.shards_dir = str(workdir / "pool" / "shards")
    if task == "local_contrastive":
        c.train.init_from = str(workdir / "pretext" / "global_contrastive")
    return c


def _tsne_pool_config(exp, base: Path, workdir: Path):
    c = load_config_file(exp.pool, base)
    apply_overrides(c, exp.tsne_pool_overrides)
    c.progress = bool(exp.progress)
    return c


def check_experiment(exp) -> list[str]:
    if exp.kind not in KINDS:
        raise ConfigError(f"kind={exp.kind!r}: expected one of {KINDS}")
    if not exp.folds:
        raise ConfigError("folds: empty; give the test folds to run (e.g. 0,1,2)")
    if exp.kind == "model_comparison":
        names = [name for name, _ in exp.models]
        if len(names) < 2 or len(set(names)) != len(names):
            raise ConfigError(f"models: expected two or more distinct names, got {names}")
        return names
    unknown = [m for m in exp.methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"methods: unknown {unknown} (known: {', '.join(METHODS)})")
    for m in exp.methods:
        of = METHODS[m].icm_of
        if of and of not in exp.methods:
            raise ConfigError(f"methods: {m!r} re-evaluates {of!r}, which is not in the grid")
    return list(exp.methods)


def slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_")


def _model_config(exp, base: Path, workdir: Path, spec: str, name: str, fold: int):
    """A model_comparison run: the model's config on the experiment's shared data and split."""
    c = load_config_file(spec, base)
    apply_overrides(c, exp.segmentation_overrides)
    c.name = f"{exp.name}_{slug(name)}_fold{fold}"
    c.progress = bool(exp.progress)
    c.data.raw_dir = str(workdir / "data")
    c.data.shards_dir = str(workdir / "shards")
    c.data.test_fold = int(fold)
    c.data.val_fold = (int(fold) + 1) % int(c.data.n_folds)
    return c


def _run_task(make_config: Callable, folder: Path) -> dict:
    """A job's work: the run of ``make_config()`` in ``folder`` (module level: picklable)."""
    from lesionjax.tasks import run_task

    return run_task(make_config(), folder)


def plan_model_jobs(exp, base: Path, workdir: Path) -> list[Job]:
    """model_comparison: one run per model and test fold, all on the same data and split (the
    first run builds it, the others need that one)."""
    check_experiment(exp)
    jobs: list[Job] = []
    for fold in exp.folds:
        for name, spec in exp.models:
            folder = workdir / "runs" / slug(name) / f"fold{fold}"
            make = functools.partial(_model_config, exp, base, workdir, spec, name, fold)
            jobs.append(Job("segment", f"runs/{slug(name)}/fold{fold}",
                            folder / "eval" / "summary.json",
                            functools.partial(_run_task, make, folder),
                            needs=(jobs[0].name,) if jobs else ()))  # fmt: skip
    return jobs


def _cavity_config(exp, base: Path):
    c = load_config_file(exp.cavity, base)
    apply_overrides(c, exp.cavity_overrides)
    c.progress = bool(exp.progress)
    return c


def plan_jobs(exp, base: Path, workdir: Path) -> list[Job]:
    """Every job of the experiment, in an order they can run in, with what each needs: the
    first pretext run builds the pool the others read, the local contrastive run starts from
    the global one, the first segmentation run builds the shards of all of them, a transfer
    run starts from its pretext run, a "+ ICM" row needs its run and the cavity models."""
    if exp.kind == "model_comparison":
        return plan_model_jobs(exp, base, workdir)
    methods = check_experiment(exp)
    jobs: list[Job] = []

    def task_job(kind, name, done_file, make_config, needs=()):
        folder = workdir / name
        run = functools.partial(_run_task, make_config, folder)
        jobs.append(Job(kind, name, folder / done_file, run, tuple(n for n in needs if n)))

    pretexts = list(dict.fromkeys(METHODS[m].pretext for m in methods if METHODS[m].pretext))
    if "local_contrastive" in pretexts and "global_contrastive" not in pretexts:
        pretexts.insert(pretexts.index("local_contrastive"), "global_contrastive")
    pretexts.sort(key=lambda t: t == "local_contrastive")  # after the global one
    for i, task in enumerate(pretexts):
        needs = [f"pretext/{pretexts[0]}" if i else ""]
        if task == "local_contrastive":
            needs.append("pretext/global_contrastive")
        task_job("pretext", f"pretext/{task}", "pretext.json",
                 functools.partial(_pretext_config, exp, base, workdir, task), needs)  # fmt: skip
    if pretexts and exp.tsne_slices > 0:
        task_job("tsne_pool", "tsne_pool", "pool.json",
                 functools.partial(_tsne_pool_config, exp, base, workdir))  # fmt: skip
        for task in pretexts:
            jobs.append(Job("figure5", f"results/figure5_tsne_{task}.png",
                            workdir / "results" / f"figure5_tsne_{task}.png",
                            functools.partial(_figure5, exp, workdir, task),
                            needs=("tsne_pool", f"pretext/{task}")))  # fmt: skip
    if any(METHODS[m].icm_of for m in methods):
        task_job("cavity", "cavity", "cavity.json", functools.partial(_cavity_config, exp, base))
    cavity = workdir / "cavity"
    first = ""  # the first segmentation run: it builds the shards every run reads
    for fold in exp.folds:
        for m in methods:
            if METHODS[m].icm_of:
                continue
            pretext = METHODS[m].pretext
            task_job("segment", f"runs/{m}/fold{fold}", "eval/summary.json",
                     functools.partial(_method_config, exp, base, workdir, m, fold),
                     [first, f"pretext/{pretext}" if pretext else ""])  # fmt: skip
            first = first or jobs[-1].name
        for m in methods:
            of = METHODS[m].icm_of
            if of:
                folder = workdir / "runs" / of / f"fold{fold}"
                jobs.append(Job("icm", f"runs/{of}/fold{fold} + ICM",
                                folder / "eval_icm" / "summary.json",
                                functools.partial(_reevaluate_icm, exp, folder, cavity),
                                needs=(f"runs/{of}/fold{fold}", "cavity")))  # fmt: skip
    return jobs


def _figure5(exp, workdir: Path, task: str) -> dict:
    """Figure 5 of one pretext model: t-SNE of its bottleneck features on the validation pool
    (the same slices for every model)."""
    from lesionjax.data.shards import ShardSet
    from lesionjax.eval import paper_outputs
    from lesionjax.tasks.pretext import pool_features, pool_slices

    pool = ShardSet.load(workdir / "tsne_pool" / "shards")
    slices = pool_slices(pool, max_slices=int(exp.tsne_slices), seed=0)
    features = pool_features(workdir / "pretext" / task, pool, slices)
    labels = [flags for _, _, flags in slices]
    (workdir / "results").mkdir(parents=True, exist_ok=True)
    path = paper_outputs.plot_figure5(task.replace("_", " "), features, labels,
                                      workdir / "results" / f"figure5_tsne_{task}.png")  # fmt: skip
    return {"slices": len(slices), "figure": str(path)}


def _reevaluate_icm(exp, run_dir: Path, cavity_dir: Path) -> dict:
    from lesionjax.evaluate import reevaluate

    return reevaluate(run_dir, cavity_mask=str(cavity_dir), progress=bool(exp.progress),
                      tsne_slices=0)  # fmt: skip


def _headline(kind: str, result: dict) -> str:
    if kind in ("segment", "icm"):
        return f"test Dice {result.get('mean_dice', float('nan')):.3f}"
    if kind == "pretext":
        return f"final loss {result.get('final_loss', float('nan')):.4f}"
    if kind == "cavity":
        return f"cavity Dice {result.get('mean_dice', float('nan')):.3f}"
    if kind == "figure5":
        return f"t-SNE of {result.get('slices', '?')} slices"
    return f"{result.get('slices', '?')} slices"


def _per_volume(folder: Path) -> list[dict]:
    return json.loads((folder / "per_volume.json").read_text())


def collect(exp, workdir: Path) -> dict[str, list[dict]]:
    """{method display name: per-volume results of all its folds' test volumes}."""
    methods = {}
    for key in exp.methods:
        m = METHODS[key]
        run = m.icm_of or key
        sub = "eval_icm" if m.icm_of else "eval"
        rows = []
        for fold in exp.folds:
            for v in _per_volume(workdir / "runs" / run / f"fold{fold}" / sub):
                rows.append({**v, "fold": int(fold)})
        methods[m.name] = rows
    return methods


def write_outputs(exp, workdir: Path, seconds: float, command: str) -> dict[str, Path]:
    from lesionjax.core.atomic import atomic_write_text
    from lesionjax.eval import paper_outputs
    from lesionjax.evaluate import compare

    out = workdir / "results"
    out.mkdir(parents=True, exist_ok=True)
    methods = collect(exp, workdir)
    supervision = {METHODS[k].name: METHODS[k].supervision for k in exp.methods}
    written = paper_outputs.write_table3(out, methods, supervision)
    written["figure3"] = paper_outputs.plot_figure3(methods, supervision,
                                                    out / "figure3_subtypes.png")  # fmt: skip
    if len(methods) >= 2:
        written["figure4"] = paper_outputs.plot_figure4(methods, out / "figure4_p_values.png")
        dirs = []
        names = []
        for key in exp.methods:
            m = METHODS[key]
            sub = "eval_icm" if m.icm_of else "eval"
            # The comparison's per-volume files: every fold's, merged (one folder per method).
            folder = out / "per_method" / key
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(folder / "per_volume.json", json.dumps(methods[m.name], indent=1))
            atomic_write_text(folder / "summary.json", json.dumps({"split": "test", "eval": sub}))
            dirs.append(folder)
            names.append(m.name)
        compare(dirs, out / "comparison", names=names, metric="dice_eps1", n_overlays=0)
    pretexts = [t for t in dict.fromkeys(METHODS[k].pretext for k in exp.methods) if t]
    if pretexts and exp.tsne_slices > 0:  # drawn by the figure5 jobs
        for task in pretexts:
            written[f"figure5_{task}"] = out / f"figure5_tsne_{task}.png"
    table = (out / "table3.md").read_text()
    figures = [p for k, p in written.items() if k.startswith("figure")]
    text = "\n".join(
        [
            f"# Experiment {exp.name}\n",
            f"Command: `{command}`\n",
            f"{len(exp.folds)} test folds ({', '.join(map(str, exp.folds))}); jobs run by this "
            f"command took {seconds / 60:.1f} min (jobs already done are not counted).\n",
            "## Table 3\n",
            table,
            "Welch t-tests of every pair and metric: `comparison/welch_tests.md`.\n",
            "## Figures\n",
            *[f"![{p.stem}]({p.name})\n" for p in figures],
        ]
    )
    written["report"] = atomic_write_text(out / "experiment.md", text)
    return written


def use_compilation_cache(workdir: Path) -> None:
    """JAX's persistent compilation cache in ``workdir/jax_cache`` (unless one is set): every
    run of a method grid compiles the same train and predict steps, and a cached compile takes
    a fraction of the time (measured on the tiny grid: a segmentation run 11 s -> 4 s)."""
    import jax

    if jax.config.jax_compilation_cache_dir:
        return
    jax.config.update("jax_compilation_cache_dir", str(Path(workdir).absolute() / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def write_model_comparison(exp, workdir: Path, seconds: float, command: str) -> dict[str, Path]:
    """The residual U-Net paper's outputs: the comparison table (IoU, Dice, ...), Figure 3
    (overlays: image, ground truth, each model) and Figure 4 (training curves)."""
    import shutil

    from lesionjax.core.atomic import atomic_write_text
    from lesionjax.eval import paper_outputs
    from lesionjax.evaluate import compare

    out = workdir / "results"
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for fold in exp.folds:
        dirs = [workdir / "runs" / slug(n) / f"fold{fold}" for n, _ in exp.models]
        names = [n for n, _ in exp.models]
        sub = out / f"fold{fold}"
        files = compare(dirs, sub, names=names, metric="dice", n_overlays=int(exp.n_overlays))
        if "overlays" in files:
            written[f"figure3_fold{fold}"] = Path(
                shutil.copyfile(files["overlays"], out / f"figure3_overlays_fold{fold}.png")
            )
        written[f"figure4_fold{fold}"] = paper_outputs.plot_training_comparison(
            {n: d / "metrics.jsonl" for n, d in zip(names, dirs, strict=True)},
            out / f"figure4_training_fold{fold}.png",
        )
        written[f"table_fold{fold}"] = files["table"]
    sections = []
    for fold in exp.folds:
        sections += [
            f"## Test fold {fold}\n",
            (out / f"fold{fold}" / "table.md").read_text(),
            f"Welch t-tests: `fold{fold}/welch_tests.md`.\n",
        ]
        for key in (f"figure3_fold{fold}", f"figure4_fold{fold}"):
            if key in written:
                sections.append(f"![{written[key].stem}]({written[key].name})\n")
    text = "\n".join(
        [
            f"# Experiment {exp.name}\n",
            f"Command: `{command}`\n",
            f"Models: {', '.join(n for n, _ in exp.models)}; jobs run by this command took "
            f"{seconds / 60:.1f} min (jobs already done are not counted).\n",
            *sections,
        ]
    )
    written["report"] = atomic_write_text(out / "experiment.md", text)
    return written


def run_experiment(exp, workdir: Path, command: str = "") -> dict[str, Path]:
    """Plans and runs the experiment's jobs (skipping finished ones), then writes its outputs."""
    base = Path(exp.config_dir)
    workdir = Path(workdir)
    workers = int(exp.get("workers", 1))
    if workers < 1:
        raise ConfigError(f"workers={workers}: expected 1 or more worker processes")
    if workers > 1 and exp.progress:  # progress bars of parallel runs would overwrite each other
        exp = exp.copy_and_resolve_references()
        exp.progress = False
    write_config(workdir, exp, "experiment_config.json")
    use_compilation_cache(workdir)
    jobs = plan_jobs(exp, base, workdir)
    defaults = exp.get("estimate_seconds", {})
    seconds = run_jobs(jobs, title=f"experiment {exp.name} in {workdir}", workers=workers,
                       defaults=dict(defaults), headline=_headline)  # fmt: skip
    if exp.kind == "model_comparison":
        return write_model_comparison(exp, workdir, seconds, command)
    return write_outputs(exp, workdir, seconds, command)


def main(argv) -> int:
    del argv
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)

    def body() -> int:
        import jax

        if jax.process_count() > 1:
            raise UserError("the experiment runner runs on one process (its runs may not)")
        exp = config_flag_value(_CONFIG, sys.argv)
        if "config_dir" not in exp or not exp.config_dir:
            spec = config_spec(sys.argv)
            exp.unlock()
            exp.config_dir = str(Path(spec.partition(":")[0]).resolve().parent)
        workdir = Path(_WORKDIR.value or Path("runs") / exp.name)
        command = " ".join(["python -m lesionjax.experiment", *sys.argv[1:]])
        written = run_experiment(exp, workdir, command=command)
        print(f"report: {written['report']}")
        return 0

    return run_command(body)


def cli() -> None:
    """The ``lesionjax-experiment`` entry point."""
    flags.mark_flag_as_required("config")
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=absl_flags_parser)


if __name__ == "__main__":
    cli()
