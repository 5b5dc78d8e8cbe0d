"""Settings: one validated object parsed from ``config.toml``, one model per table.

Every field has a default that works on a fresh machine with the examples, and a description that
doubles as the "what to write instead" hint when validation fails. Secrets come only from the
environment (``ANTHROPIC_API_KEY``, ``QDRANT_API_KEY``), never from the file.
"""

from daemon.config.sections import (GateSettings, IndexSettings, IngestSettings, LogSettings, QdrantSettings,
                                    ScheduleSettings, ServiceSettings, ServingSettings, StoreSettings, SynthSettings)
from daemon.config.settings import Settings, load_settings, settings_from_dict
from daemon.config.training import EmbedderTrainSettings, MiningSettings, RerankerTrainSettings, TrainSettings

__all__ = ["Settings", "load_settings", "settings_from_dict", "LogSettings", "StoreSettings", "IngestSettings",
           "GateSettings", "QdrantSettings", "IndexSettings", "ServingSettings", "SynthSettings", "ScheduleSettings",
           "ServiceSettings", "TrainSettings", "MiningSettings", "EmbedderTrainSettings", "RerankerTrainSettings",
           "reference_page"]


def reference_page() -> str:
    """docs/configuration-reference.md as the settings model gives it (``python -m daemon.config.reference``)."""
    from daemon.config.reference import render

    return render()
