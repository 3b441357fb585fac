"""The run config: one flat-ish dict that fully defines a training run.

    cfg = config.resolve({"mask": "norm_only", "rho": 0.5})    # defaults + overrides, validated
    config.run_id(cfg)                                         # where the run lands

One module per job:

- :mod:`~bench.config.fields`: the field table, one row per field (default, help, choices,
  check); ``EXPERIMENT``, ``RUNTIME``, ``CHOICES``, ``FIELD_HELP`` are derived from it;
- :mod:`~bench.config.optimizers`: the base optimizers, their options and defaults;
- :mod:`~bench.config.checks`: :class:`ConfigError` and the checks a row names;
- :mod:`~bench.config.validate`: ``STEPS``, the ordered named checks;
- :mod:`~bench.config.resolve`: merge, resolve (once: :class:`ResolvedConfig`), variant options;
- :mod:`~bench.config.run_mask`: the run's mask and the baseline rule;
- :mod:`~bench.config.run_ids`: run ids and the world size;
- :mod:`~bench.config.docs`: docs/config.md's tables, generated from the table.

A new field is one row in :data:`FIELDS` (docs/config.md says how).
"""
from bench.config.checks import ConfigError, is_int, is_num  # noqa: F401
from bench.config.checks import device as check_device  # noqa: F401
from bench.config.fields import (  # noqa: F401
    CHOICES,
    EXPERIMENT,
    FIELD_HELP,
    FIELDS,
    ID_OMITS_DEFAULT,
    MAX_EPOCHS,
    MAX_PROCESSES,
    OPTION_MAPS,
    RUNTIME,
    Field,
)
from bench.config.optimizers import OPTIONS as BASE_OPTIMIZERS  # noqa: F401
from bench.config.resolve import (  # noqa: F401
    ResolvedConfig,
    canonical_variant_opts,
    default_config,
    describe,
    make_mask,
    merge,
    plain_copy,
    resolve,
    set_path,
    variant_options,
)
from bench.config.run_ids import (  # noqa: F401
    experiment_part,
    run_id,
    run_ids_by_seed,
    world_changes_result,
    world_size,
)
from bench.config.run_mask import PLAIN, is_baseline, perturbs  # noqa: F401
from bench.config.validate import STEPS, step, validate  # noqa: F401
