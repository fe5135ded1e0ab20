"""Model specs: what a provider model accepts and costs, read from YAML files.

The specs editpipe ships are package data, ``pipeline/configs/models/*.yaml``, found with
``importlib.resources`` so that an installed wheel has them. A user's ``configs/models/``
(see ``pipeline/settings.py``) adds specs of other models, and a spec there naming the same
model replaces the packaged one.

A spec names the endpoint path, every request option with its allowed values and default,
the most reference images a request may carry, and the price table. Prices are ``Decimal``
from the YAML string onwards; a float never touches money.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path

import yaml

from .errors import SettingsError

DEFAULT_MODEL = "openai/gpt-image-2/edit"
# A wheel installs unpacked, so the packaged folder is on disk: a plain path that the
# simulator's options and a subprocess's arguments can carry.
PACKAGED_MODELS = Path(str(resources.files(__package__) / "configs" / "models"))


@dataclass(frozen=True)
class OptionSpec:
    name: str
    values: tuple[str, ...]
    default: str


@dataclass(frozen=True)
class PriceRule:
    when: Mapping[str, str]
    usd: Decimal


@dataclass(frozen=True)
class ModelSpec:
    name: str
    endpoint: str
    max_images: int
    options: Mapping[str, OptionSpec]
    price_default: Decimal
    price_rules: tuple[PriceRule, ...] = field(default=())

    def defaults(self) -> dict[str, str]:
        return {name: opt.default for name, opt in self.options.items()}

    def price_for(self, options: Mapping[str, str]) -> Decimal:
        """The price of one completed prediction with these request options."""
        for rule in self.price_rules:
            if all(options.get(k) == v for k, v in rule.when.items()):
                return rule.usd
        return self.price_default


def _money(raw: object, where: str) -> Decimal:
    if isinstance(raw, float):
        raise SettingsError(f"{where}: write prices as quoted decimal strings, not floats")
    try:
        return Decimal(str(raw))
    except InvalidOperation:
        raise SettingsError(f"{where}: {raw!r} is not a decimal amount") from None


def load_model_spec(path: Path) -> ModelSpec:
    try:
        doc = yaml.safe_load(path.read_text())
        options = {
            name: OptionSpec(
                name=name,
                values=tuple(str(v) for v in opt["values"]),
                default=str(opt["default"]),
            )
            for name, opt in doc["options"].items()
        }
        price = doc.get("price") or {}
        rules = tuple(
            PriceRule(
                when={k: str(v) for k, v in rule["when"].items()},
                usd=_money(rule["usd"], f"{path}: price.rules"),
            )
            for rule in price.get("rules") or ()
        )
        return ModelSpec(
            name=str(doc["model"]),
            endpoint=str(doc["endpoint"]),
            max_images=int(doc.get("max_images", 16)),
            options=options,
            price_default=_money(price.get("default", "0.10"), f"{path}: price.default"),
            price_rules=rules,
        )
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise SettingsError(f"model spec {path} is unreadable: {exc}") from None


def load_model_specs(models_dir: Path | None = None) -> dict[str, ModelSpec]:
    """The packaged specs and every spec under ``models_dir``, keyed by model name.

    A spec under ``models_dir`` replaces a packaged one of the same model; a ``models_dir``
    that does not exist adds nothing.
    """
    specs = _specs_in(PACKAGED_MODELS)
    if models_dir is not None and models_dir.is_dir():
        specs.update(_specs_in(models_dir))
    if not specs:
        raise SettingsError(f"no model specs found in {PACKAGED_MODELS}")
    return specs


def _specs_in(folder: Path) -> dict[str, ModelSpec]:
    specs: dict[str, ModelSpec] = {}
    for path in sorted(folder.glob("*.yaml")):
        spec = load_model_spec(path)
        specs[spec.name] = spec
    return specs
