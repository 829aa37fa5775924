"""The recipe's schema: the SLERP subset of mergekit's config, and the `publish:` block.

Every model forbids unknown keys and every field says, in its own validator, what is wrong
with a bad value. A validation error's location is therefore a path of keys and indexes in
the YAML file (no union member names), and its message is ready to show: `recipe.py` only
adds `FILE:LINE:COL`. Models name themselves for unknown-key messages through `NOUN` and
`UNKNOWN_HINT`, and give a message for a missing key through `MISSING`.

Only what the schema cannot see alone (parents across slices, where mergekit reads `t`) is
checked afterwards, in `recipe_rules.py`.
"""

from __future__ import annotations

import difflib
import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from publisher.licenses import HUB_LICENSES

PUBLISH_KEY = "publish"
KNOWN_DTYPES = ("float32", "float16", "bfloat16", "float64")
REPO_ID_RE = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
# What a parameter such as `t` may be (mergekit's `ParameterSetting`), said once for every message.
SETTING_FORMS = (
    "a number in [0, 1], a list of numbers (anchors), or a list of {filter, value} entries"
)
# Bounds on numbers that would only fail later, in mergekit or lm-eval.
MAX_BATCH_SIZE = 4096
MAX_FEWSHOT = 100
MAX_SHARD_BYTES = 10**15
# The error type of every message written here in full (recipe.py shows it as it is).
RECIPE_ERROR = "recipe"
# The error type of "this node must be <what>": recipe.py adds the path and an example.
MUST_BE = "must_be"


def closest(word: str, options: list[str], otherwise: str = "") -> str:
    """ " Did you mean 'x'?" for the option closest to `word`, else `otherwise`."""
    match = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" Did you mean '{match[0]}'?" if match else otherwise


def fail(message: str) -> PydanticCustomError:
    """An error whose message is shown as written, at the node being validated."""
    return PydanticCustomError(RECIPE_ERROR, message)


def must_be(what: str, container: type | None = None) -> WrapValidator:
    """Report any failure of this node as one line, "<path> must be <what>".

    Unions fail once per member (pydantic lists each); the reader needs one line saying what
    the node may be. When the value is already a `container` (e.g. a mapping for a section),
    the nested errors are kept: they point at the nodes inside.
    """

    def validate(value: Any, handler: Any) -> Any:
        if container is not None and isinstance(value, container):
            return handler(value)
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError(MUST_BE, "must be {what}", {"what": what}) from None

    return WrapValidator(validate)


def raise_all(errors: list[tuple[tuple[Any, ...], str]], value: Any) -> None:
    """Raise one error per (location inside `value`, message), or nothing."""
    if errors:
        raise ValidationError.from_exception_data(
            "recipe",
            [{"type": fail(message), "loc": where, "input": value} for where, message in errors],
        )


class Strict(BaseModel):
    """A mapping of the recipe: unknown keys are refused, with the closest key suggested."""

    model_config = ConfigDict(extra="forbid")
    NOUN: ClassVar[str] = "key"  # "unknown <NOUN> 'x'"
    IN: ClassVar[str] = ""  # where, e.g. " in publish settings"
    UNKNOWN_HINT: ClassVar[str] = " Known keys: "  # followed by the known keys
    MISSING: ClassVar[dict[str, str]] = {}  # a message for a missing required key
    # The model inside a field validated by a function (its type alone does not show it).
    NESTED: ClassVar[dict[str, type[BaseModel]]] = {}


# ---------------------------------------------------------------------------------------------
# SLERP parameters: t as a number, anchors, or {filter, value} entries


def kind(value: Any) -> str:
    if value is None:
        return "empty (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str))


def _t_number(value: Any) -> str | None:
    """Why `value` cannot be a t, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"t value {value!r} is not a number; use numbers between 0 and 1"
    if not 0.0 <= float(value) <= 1.0:  # NaN fails this too
        return (
            f"t value {value} is outside [0, 1]; 0 keeps the base model, 1 takes the other parent"
        )
    return None


def _anchor_errors(values: list[Any]) -> list[tuple[tuple[Any, ...], str]]:
    errors = []
    for i, value in enumerate(values):
        if not _is_scalar(value):
            message = f"t anchor is {kind(value)}; anchors are plain numbers, e.g. [0, 0.5, 1]"
        else:
            message = _t_number(value)
        if message:
            errors.append(((i,), message))
    return errors


def _t_value(value: Any) -> Any:
    """The `value` of an entry: a number or a list of anchors."""
    if isinstance(value, list):
        if not value:
            raise fail("t value is an empty list; give a number or anchors, e.g. [0, 0.5, 1]")
        raise_all(_anchor_errors(value), value)
    elif not _is_scalar(value):
        raise fail(
            f"t value is {kind(value)}; it must be a number in [0, 1] "
            "or a list of numbers (anchors)"
        )
    elif message := _t_number(value):
        raise fail(message)
    return value


def _filter(value: Any) -> Any:
    if value is not None and not isinstance(value, str):
        raise fail("filter must be text found in tensor names, e.g. 'self_attn' or 'mlp'")
    return value


class TEntry(Strict):
    """One `{filter, value}` entry of t (mergekit's `ConditionalParameter`, which ignores
    unknown keys: a misspelt `filter` would silently apply the entry to every tensor)."""

    IN: ClassVar[str] = " in a t entry"
    UNKNOWN_HINT: ClassVar[str] = " Entries take: "
    MISSING: ClassVar[dict[str, str]] = {
        "value": "this t entry has no 'value'; add one, e.g. 'value: 0.5'"
    }
    value: Any = Field(description="a number in [0, 1] or a list of anchors, e.g. 0.5")
    filter: Any = Field(None, description="text found in tensor names, e.g. self_attn")

    _value = field_validator("value", mode="plain")(lambda cls, v: _t_value(v))
    _filter = field_validator("filter", mode="plain")(lambda cls, v: _filter(v))


_ENTRIES = TypeAdapter(list[TEntry])


def _setting(value: Any) -> Any:
    """t: a number, a list of anchors, one entry or a list of entries (shape picked first, so
    a bad value gets one message in the shape the user chose, not one per union member)."""
    if isinstance(value, dict):
        return TEntry.model_validate(value).model_dump(exclude_unset=True)
    if isinstance(value, list):
        if not value:
            # mergekit resolves an empty list to "not set" and stops at the first tensor
            raise fail(f"t is an empty list; t must be {SETTING_FORMS}")
        if all(isinstance(e, dict) for e in value):
            return [e.model_dump(exclude_unset=True) for e in _ENTRIES.validate_python(value)]
        if any(isinstance(e, dict) for e in value):
            raise fail(
                f"t mixes {{filter, value}} entries with plain values; t must be {SETTING_FORMS}"
            )
        raise_all(_anchor_errors(value), value)
        return value
    if not _is_scalar(value):
        raise fail(f"t is {kind(value)}; t must be {SETTING_FORMS}")
    if message := _t_number(value):
        raise fail(message)
    return value


class SlerpParameters(Strict):
    """`parameters:` of a SLERP merge: t alone (`SLERP_PARAMETERS` is checked against
    mergekit's own spec of the method by the tests)."""

    NOUN: ClassVar[str] = "SLERP parameter"
    UNKNOWN_HINT: ClassVar[str] = " SLERP takes: "
    NESTED: ClassVar[dict[str, type[BaseModel]]] = {"t": TEntry}
    t: Any = Field(None, description=SETTING_FORMS)

    _t = field_validator("t", mode="plain")(lambda cls, v: _setting(v))


SLERP_PARAMETERS = tuple(SlerpParameters.model_fields)

Parameters = Annotated[
    SlerpParameters, must_be("a mapping of SLERP parameters, e.g. {t: 0.5}", dict)
]


def _one_line(value: str) -> str:
    """Names, ids and paths are printed on their own: a control character in one (a newline
    before `::error`) would reach the terminal and GitHub's log as it is."""
    if not value.isprintable():
        raise fail(f"{value!r} holds a control character; names and paths are plain text")
    return value


MODEL_REF_FORMS = (
    "a model id or path ('org/name', 'org/name@revision', './local/dir'), or mergekit's "
    "mapping {model: {path: org/name, revision: main}}"
)
_NO_LORA = (
    "a LoRA adapter is not merged here: merge it into its model first (peft's "
    "merge_and_unload), save or publish the result and name that model"
)
_MODEL_REF_KEYS = ("model", "lora", "override_architecture")


def model_ref_text(value: Any) -> Any:
    """A model reference in mergekit's string form, the one the rest of the service uses.

    mergekit (`common.ModelReference`) also reads a mapping, `{model: org/name}` or
    `{model: {path: org/name, revision: abc123}}`: that becomes `"org/name@abc123"`, what
    mergekit's own `str(ModelReference)` gives, so the lock, the parents and the plan see one
    spelling of each parent. A LoRA (`lora:`, or mergekit's `"model+adapter"`) and
    `override_architecture` are refused, each with what to do. Anything else is returned as
    it is, for the string checks to judge.
    """
    if isinstance(value, str) and "+" in value:
        raise fail(f"'{value}': mergekit reads 'model+adapter' as a LoRA; {_NO_LORA}")
    if not isinstance(value, dict):
        return value
    if value.get("lora") is not None:
        raise fail(_NO_LORA)
    if value.get("override_architecture") is not None:
        raise fail(
            "override_architecture is not supported: both parents are merged as their "
            "config.json declares them; remove it"
        )
    model = value.get("model")
    if isinstance(model, dict) and set(model) <= {"path", "revision"}:
        path, revision = model.get("path"), model.get("revision")
        if isinstance(path, str) and "@" not in path and isinstance(revision, str | None):
            model = f"{path}@{revision}" if revision else path
    if not isinstance(model, str) or set(value) - set(_MODEL_REF_KEYS):
        raise fail(f"a model reference is {MODEL_REF_FORMS}")
    return model_ref_text(model)


def model_refs_as_text(merge: dict[str, Any]) -> dict[str, Any]:
    """A copy of a validated mergekit config with every model reference in its string form."""

    def walk(value: Any, key: Any = None) -> Any:
        if key in ("model", "base_model"):
            return model_ref_text(value)
        if isinstance(value, dict):
            return {k: walk(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(merge)


Name = Annotated[str, AfterValidator(_one_line)]
Texts = Annotated[list[Name], must_be("a list of strings", list)]
# Validators listed last run first: mergekit's mapping form becomes a string before the checks.
ModelRef = Annotated[
    str,
    must_be(MODEL_REF_FORMS),
    AfterValidator(_one_line),
    BeforeValidator(model_ref_text),
]
Section = must_be("a mapping of settings", dict)


# ---------------------------------------------------------------------------------------------
# the mergekit part


class InputSlice(Strict):
    model: ModelRef
    layer_range: Annotated[tuple[int, int], must_be("a list of 2 whole numbers, e.g. '[0, 32]'")]
    parameters: Parameters = None  # type: ignore[assignment]  # null is refused, absence not


class InputModel(Strict):
    model: ModelRef
    parameters: Parameters = None  # type: ignore[assignment]


class OutputSlice(Strict):
    MISSING: ClassVar[dict[str, str]] = {
        "sources": "this slice has no 'sources'; list the two parents with their layer_range"
    }
    sources: Annotated[list[InputSlice], must_be("a list of {model, layer_range}", list)]
    base_model: ModelRef | None = None
    residual_weight: Annotated[float, Field(allow_inf_nan=False), must_be("a finite number")] = None  # type: ignore[assignment]
    parameters: Parameters = None  # type: ignore[assignment]


def _dtype(field: str, hinted: bool):
    def check(value: Any) -> Any:
        if value is None or value in KNOWN_DTYPES:
            return value
        if hinted and isinstance(value, str):
            hint = closest(value, list(KNOWN_DTYPES), " Use one of: " + ", ".join(KNOWN_DTYPES))
            raise fail(f"unknown {field} '{value}'.{hint}")
        raise fail(f"unknown {field} '{value}'; use one of: {', '.join(KNOWN_DTYPES)}")

    return check


def _merge_method(value: Any) -> Any:
    if value is None:
        raise fail(
            "merge_method is empty; this service publishes SLERP merges: 'merge_method: slerp'"
        )
    if value != "slerp":
        raise fail(
            f"merge_method '{value}' is not supported: this service "
            "publishes SLERP merges only; use 'merge_method: slerp'"
        )
    return value


def _modules(value: Any) -> Any:
    raise fail("'modules:' is not supported by this service; use 'slices:' or 'models:'")


class SlerpConfig(Strict):
    """The mergekit part of a recipe, limited to what the service publishes. `tokenizer` is
    left to mergekit's own `TokenizerConfig` when the config is built."""

    MISSING: ClassVar[dict[str, str]] = {
        "merge_method": "missing 'merge_method'; this service publishes SLERP "
        "merges: add 'merge_method: slerp'",
        "base_model": "missing 'base_model'; SLERP needs it (t=0 gives the base "
        "model): add 'base_model: <one of the two parents>'",
    }
    modules: Any = None
    slices: Annotated[
        list[OutputSlice], must_be("a list of slices, each with 'sources:'", list)
    ] = None  # type: ignore[assignment]
    models: Annotated[list[InputModel], must_be("a list of {model}", list)] = None  # type: ignore[assignment]
    merge_method: Any
    base_model: ModelRef
    dtype: Any = None
    tokenizer_source: Annotated[str, must_be("'union', 'base' or a model id")] | None = None
    tokenizer: Annotated[dict[str, Any], must_be("a mapping")] = None  # type: ignore[assignment]
    chat_template: str | None = None
    out_dtype: Any = None
    parameters: Parameters = None  # type: ignore[assignment]

    @model_validator(mode="after")
    def _slices_or_models(self) -> SlerpConfig:
        if self.slices and self.models:
            raise_all([(("models",), "give either 'slices:' or 'models:', not both")], self)
        if not self.slices and not self.models and self.modules is None:
            raise fail(
                "missing 'slices:'; list the output slices with their two sources "
                "(or the two parents under 'models:')"
            )
        return self

    _modules = field_validator("modules", mode="plain")(lambda cls, v: _modules(v))
    _method = field_validator("merge_method", mode="plain")(lambda cls, v: _merge_method(v))
    _dtype = field_validator("dtype", mode="plain")(lambda cls, v: _dtype("dtype", True)(v))
    _out_dtype = field_validator("out_dtype", mode="plain")(
        lambda cls, v: _dtype("out_dtype", False)(v)
    )


# ---------------------------------------------------------------------------------------------
# the publish block


def repo_id_problem(repo_id: str) -> str | None:
    """Why the Hub would refuse `repo_id`, or None when it is fine."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        # huggingface_hub's messages repeat the id; the caller already quotes it
        return str(exc).replace(f": '{repo_id}'", "").replace(f" '{repo_id}'", "").rstrip(".")
    if not REPO_ID_RE.match(repo_id):
        # huggingface_hub's \w also lets non-ASCII letters and a leading '_' through
        return "use ASCII letters, digits, '-', '_' and '.', starting with a letter or digit"
    return None


class PublishModel(Strict):
    """A mapping under `publish:`: unknown keys are named as publish settings."""

    IN: ClassVar[str] = " in publish settings"


class SmokePrompt(PublishModel):
    """One smoke-test conversation: an optional system message and a user message."""

    MISSING: ClassVar[dict[str, str]] = {
        "user": "this prompt has no 'user'; add one, e.g. 'user: What is the capital of France?'"
    }
    user: str
    system: str | None = None


DEFAULT_SMOKE_PROMPTS = [
    SmokePrompt(user="What is the capital of France?"),
    SmokePrompt(system="You are a helpful assistant.", user="Tell me a short story about a cat."),
]


class SmokeSettings(PublishModel):
    """How the merged model is smoke-tested through its chat template."""

    prompts: list[SmokePrompt] = Field(default_factory=lambda: list(DEFAULT_SMOKE_PROMPTS))
    max_new_tokens: int = Field(default=32, ge=1, le=4096)
    # A degenerate reply (empty, or one token repeated) is a warning on the card; strict fails.
    strict: bool = False

    @field_validator("prompts")
    @classmethod
    def _some_prompts(cls, prompts: list[SmokePrompt]) -> list[SmokePrompt]:
        if not prompts:
            raise fail("smoke.prompts is empty; give at least one prompt or remove the key")
        return prompts


class EvalSettings(PublishModel):
    """Which lm-evaluation-harness tasks run, and how."""

    suite: Name | None = None
    tasks: Texts = Field(default_factory=list)
    # samples per task: a fraction of each task below 1, else a whole number of samples
    limit: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    num_fewshot: int | None = Field(default=None, ge=0, le=MAX_FEWSHOT)
    batch_size: Annotated[
        Annotated[int, Field(ge=1, le=MAX_BATCH_SIZE)] | Literal["auto"] | None,
        must_be(f"a whole number or 'auto' (from 1 to {MAX_BATCH_SIZE})"),
    ] = None
    apply_chat_template: bool = False
    include_paths: Texts = Field(default_factory=list)
    backend: Literal["hf", "vllm"] = "hf"
    # What lm-eval loads the merged weights as; "auto" keeps the checkpoint's dtype.
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    # Evaluate both parents the same way, so the card compares the merge with them.
    parents: bool = True
    # Custom tasks may run Python (`!function` hooks, .py files): only when the recipe says so.
    allow_code: bool = False
    # GPUs the evaluation uses: "auto" (all present) or a count; see publisher/parallel.py.
    parallel: Annotated[
        Literal["auto"] | Annotated[int, Field(ge=1)],
        must_be("'auto' or a number of GPUs (1 or more)"),
    ] = "auto"

    @field_validator("limit", mode="before")
    @classmethod
    def _samples(cls, limit: Any) -> Any:
        if isinstance(limit, bool) or (
            isinstance(limit, float) and limit > 1 and not limit.is_integer()
        ):
            raise fail(
                f"eval limit {limit} is neither a fraction below 1 nor a whole number of "
                "samples; use e.g. 0.1 or 100"
            )
        return limit


class MergeSettings(PublishModel):
    """Options passed to mergekit's `MergeOptions`.

    The performance options a recipe leaves out are chosen per merge from the model's size,
    free memory and the device (`publisher.merge_tuning`); the ones it sets are kept.
    """

    cuda: bool = False
    lazy_unpickle: bool = False
    low_cpu_memory: bool = False
    out_shard_size: str | int = "5B"
    async_write: bool = False
    write_threads: int = Field(default=1, ge=1, le=64)
    num_threads: int | None = Field(default=None, ge=1, le=1024)
    # Not a MergeOptions field: how mergekit's safetensors loader reads the parents
    # (safetensors' `backend`): "mmap" maps the files, "pread" copies tensor by tensor.
    parent_reads: Literal["mmap", "pread"] = "mmap"

    @field_validator("out_shard_size", mode="plain")
    @classmethod
    def _shard_size(cls, value: Any) -> Any:
        from mergekit.common import parse_kmb

        try:
            size = -1 if isinstance(value, bool) else parse_kmb(value)
        except (ValueError, IndexError, TypeError, AttributeError):
            size = -1
        if not 0 < size <= MAX_SHARD_BYTES:
            raise fail(
                f"out_shard_size {value!r} is not a size like 5B, 500M or 1000000 "
                "(bytes per output shard, more than 0)"
            )
        return value


class PublishSettings(PublishModel):
    """The `publish:` block of a recipe. Every field has a default, so it may be left out."""

    repo_id: str | None = None
    license: str | None = None
    private: bool = False
    description: str | None = None
    tags: Texts = Field(default_factory=list)
    # Claimed on the card only when the recipe gives it.
    language: Texts = Field(default_factory=list)
    chat_template: str | None = None
    smoke: Annotated[SmokeSettings, Section] = Field(default_factory=SmokeSettings)
    eval: Annotated[EvalSettings, Section] = Field(default_factory=EvalSettings)
    merge: Annotated[MergeSettings, Section] = Field(default_factory=MergeSettings)
    templates: Name | None = None
    push: bool = False
    create_pr: bool = False
    trust_remote_code: bool = False
    allow_pickle: bool = False

    @field_validator("repo_id")
    @classmethod
    def _hub_repo_id(cls, repo_id: str | None) -> str | None:
        if repo_id is not None and (reason := repo_id_problem(repo_id)):
            raise fail(
                f"'{repo_id}' is not a valid Hub repo id ({reason}); "
                "set publish.repo_id to 'namespace/name'"
            )
        return repo_id

    @field_validator("license")
    @classmethod
    def _hub_license(cls, license: str | None) -> str | None:
        if license is not None and license not in HUB_LICENSES:
            hint = closest(
                license, sorted(HUB_LICENSES), " Use an id such as apache-2.0, mit or other."
            )
            raise fail(f"'{license}' is not a Hub license id.{hint}")
        return license
