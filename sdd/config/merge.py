"""`merge`: mergekit recipes, one merge@<name> stage each (output `<paths.models>/merged/<name>`).

A recipe is one of three shapes, chosen by `method` (as mergekit's own config is):
- `slerp`: exactly 2 models and `t` in [0, 1] (0 = the first model, 1 = the second);
- `linear`: 2+ models, optional `weight` per model, `normalize`;
- `ties`: 2+ models, `base` (their common ancestor, e.g. pruned), `density` in (0, 1] and optional
  `weight` (one value or one per model), `normalize`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BeforeValidator, Field, field_validator, model_validator

from sdd.config.base import Dtype, Section
from sdd.errors import check_names, did_you_mean

# The model folders (under paths.models) that dvc.yaml declares as deps of merge@<recipe>.
MERGE_INPUT_ROOTS = ("finetuned", "pruned")


class _Recipe(Section):
    models: list[str] = Field(min_length=2)
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
        outside = [m for m in self.inputs() if m.split("/")[0] not in MERGE_INPUT_ROOTS]
        if outside:
            raise ValueError(
                f"{outside} are not under {list(MERGE_INPUT_ROOTS)} (dirs under paths.models); "
                f"dvc.yaml tracks only those as merge inputs, so a change elsewhere would not rerun the merge"
            )
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

    @field_validator("models")
    @classmethod
    def _two(cls, value: list[str]) -> list[str]:
        if len(value) != 2:
            raise ValueError(f"slerp merges exactly 2 models, got {len(value)}; use linear or ties for more")
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
