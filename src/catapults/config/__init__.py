"""Run configuration: the schema (:mod:`~catapults.config.schema`, pydantic sections ``data``,
``model``, ``train``, ``monitor``, ``output``) and its reading (:mod:`~catapults.config.io`).
This layer does not import torch: ``catapults config show`` and ``--help`` stay fast.
"""

from catapults.config.io import (
    apply_overrides,
    config_from_dict,
    describe_defaults,
    load_config,
    parse_override,
    read_yaml,
    set_dotted,
)
from catapults.config.schema import (
    FLOAT32_MAX,
    AGOPMonitorConfig,
    DataConfig,
    EventsMonitorConfig,
    ModelConfig,
    MonitorConfig,
    NTKMonitorConfig,
    OutputConfig,
    RunConfig,
    ScheduleConfig,
    TrainConfig,
)
from catapults.errors import ConfigError

__all__ = [
    "FLOAT32_MAX", "AGOPMonitorConfig", "ConfigError", "DataConfig", "EventsMonitorConfig",
    "ModelConfig", "MonitorConfig", "NTKMonitorConfig", "OutputConfig", "RunConfig",
    "ScheduleConfig", "TrainConfig", "apply_overrides", "config_from_dict", "describe_defaults",
    "load_config", "parse_override", "read_yaml", "set_dotted",
]
