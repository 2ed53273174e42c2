"""Configuration: a TOML file plus ``I2VD_SECTION__KEY`` environment overrides.

Everything is validated at start; an error names the key (``model.device``) and what
is allowed, so the operator fixes the file instead of reading a traceback.
"""

from __future__ import annotations

import difflib
import os
import shutil
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from daemon.encode.builtin_recipes import BUILTIN_RECIPES, effective_recipes
from daemon.encode.recipes import RecipeConfig, RecipeName
from daemon.engine.choices import (
    Attention,
    Cache,
    CompileMode,
    CompileScope,
    FamilyChoice,
    Offload,
    OomRung,
    Quantize,
    check_device,
)

# Searched in this order when neither --config nor $I2VD_CONFIG names a file.
DEFAULT_CONFIG_PATHS = (Path("config.toml"), Path("/etc/i2vd/config.toml"))

# ``I2VD_SECTION__KEY`` overrides a setting; these names share the prefix but are not settings.
ENV_PREFIX = "I2VD_"
ENV_NOT_SETTINGS = frozenset({"I2VD_CONFIG"})

RESOLUTIONS = ("512p", "768p", "1024p")

# What file managers and copy tools leave behind; matched against the file name only.
DEFAULT_IGNORE = [
    ".*",
    "Thumbs.db",
    "desktop.ini",
    "~$*",
    "*.part",
    "*.tmp",
    "*.crdownload",
]


# An adapter's name, as [loras.NAME], [model] loras and a prompt file's ``loras`` write it.
AdapterName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key and the fix."""


class _Section(BaseModel):
    # A misspelt key is an error, never silently ignored.
    model_config = ConfigDict(extra="forbid")


class PathsConfig(_Section):
    inbox: Path = Path("inbox")
    outputs: Path = Path("outputs")
    done: Path = Path("done")
    failed: Path = Path("failed")
    # None: ``.i2vd`` beside the inbox.
    state: Path | None = None


class WatchConfig(_Section):
    mode: Literal["auto", "inotify", "poll"] = "auto"
    poll_interval: float = Field(1.0, gt=0, le=60)
    settle_seconds: float = Field(3.0, ge=0, le=3600)
    pair_timeout: float = Field(120.0, ge=0)
    ignore: list[str] = Field(default_factory=lambda: list(DEFAULT_IGNORE))
    # After a first SIGTERM/SIGINT the current generation may run this long before it is
    # interrupted and its files returned to the inbox. Keep systemd's TimeoutStopSec above it.
    stop_grace: float = Field(600.0, ge=0)


class ModelConfig(_Section):
    id: str = "ali-vilab/i2vgen-xl"
    revision: str | None = None
    device: str = "auto"
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    # None: ``models`` inside the state folder (the built-in ``tiny`` is built there too).
    cache_dir: Path | None = None
    # Model family: "auto" reads model_index.json (daemon/families.py); or force one.
    family: FamilyChoice = "auto"
    # Speed and memory (applied by daemon.engine.runner; config.example.toml explains each). Defaults
    # suit one 24 GB+ GPU; options that need CUDA are ignored, with a log line, on a CPU.
    attention: Attention = "auto"
    compile: bool | Literal["auto"] = "auto"
    compile_mode: CompileMode = "default"
    compile_scope: CompileScope = "regional"
    # diffusers' caching methods, for the transformer families (LTX-Video, Wan, CogVideoX).
    cache: Cache = "none"
    cache_threshold: float = Field(0.05, gt=0, le=1)
    cache_interval: int = Field(2, ge=2, le=10)
    vae_slicing: bool = False
    vae_tiling: bool = False
    offload: Offload = "none"
    channels_last: bool = False
    decode_chunk_size: int = Field(8, ge=1, le=256)
    warmup: bool = True
    # Out of memory: retry smaller, rung by rung (daemon/oom.py), before failing the job.
    oom_ladder: list[OomRung] = Field(
        default_factory=lambda: ["lower_resolution", "fewer_frames", "cpu_offload"]
    )
    oom_resolutions: list[str] = Field(default_factory=lambda: ["768p", "640p", "512p", "384p"])
    oom_min_frames: int = Field(8, ge=1)
    # Adapters (defined under [loras.NAME]) on for every job, fused into the weights at load.
    loras: list[AdapterName] = Field(default_factory=list)
    # Weight quantization of the denoiser(s) with torchao (daemon/engine/quantize.py).
    quantize: Quantize = "none"

    @field_validator("loras")
    @classmethod
    def _loras(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("each adapter may appear only once")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return check_device(v)

    @field_validator("oom_ladder")
    @classmethod
    def _oom_ladder(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("each step may appear only once")
        return v

    @field_validator("oom_resolutions")
    @classmethod
    def _oom_resolutions(cls, v: list[str]) -> list[str]:
        bad = [r for r in v if not (r.endswith("p") and r[:-1].isdigit() and 64 <= int(r[:-1]) <= 4096)]
        if bad:
            raise ValueError(f'{", ".join(map(repr, bad))}: write resolutions like "512p" (64p to 4096p)')
        return v


class LoraConfig(_Section):
    """One ``[loras.NAME]`` table: a LoRA adapter the model may run with (daemon/engine/adapters.py)."""

    # A Hugging Face Hub id ("owner/name", fetched by `i2vd fetch-model`) or a local .safetensors file.
    id: str = Field(min_length=1)
    # The file inside a Hub repository holding the adapter (required for a Hub id: the daemon loads
    # offline, and diffusers can only guess the file by asking the Hub).
    weight_name: str | None = None
    # How strongly it applies (1.0: as trained; 0.0: not at all).
    scale: float = Field(1.0, ge=-10, le=10)
    # What the adapter needs (a distilled 4-step adapter: steps = 4, guidance_scale = 1.0); used
    # when the job's prompt file does not set them, over [generation] and the model's defaults.
    steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = Field(None, ge=0)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        path = Path(v).expanduser()
        if v.startswith(("/", ".", "~")) or v.endswith(".safetensors"):
            if path.suffix != ".safetensors":
                raise ValueError(f"{v!r}: a local adapter must be a .safetensors file")
            return str(path)
        if v.count("/") != 1:
            raise ValueError(f"{v!r} is neither a Hub id (owner/name) nor a local .safetensors file")
        return v

    @model_validator(mode="after")
    def _hub_file(self) -> LoraConfig:
        if not self.id.endswith(".safetensors") and not self.weight_name:
            raise ValueError(
                f"the Hub adapter {self.id!r} needs weight_name: the file in the repository that holds it"
                ' (e.g. weight_name = "lora.safetensors"), since the daemon loads adapters offline'
            )
        return self


class GenerationConfig(_Section):
    negative_prompt: str = "blurry, low quality, distorted, watermark, text"
    resolution: str = "512p"
    num_frames: int = 16
    fps: int = 8
    # None (unset): the adapter's, else the model family's published value (daemon/engine/families.py).
    steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    # Used for an image that has no prompt file after watch.pair_timeout; None fails it.
    default_prompt: str | None = None


class LimitsConfig(_Section):
    max_image_pixels: int = Field(40_000_000, gt=0)
    max_image_bytes: int = Field(100 * 1024 * 1024, gt=0)
    max_sidecar_bytes: int = Field(64 * 1024, gt=0)
    max_prompt_chars: int = Field(2000, gt=0)
    resolutions: list[str] = Field(default_factory=lambda: list(RESOLUTIONS))
    min_num_frames: int = Field(2, ge=1)
    max_num_frames: int = Field(64, ge=1)
    min_fps: int = Field(1, ge=1)
    max_fps: int = Field(60, ge=1)
    min_steps: int = Field(1, ge=1)
    max_steps: int = Field(150, ge=1)
    min_guidance_scale: float = Field(0.0, ge=0)
    max_guidance_scale: float = Field(30.0, ge=0)
    max_seed: int = Field(2**32 - 1, ge=0)
    # A job that crashed the daemon this many times goes to failed/ instead of crash-looping.
    max_attempts: int = Field(3, ge=1)

    @field_validator("resolutions")
    @classmethod
    def _resolutions(cls, v: list[str]) -> list[str]:
        bad = [r for r in v if r not in RESOLUTIONS]
        if bad or not v:
            raise ValueError(f"each must be one of {', '.join(RESOLUTIONS)}")
        return v


class OutputConfig(_Section):
    default_recipes: list[str] = Field(default_factory=lambda: ["poster", "h264"])
    # Finished generations that may wait for the encoder while it works on another job.
    # The GPU starts job N+1 while job N encodes; this bounds the frames held in memory
    # to those of encode_queue + 2 jobs.
    encode_queue: int = Field(1, ge=1, le=16)
    # None: the ffmpeg pinned with the imageio-ffmpeg package (the same on every machine).
    ffmpeg: Path | None = None

    @field_validator("ffmpeg", mode="before")
    @classmethod
    def _ffmpeg(cls, v: Any) -> Any:
        # Can it run at all is known here; whether it encodes H.264 is checked at start.
        if v is None or v == "":
            return None
        path = Path(v).expanduser()
        if not path.is_absolute():
            found = shutil.which(str(path)) if len(path.parts) == 1 else None
            if found is None:
                raise ValueError('must be the absolute path of an ffmpeg binary (e.g. "/usr/bin/ffmpeg")')
            path = Path(found)
        if not path.is_file() or not os.access(path, os.X_OK):
            raise ValueError(
                f"{path} is not an executable file; fix the path, or remove the key to use the ffmpeg "
                "i2vd ships"
            )
        return path


class MetricsConfig(_Section):
    # "HOST:PORT" ("127.0.0.1:9310", "[::1]:9310", ":9310" for every interface); "" is off.
    address: str = ""

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if v:
            from daemon.listeners.metrics import parse_address

            parse_address(v)  # raises ValueError naming the expected form
        return v


class WebhooksConfig(_Section):
    # URLs POSTed the JOB.json of each finished job, and the job, error and folder of each failed one.
    on_done: list[str] = Field(default_factory=list)
    on_failed: list[str] = Field(default_factory=list)
    timeout: float = Field(10.0, gt=0, le=300)
    max_attempts: int = Field(10, ge=1, le=100)
    backoff_seconds: float = Field(5.0, gt=0, le=3600)

    @field_validator("on_done", "on_failed")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        from urllib.parse import urlsplit

        for url in v:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{url!r} is not an http:// or https:// URL")
        return v


class ClusterConfig(_Section):
    """Where jobs run: this process ("local") or Ray workers, one per GPU ("ray", docs/cluster.md)."""

    backend: Literal["local", "ray"] = "local"
    # "local": a private Ray on this machine, started and stopped with the daemon; "auto": the
    # Ray cluster this machine already belongs to (``ray start``); "HOST:PORT": that cluster's head.
    address: str = "local"
    # "auto": one worker per gpus_per_worker GPUs of every node (per cpus_per_worker CPUs when
    # gpus_per_worker = 0), including nodes that join later; a number: that many workers.
    workers: int | Literal["auto"] = "auto"
    gpus_per_worker: float = Field(1.0, ge=0)
    # CPUs Ray sets aside for each worker (its encoding runs there); 0 reserves none.
    cpus_per_worker: float = Field(1.0, ge=0)
    # A worker whose process dies is started again this many times (it reloads the model).
    max_restarts: int = Field(3, ge=0)
    # How long start waits for the workers to load the model; the late ones join when ready.
    start_timeout: float = Field(900.0, gt=0)

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, v: Any) -> Any:
        if isinstance(v, bool) or (isinstance(v, int) and v < 1):
            raise ValueError('must be "auto" or a number of workers, 1 or more')
        return v

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        v = v.strip()
        if v in ("local", "auto"):
            return v
        host, sep, port = v.removeprefix("ray://").rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError('must be "local", "auto" or the head\'s "HOST:PORT" (e.g. "10.0.0.5:6379")')
        return v

    @model_validator(mode="after")
    def _some_resource(self) -> ClusterConfig:
        if self.workers == "auto" and self.gpus_per_worker == 0 and self.cpus_per_worker == 0:
            raise ValueError(
                'workers = "auto" counts GPUs, or CPUs when gpus_per_worker = 0: set cpus_per_worker'
                " above 0 or give workers a number"
            )
        return self


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
        elif not blamed and "input" in err:
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
