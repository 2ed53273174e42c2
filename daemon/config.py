"""Configuration: a TOML file plus ``I2VD_SECTION__KEY`` environment overrides.

Everything is validated at start; an error names the key (``model.device``) and what
is allowed, so the operator fixes the file instead of reading a traceback.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from daemon.config_sections import (
    AdapterName,
    GenerationConfig,
    LimitsConfig,
    LoraConfig,
    ModelConfig,
    OutputConfig,
    PathsConfig,
    WatchConfig,
)
from daemon.config_service import ClusterConfig, MetricsConfig, PromptingConfig, QueueConfig, WebhooksConfig
from daemon.encode.builtin_recipes import BUILTIN_RECIPES, effective_recipes
from daemon.encode.recipes import RecipeConfig, RecipeName

# Searched in this order when neither --config nor $I2VD_CONFIG names a file.
DEFAULT_CONFIG_PATHS = (Path("config.toml"), Path("/etc/i2vd/config.toml"))

# ``I2VD_SECTION__KEY`` overrides a setting; these names share the prefix but are not settings.
ENV_PREFIX = "I2VD_"
ENV_NOT_SETTINGS = frozenset({"I2VD_CONFIG"})


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key and the fix."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="I2VD_",
        env_nested_delimiter="__",
        extra="forbid",
        nested_model_default_partial_update=True,
    )

    paths: PathsConfig = Field(default_factory=PathsConfig)
    watch: WatchConfig = Field(default_factory=WatchConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    webhooks: WebhooksConfig = Field(default_factory=WebhooksConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    prompting: PromptingConfig = Field(default_factory=PromptingConfig)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    # Operator entries, merged over the built-ins by ``recipe_table``.
    recipes: dict[RecipeName, RecipeConfig] = Field(default_factory=dict)
    # LoRA adapters by name: [model] loras are always on, a prompt file may add others by name.
    loras: dict[AdapterName, LoraConfig] = Field(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's contents arrive as init kwargs; the environment must win over them.
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        table = self.recipe_table()
        unknown = [r for r in self.output.default_recipes if r not in table]
        if unknown:
            raise ValueError(
                f"output.default_recipes names unknown recipe(s) {', '.join(unknown)}; "
                f"defined: {', '.join(sorted(table))}"
            )
        if self.generation.resolution not in self.limits.resolutions:
            raise ValueError(
                f"generation.resolution {self.generation.resolution!r} is not in limits.resolutions"
            )
        lim, gen = self.limits, self.generation
        for key in ("num_frames", "fps", "steps", "guidance_scale"):
            lo, hi, val = getattr(lim, f"min_{key}"), getattr(lim, f"max_{key}"), getattr(gen, key)
            if val is not None and not lo <= val <= hi:
                raise ValueError(
                    f"generation.{key} = {val} is outside limits.min_{key}..max_{key} ({lo}..{hi})"
                )
        missing = [name for name in self.model.loras if name not in self.loras]
        if missing:
            defined = ", ".join(sorted(self.loras)) or "none"
            raise ValueError(
                f"model.loras names {', '.join(missing)}, which no [loras.NAME] table defines"
                f" (defined: {defined})"
            )
        return self

    def recipe_table(self) -> dict[str, RecipeConfig]:
        """The recipes in force: built-ins, replaced or removed by the operator's entries."""
        return effective_recipes(BUILTIN_RECIPES, self.recipes)

    @property
    def state_dir(self) -> Path:
        return self.paths.state if self.paths.state is not None else self.paths.inbox.parent / ".i2vd"

    @property
    def model_cache_dir(self) -> Path:
        return self.model.cache_dir if self.model.cache_dir is not None else self.state_dir / "models"


def find_config(explicit: str | os.PathLike[str] | None) -> Path | None:
    """The config file to use: --config, then $I2VD_CONFIG, then the default places; None if none exists."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("I2VD_CONFIG")
    if env:
        return Path(env)
    return next((p for p in DEFAULT_CONFIG_PATHS if p.is_file()), None)


def describe_config_source(explicit: str | os.PathLike[str] | None, path: Path | None) -> str:
    """One line saying which config file ``find_config`` chose, or where it looked and found none."""
    if path is not None:
        how = " (--config)" if explicit else " ($I2VD_CONFIG)" if os.environ.get("I2VD_CONFIG") else ""
        return f"config {path.absolute()}{how}"
    places = ", ".join(str(p.absolute()) for p in DEFAULT_CONFIG_PATHS)
    return (
        f"no config file found (no --config, $I2VD_CONFIG not set, none at {places}); using built-in defaults"
    )


@dataclass(frozen=True)
class EnvOverride:
    """One ``I2VD_SECTION__KEY`` variable: its name as written, its value and the setting it names."""

    var: str
    value: str
    key: str  # dotted and lower-case, as pydantic-settings matches it: "model.device"

    def __str__(self) -> str:
        if self.key.startswith("webhooks"):
            return self.var  # its value is URLs, which may hold credentials
        value = self.value if len(self.value) <= 60 else self.value[:57] + "..."
        return f"{self.var}={value}"


def _fields_at(parts: tuple[str, ...]) -> list[str] | None:
    """The setting names allowed under ``parts`` (``()`` is the sections); None when any name goes.

    Raises KeyError when ``parts`` itself is no setting.
    """
    node: Any = Settings
    for part in parts:
        if get_origin(node) is dict:  # [recipes.NAME]: any name, then a recipe's keys
            node = get_args(node)[1]
        elif isinstance(node, type) and issubclass(node, BaseModel) and part in node.model_fields:
            node = node.model_fields[part].annotation
        else:
            raise KeyError(part)
    if get_origin(node) is dict:
        return None
    if isinstance(node, type) and issubclass(node, BaseModel):
        return list(node.model_fields)
    return []  # a value: nothing goes below it


def _suggest(parts: tuple[str, ...]) -> tuple[str, ...] | None:
    """``parts`` with each misspelt name replaced by the closest real one, or None if one has no match."""
    fixed: list[str] = []
    for part in parts:
        try:
            allowed = _fields_at(tuple(fixed))
        except KeyError:
            return None
        if allowed is None or part in allowed:
            fixed.append(part)
            continue
        close = difflib.get_close_matches(part, allowed, n=1, cutoff=0.6)
        if not close:
            return None
        fixed.append(close[0])
    return tuple(fixed)


def _env_name(parts: tuple[str, ...]) -> str:
    return ENV_PREFIX + "__".join(parts).upper()


def env_overrides(environ: Mapping[str, str] | None = None) -> tuple[list[EnvOverride], list[str]]:
    """The ``I2VD_`` variables that override settings, and one warning for each that pydantic ignores.

    pydantic-settings silently skips a variable whose section does not exist (``I2VD_MODLE__ID``),
    which would leave an operator believing the override works; the warning names it and, where one
    is close, the variable they meant. A bad key inside a real section fails validation instead, and
    the error names the variable (``_describe``).
    """
    env = os.environ if environ is None else environ
    overrides: list[EnvOverride] = []
    warnings: list[str] = []
    for var, value in sorted(env.items()):
        if not var.upper().startswith(ENV_PREFIX) or var.upper() in ENV_NOT_SETTINGS:
            continue
        parts = tuple(var[len(ENV_PREFIX) :].lower().split("__"))
        if parts[0] not in Settings.model_fields:
            close = _suggest(parts)
            hint = f"; did you mean {_env_name(close)}?" if close else " (see config.example.toml)"
            warnings.append(f"environment variable {var} is not a setting and is ignored{hint}")
            continue
        overrides.append(EnvOverride(var, value, ".".join(parts)))
    return overrides, warnings


def load_settings(path: Path | None) -> Settings:
    """Read, validate and resolve a config; raise ConfigError with one readable line per problem.

    Relative paths resolve against the config file's folder (the working directory without one).
    A problem in an ``I2VD_`` environment override names the variable, not the file.
    """
    data: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {path} is a folder; name the .toml file inside it") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read config file {path}: {e}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
        base = path.resolve().parent
    try:
        settings = Settings(**data)
    except ValidationError as e:
        raise ConfigError(_describe(e, path, env_overrides()[0])) from None
    _resolve_paths(settings, base)
    return settings


def _resolve_paths(settings: Settings, base: Path) -> None:
    p = settings.paths
    for name in ("inbox", "outputs", "done", "failed", "state"):
        value = getattr(p, name)
        if value is not None:
            setattr(p, name, (base / value.expanduser()).absolute())
    if settings.model.cache_dir is not None:
        settings.model.cache_dir = (base / settings.model.cache_dir.expanduser()).absolute()
    if settings.prompting.model.startswith((".", "/", "~")):  # a local folder (a Hub id is owner/name)
        settings.prompting.model = str((base / Path(settings.prompting.model).expanduser()).absolute())
    for lora in settings.loras.values():
        if lora.id.endswith(".safetensors"):  # a local file (a Hub id names no file)
            lora.id = str((base / lora.id).absolute())
    folders = {name: getattr(p, name) for name in ("inbox", "outputs", "done", "failed")}
    seen: dict[Path, str] = {}
    for name, folder in folders.items():
        if folder in seen:
            raise ConfigError(
                f"paths.{name} and paths.{seen[folder]} are the same folder {folder}; give each its own"
            )
        seen[folder] = name


def _unknown_key(parts: tuple[str, ...], env: bool) -> str:
    close = _suggest(parts)
    if env:
        return "no such setting" + (f" (did you mean {_env_name(close)}?)" if close else "")
    what = "section" if len(parts) == 1 else "key"
    if close is None:
        return f"unknown {what} (check the spelling against config.example.toml)"
    return f"unknown {what} (did you mean {'.'.join(close) if len(parts) > 1 else f'[{close[0]}]'}?)"


def _describe(error: ValidationError, path: Path | None, overrides: list[EnvOverride]) -> str:
    """One line: the file's problems first (naming the file), then each failing variable by name."""
    by_key = {o.key: o for o in overrides}
    from_file: list[str] = []
    from_env: list[str] = []
    for err in error.errors():
        parts = tuple(str(part) for part in err["loc"])
        key = ".".join(parts)
        msg = err["msg"].removeprefix("Value error, ")
        # The variable that set this key, a whole section of it (I2VD_MODEL='{"device": ...}') or a
        # name below it (I2VD_MODEL__DEVICE__X turns model.device into a table).
        override = next(
            (by_key[k] for i in range(len(parts), 0, -1) if (k := ".".join(parts[:i]).lower()) in by_key),
            None,
        )
        below = [o for o in overrides if parts and o.key.startswith(key.lower() + ".")]
        blamed = [override] if override is not None else below
        if not parts:
            # A cross-check between keys: blame the variables that set a key it names, if any did.
            blamed = [o for o in overrides if o.key in msg]
        if err["type"] == "extra_forbidden":
            msg = _unknown_key(parts, env=bool(blamed))
        elif not blamed and "input" in err and parts[:1] != ("webhooks",):  # URLs may hold credentials
            msg += f" (got {err['input']!r})"
        line = f"{key}: {msg}" if key else msg
        if blamed:
            from_env.append(f"{', '.join(map(str, blamed))}: {line}")
        else:
            from_file.append(line)
    where = f" in {path}" if path else ""
    groups = [f"invalid configuration{where}: " + "; ".join(from_file)] if from_file else []
    if from_env:
        groups.append("invalid environment variable " + "; ".join(from_env))
    return "; ".join(groups)
