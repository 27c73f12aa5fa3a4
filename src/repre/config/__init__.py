"""Typed run configuration: defaults, then a preset or YAML file, then `--set key=value` overrides.

Every key is a field of a dataclass in `schema`. Unknown keys and values of the wrong type raise `UserError`
naming the nearest valid key (`checks`), so a typo never silently falls back to a default. The resolved config
is saved with every run (`config.yaml`) and every checkpoint, and is accepted back by `--config` (`loading`);
one written by an older repre is read in today's keys (`migrate`).

    schema.py     the dataclasses: every key, its type, default, documentation, valid values and whether it
                  changes what a run computes (`RUN_ONLY_KEYS`: it does not)
    loading.py    presets, YAML files and --set overrides -> a validated Config; Config -> YAML
    checks.py     typed construction (each key and value checked) and validation
    migrate.py    an older repre's keys in today's
    reads.py      the keys each command after pre-training reads from --set
"""

from repre.config.checks import all_keys, build_section, check_global_batch, sections, validate
from repre.config.loading import (
    checked,
    config_from_dict,
    deep_update,
    flatten,
    given_keys,
    list_presets,
    load_config,
    override_items,
    parse_overrides,
    read_written,
    read_yaml,
    save_yaml,
    source_dict,
    to_yaml,
)
from repre.config.migrate import migrate, renamed_message
from repre.config.schema import (
    DEFAULT_PRESET,
    EVAL_TASKS,
    FRAMEWORKS,
    MAX_STEPS,
    MULTI_CROP,
    REMOTE_ROOTS,
    RUN_ONLY_KEYS,
    URL,
    AugConfig,
    Config,
    DataConfig,
    DINOConfig,
    EvalConfig,
    FinetuneConfig,
    KNNConfig,
    LinearConfig,
    MethodConfig,
    MoBYConfig,
    MoCoV3Config,
    ModelConfig,
    ReconConfig,
    ReconEvalConfig,
    SegmentConfig,
    TrainConfig,
    idle_sections,
)

__all__ = [
    "DEFAULT_PRESET", "EVAL_TASKS", "FRAMEWORKS", "MAX_STEPS", "MULTI_CROP", "REMOTE_ROOTS", "RUN_ONLY_KEYS",
    "URL",
    "AugConfig", "Config", "DataConfig", "DINOConfig", "EvalConfig", "FinetuneConfig", "KNNConfig", "LinearConfig",
    "MethodConfig", "MoBYConfig", "MoCoV3Config", "ModelConfig", "ReconConfig", "ReconEvalConfig", "SegmentConfig",
    "TrainConfig",
    "all_keys", "build_section", "check_global_batch", "checked", "config_from_dict", "deep_update", "flatten",
    "given_keys", "idle_sections", "list_presets", "load_config", "migrate", "override_items", "parse_overrides",
    "read_written", "read_yaml", "renamed_message", "save_yaml", "sections", "source_dict", "to_yaml", "validate",
]
