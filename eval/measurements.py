"""Per-model figures that cost a model load (speed, memory, size, threads, fidelity), kept in
`measurements.partial.json` while a run is going, so that a run resumed after a kill does not load
the models it already finished. The file is removed once the report is written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from distill.core.io import read_json, write_json


def measurement_key(spec: str, config) -> str:
    """What the figures of `spec` depend on besides the model itself."""
    settings = [spec, config.served_model, config.speed_tokens, config.threads, config.dtype,
                config.n_ctx, config.benchmark, config.prompt_template, config.reference,
                config.fidelity_text, config.fidelity_tokens, config.fidelity_window]
    return hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]


class MeasurementCache:
    def __init__(self, path: Path):
        self.path = path
        data = read_json(path) if path.is_file() else {}
        self.models: dict = data.get("models", {}) if isinstance(data, dict) else {}
        self.reference: dict | None = data.get("reference") if isinstance(data, dict) else None

    def get(self, label: str, key: str) -> dict | None:
        entry = self.models.get(label)
        return dict(entry["figures"]) if entry and entry.get("key") == key else None

    def put(self, label: str, key: str, figures: dict) -> None:
        self.models[label] = {"key": key, "figures": figures}
        self._save()

    def put_reference(self, spec: str, perplexity: float, tokens: int) -> None:
        self.reference = {"model": spec, "perplexity": perplexity, "tokens": tokens}
        self._save()

    def _save(self) -> None:
        write_json(self.path, {"models": self.models, "reference": self.reference})

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
