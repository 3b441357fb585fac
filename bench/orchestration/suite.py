"""Suite files: a YAML grid of runs, expanded and fully validated before anything runs.

Reading the file is :mod:`bench.orchestration.suite_file`, expanding its points into runs
:mod:`bench.orchestration.suite_grid`; this module is the entry that does both.

    suite = load_suite("suites/smoke.yaml", {"epochs": 1, "slurm.partition": "gpu"})
    suite.name, suite.runs (resolved run configs), suite.slurm, suite.source

Format (see the README's "Suite files")::

    name: my-suite            # required; results go to <out>/<name>/
    defaults: {...}           # run-config fields every run starts from (dotted keys allowed)
    grid: {...} | [{...}, ...]  # a mapping = cartesian product of its list values;
                              # a list of mappings = union of their products
    include: [{...}, ...]     # single extra runs (defaults + that mapping)
    seeds: [0, 1, 2]          # crossed with every run (default: the runs' own seed field)
    slurm: {...}              # executor settings (partition, cpus_per_task, runs_per_job, ...);
                              # slurm.nodes is the default of the run field nodes
    logging: {...}            # loggers for every run (bench.loggers; runtime: run ids unchanged)

A list value in a grid mapping is an axis, also inside its ``base``, ``variant_opts`` and
``mask_opts`` mappings (``mask_opts: {num_samples: [16, 64]}`` is ``mask_opts.num_samples: [16,
64]``); to give a list-valued field one value, wrap it: ``base.betas: [[0.9, 0.999]]``,
``mask_opts: {blocks: [[2, 3]]}``. Without ``grid`` the suite is ``defaults`` alone (plus
``include``); with only ``include`` and no ``grid``, just the included runs.

``--set key=value`` overrides apply to every run and win over the file (``epochs=1``,
``base.lr=0.05``); ``slurm.<key>=value`` sets an executor setting, ``name=...`` and
``seeds=[...]`` replace those keys.

Every error (unknown key or name, bad value, YAML syntax or a key given twice, a file that
expands past errors.MAX_YAML_NODES values, a mask that selects nothing on its model, no runs
at all) raises :class:`SuiteError` with the file and the field path as data, e.g.
``suites/x.yaml: grid[2].mask: unknown mask 'randm' (allowed: all, ...)``; nothing is written.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import config
from bench.errors import show
from bench.orchestration import suite_cache
from bench.orchestration.suite_file import (  # noqa: F401 -- SuiteError, TOP_KEYS, SLURM_KEYS: this module's API
    SLURM_KEYS,
    TOP_KEYS,
    SuiteError,
    error_at,
    mapping_of_fields,
    parse_doc,
    points_of,
    read_text,
    reference_block,
    seeds_of,
    slurm_settings,
    split_overrides,
    suite_name,
    warn_if_large,
)
from bench.orchestration.suite_grid import Layer, expand


@dataclass
class Suite:
    name: str
    runs: list[dict]                       # resolved run configs, in suite order, de-duplicated
    slurm: dict[str, Any]
    source: Path
    run_ids: list[str] = field(default_factory=list)
    # run id -> the sparsity actually used when the config says "match:<mask>"
    resolved_sparsity: dict[str, float] = field(default_factory=dict)
    # variant name -> registries.variant_options(name), read at expansion (kept in the suite cache,
    # so that a cached suite writes its config.json files without importing torch)
    variant_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    # published numbers (the suite's reference: block, checked; see bench/orchestration/reference.py)
    reference: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.runs)

    def items(self):
        return zip(self.run_ids, self.runs)

    def variant_options(self, cfg: dict) -> dict[str, Any]:
        """config.variant_options of one of its runs, from the options read at expansion."""
        return config.variant_options(cfg, self.variant_defaults)


def load_suite(path: str | Path, overrides: dict | None = None,
               warn: Callable[[str], None] | None = None, cache: bool = False) -> Suite:
    """Read, expand and validate a suite file; raise SuiteError on the first problem.

    ``warn`` receives a note when the suite expands to more than LARGE_SUITE runs (default:
    printed to stderr), before the long part of the work. ``cache``: take the expansion from
    (and keep it in) the cache of validated suites, :mod:`bench.orchestration.suite_cache` (the command line
    does; the result is the same either way).
    """
    source, path = str(path), Path(path)
    doc = parse_doc(read_text(path, source), source)
    run_over, slurm_over, top_over = split_overrides(overrides)
    name = suite_name(doc, top_over, source)
    seeds = seeds_of(doc, top_over, source)
    slurm = slurm_settings(doc, top_over, slurm_over, source)
    reference = reference_block(doc.get("reference"), source)
    defaults = mapping_of_fields(doc.get("defaults"), source, "defaults")
    if "nodes" in slurm and "nodes" not in defaults:  # slurm.nodes: every run's nodes unless it says otherwise
        defaults = {**defaults, "nodes": slurm["nodes"]}
    if seeds != [None] and "seed" in defaults:  # replaced by the seeds list, but still checked
        seed = defaults["seed"]
        if not (config.is_int(seed) and seed >= 0):
            raise error_at(source, "defaults.seed", f"must be an integer >= 0, got {show(seed)}")
    points = points_of(doc, source)
    warn_if_large(len(points) * len(seeds), source, warn)
    logging = doc.get("logging")   # a top-level block for every run (runtime: run ids unchanged)
    inputs = {"defaults": defaults, "points": [list(pt) for pt in points], "seeds": seeds, "set": run_over,
              "logging": logging}
    entry = suite_cache.key(inputs) if cache else None
    expansion = suite_cache.load(entry)
    if expansion is None:
        base_layer = Layer.of(defaults, "defaults.")
        if logging is not None:
            base_layer.set("logging", logging, "")
        over_layer = Layer.of(run_over, "--set ")
        expansion = expand(points, seeds, base_layer, over_layer, source)
        suite_cache.store(entry, expansion)
    return Suite(name=name, runs=expansion["runs"], slurm=slurm, source=path, run_ids=expansion["run_ids"],
                 resolved_sparsity=expansion["resolved_sparsity"], variant_defaults=expansion["variant_defaults"],
                 reference=reference)
