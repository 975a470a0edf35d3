"""Size presets shipped with the package: `membart-base`, `membart-large` (the released models' shapes) and `tiny`."""

import json
from pathlib import Path

from .configuration_membart import MemBartConfig

PRESET_DIR = Path(__file__).parent / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_preset(name: str, **overrides) -> MemBartConfig:
    """`MemBartConfig` of preset `name`, with `overrides` (e.g. `vocab_size=` of your tokenizer) applied."""
    path = PRESET_DIR / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"unknown MemBART preset {name!r}; available: {', '.join(preset_names())}")
    return MemBartConfig(**{**json.loads(path.read_text()), **overrides})
