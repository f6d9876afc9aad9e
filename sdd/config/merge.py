"""`merge`: mergekit recipes, one merge@<name> stage each (output `<paths.models>/merged/<name>`).

A recipe merges two models, in one of three shapes chosen by `method` (as mergekit's own config is):
- `slerp`: `t` in [0, 1] (0 = the first model, 1 = the second);
- `linear`: optional `weight` per model, `normalize`;
- `ties`: `base` (their common ancestor: pruned, base or one of the two), `density` in (0, 1] and
  optional `weight` (one value or one per model), `normalize`.
A model is a folder under paths.models that a stage writes: base, pruned, finetuned/<arm> or
merged/<another recipe>, so more than two models merge as a chain of recipes.

Exactly two: dvc.yaml declares the two folders (`${item.models.0}`, `${item.models.1}`, plus base
and pruned) as the merge's deps, so a new arm reruns no merge that does not read it; a list of any
length cannot be templated into deps.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BeforeValidator, Field, field_validator, model_validator

from sdd.config.base import Dtype, Section
from sdd.errors import check_names, did_you_mean

# Folders every merge@<recipe> declares as deps besides its two models (a ties base is one of these).
ALWAYS_DECLARED = ("base", "pruned")


def _two(value: Any) -> Any:
    if isinstance(value, list) and len(value) != 2:
        raise ValueError(
            f"a recipe merges exactly 2 models, got {len(value)}; merge more as a chain: a recipe's "
            "input may be merged/<another recipe>"
        )
    return value


class _Recipe(Section):
    models: Annotated[list[str], BeforeValidator(_two)]
    control: str | None = None  # the model this merge is compared with in the report (e.g. one of its inputs)

    def inputs(self) -> list[str]:
        return list(self.models)

    def per_model(self, value: float | list[float] | None, key: str) -> None:
        if isinstance(value, list) and len(value) != len(self.models):
            raise ValueError(
                f"{self.method} {key} has {len(value)} values for {len(self.models)} models; "  # type: ignore[attr-defined]
                f"give one per model"
            )

    @model_validator(mode="after")
    def _models(self) -> _Recipe:
        twice = sorted({m for m in self.models if self.models.count(m) > 1})
        if twice:
            raise ValueError(f"models lists {twice[0]!r} twice; to weight a model more, use linear with `weight`")
        return self


class SlerpRecipe(_Recipe):
    """Spherical interpolation of 2 models (Shoemake 1985)."""

    method: Literal["slerp"]
    t: float = 0.5

    @field_validator("t")
    @classmethod
    def _t(cls, value: float) -> float:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"slerp t={value} is outside [0, 1]; t=0 gives the first model, t=1 the second")
        return value


class LinearRecipe(_Recipe):
    """Weighted average (Wortsman et al. 2022, model soups); equal weights unless given."""

    method: Literal["linear"]
    weight: list[float] | None = None
    normalize: bool = True

    @model_validator(mode="after")
    def _weights(self) -> LinearRecipe:
        self.per_model(self.weight, "weight")
        return self


class TiesRecipe(_Recipe):
    """TIES-Merging (Yadav et al. 2023): trimmed, sign-agreed task vectors added back to `base`."""

    method: Literal["ties"]
    base: str
    density: float | list[float] = 0.5
    weight: float | list[float] | None = None
    normalize: bool = True

    def inputs(self) -> list[str]:
        return [*self.models, self.base]

    @model_validator(mode="after")
    def _values(self) -> TiesRecipe:
        if self.base not in (*ALWAYS_DECLARED, *self.models):
            raise ValueError(
                f"ties base {self.base!r} must be one of {[*ALWAYS_DECLARED, *self.models]}: the folders "
                "dvc.yaml declares as this merge's deps (the common ancestor is usually pruned)"
            )
        self.per_model(self.weight, "weight")
        self.per_model(self.density, "density")
        densities = self.density if isinstance(self.density, list) else [self.density]
        if not all(0.0 < d <= 1.0 for d in densities):
            raise ValueError(f"ties density {self.density} must be in (0, 1]: the fraction of each task vector kept")
        return self


METHODS = ("slerp", "linear", "ties")


def _known_method(value: Any) -> Any:
    if isinstance(value, dict):
        method = value.get("method")
        if method is None:
            raise ValueError(f"a recipe needs `method`: one of {list(METHODS)}")
        if method not in METHODS:
            raise ValueError(
                f"method {method!r}{did_you_mean(str(method), METHODS)} is not supported; choose one of {list(METHODS)}"
            )
    return value


MergeRecipe = Annotated[
    Union[SlerpRecipe, LinearRecipe, TiesRecipe],  # noqa: UP007 (pydantic reads the Union)
    Field(discriminator="method"),
    BeforeValidator(_known_method),
]


class MergeParams(Section):
    dtype: Dtype = "bfloat16"
    recipes: dict[str, MergeRecipe] = {
        "sdd_wise": SlerpRecipe(method="slerp", models=["pruned", "finetuned/sdd"], t=0.5, control="sdd")
    }

    @field_validator("recipes")
    @classmethod
    def _recipe_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_names("recipe", value)
        return value
