"""Each protection method's settings as one typed, frozen object, parsed by the method's rules.

A profile's keys (other than ``method``, ``require_pixel_data`` and ``on_unprotectable``) are the
method's: :func:`~.registry.parse_options` turns them into the method's options class below, or
raises :class:`OptionError` naming the key and the problem, which the configuration reports with
the file and the key's path. Every field declares its default and its check in one place
(:func:`option`); ``DEFAULTS`` in a method's module, the documentation's defaults and the
example configuration all come from these fields (a test compares them).

Torch-free: the configuration and the command line read options without loading a method.
Checking the surrogate files themselves (they load, and fit the method) does need torch; a
profile that names surrogates has the ``protect`` extra (the registry checks that first).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Self

from ..errors import GatewayError, SurrogateError
from .diversity import TRANSFORMS
from .ensemble_folder import ensemble_files

__all__ = [
    "EPSILON_FORMS",
    "NoneOptions",
    "OptionError",
    "Options",
    "PerturbationOptions",
    "UnlearnableOptions",
    "WatermarkOptions",
    "option",
    "parse_epsilon",
]

EPSILON_FORMS = "a fraction of the normalized range in (0, 0.25], or N/255 (e.g. 8/255)"
_EPSILON_STEPS = 255  # the one explicit denominator: N/255 is N grey levels of an 8-bit image
Check = Callable[[Any], Any]  # the typed value, or ValueError naming the problem


class OptionError(GatewayError):
    """A method setting that cannot be used: ``key`` and ``problem`` for the user."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


def _is_number(value: Any, low: float, high: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high


def parse_epsilon(value: Any) -> float:
    """An L-infinity budget as a fraction of the normalized [0, 1] range.

    The profile key ``epsilon`` and ``protect-dataset --epsilon`` both take it, in one unit: a
    fraction (``0.0314``, a number or its text) or the explicit form ``"N/255"`` (``"8/255"``),
    because "8" alone was read as 8/255 by one entry point and as 8 by the other. Raises
    :class:`ValueError` naming the accepted forms.
    """
    fraction = value
    if isinstance(value, str):
        number, slash, steps = value.strip().partition("/")
        try:
            fraction = float(number) / (int(steps) if slash else 1)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"{value!r} is not {EPSILON_FORMS}") from None
        if slash and int(steps) != _EPSILON_STEPS:
            raise ValueError(f"{value!r}: write the budget as N/255 or as a fraction")
    if not _is_number(fraction, 0, 0.25) or fraction == 0:
        hint = " (a bare N is a fraction, not N/255)" if _is_number(fraction, 1, 255) else ""
        raise ValueError(f"{value!r} is not {EPSILON_FORMS}{hint}")
    return float(fraction)


# -- checks: each returns the typed value or raises ValueError with the problem ------------
def integer(low: int, high: int, *, also: tuple[Any, ...] = ()) -> Check:
    """An integer (not a bool) in ``[low, high]``, or one of the values ``also`` allows."""
    def check(value: Any) -> Any:
        if value in also and not isinstance(value, bool):
            return value
        if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
            return value
        extra = "".join(f" or {'null' if a is None else a}" for a in also)
        raise ValueError(f"must be an integer in [{low}, {high}]{extra}")
    return check


def number(low: float, high: float, *, open_low: bool = False, why: str = "") -> Check:
    """A number (not a bool) in ``[low, high]`` (``(low, high]`` with ``open_low``)."""
    def check(value: Any) -> float:
        if _is_number(value, low, high) and not (open_low and value == low):
            return float(value)
        raise ValueError(f"must be a number in {'(' if open_low else '['}{low:g}, {high:g}]{why}")
    return check


def choice(*values: str) -> Check:
    def check(value: Any) -> str:
        if value in values:
            return str(value)
        raise ValueError(f"must be one of {', '.join(values)}")
    return check


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError("must be true or false")


def text(value: Any) -> str:
    if isinstance(value, str) and value:
        return value
    raise ValueError("must be a non-empty text")


def epsilon(value: Any) -> float:
    return parse_epsilon(value)


def option(default: Any = MISSING, check: Check | None = None, *, path: bool = False,
           required: str = "") -> Any:
    """A field of an options class: its default (none: ``required``, the message when it is
    missing), its ``check``, and whether its text values are paths relative to the
    configuration file."""
    metadata = {"check": check, "path": path, "required": required}
    if isinstance(default, (list, dict)):
        raise TypeError("use a tuple or None as a default")
    return field(default=default, metadata=metadata)


def surrogate_files(value: Any) -> tuple[Path, ...]:
    """A non-empty list of surrogate model files, each one loadable; a folder that
    ``train-surrogate --ensemble`` wrote stands for its files (:mod:`.ensemble_folder`)."""
    if not isinstance(value, (list, tuple)) or not value or \
            not all(isinstance(p, (str, Path)) for p in value):
        raise ValueError("required: a list of surrogate model files (or ensemble folders)")
    paths = tuple(f for p in map(Path, value)
                  for f in (ensemble_files(p) if p.is_dir() else (p,)))
    for p in paths:
        if not p.is_file():
            raise ValueError(f"surrogate file not found: {p}")
        from .surrogate import load_surrogate  # torch: the registry checked the extra

        try:
            load_surrogate(p)
        except SurrogateError as exc:
            raise ValueError(str(exc)) from None
    return paths


def optional_file(value: Any) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, (str, Path)) or not Path(value).is_file():
        raise ValueError(f"file not found: {value}")
    return Path(value)


class Options:
    """What every options class shares: parsing, defaults, and the plain-values view."""

    method: ClassVar[str]

    @classmethod
    def parse(cls, raw: Mapping[str, Any], base_dir: Path | None = None) -> Self:
        """The options ``raw`` (a profile's keys) stand for; :class:`OptionError` if unusable.
        Relative paths are resolved against ``base_dir`` (the configuration file's folder)."""
        known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
        for key in raw:
            if key not in known:
                if not known:
                    raise OptionError(str(key), f"unknown key: method {cls.method!r} takes no "
                                      "settings")
                raise OptionError(str(key), f"unknown key (allowed: {', '.join(sorted(known))})")
        values: dict[str, Any] = {}
        for name, f in known.items():
            if name not in raw or (raw[name] is None and f.default in (None, MISSING)):
                if f.default is MISSING:  # null for a setting that may be null: its default
                    raise OptionError(name, f.metadata["required"] or "required")
                continue
            values[name] = cls._checked(f, _resolved(raw[name], base_dir, f.metadata["path"]))
        options = cls(**values)
        options.check()
        return options

    @staticmethod
    def _checked(f: Field[Any], value: Any) -> Any:
        check = f.metadata["check"]
        try:
            return check(value) if check is not None else value
        except ValueError as exc:
            raise OptionError(f.name, str(exc)) from None

    def check(self) -> None:
        """Checks across fields (a class overrides it); raise :class:`OptionError`."""

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The fields that have a default, with it."""
        return {f.name: f.default for f in fields(cls)  # type: ignore[arg-type]
                if f.default is not MISSING}

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, Any]:
        def plain(v: Any) -> Any:
            if isinstance(v, Path):
                return str(v)
            if isinstance(v, (tuple, list)):
                return [plain(x) for x in v]
            return v
        return {k: plain(v) for k, v in asdict(self).items()}  # type: ignore[call-overload]


def _resolved(value: Any, base_dir: Path | None, is_path: bool) -> Any:
    if not is_path or base_dir is None:
        return value
    if isinstance(value, str):
        return str(base_dir / value)
    if isinstance(value, list):
        return [str(base_dir / v) if isinstance(v, str) else v for v in value]
    return value


@dataclass(frozen=True)
class NoneOptions(Options):
    """Method ``none`` takes no settings."""

    method: ClassVar[str] = "none"


_SURROGATES = "required: a list of surrogate model files"


@dataclass(frozen=True)
class PerturbationOptions(Options):
    """``adversarial_perturbation``: MI-FGSM with input diversity against the surrogates
    (:mod:`.perturbation`), with the transfer levers of decision 0014."""

    method: ClassVar[str] = "adversarial_perturbation"
    surrogates: tuple[Path, ...] = option(check=surrogate_files, path=True, required=_SURROGATES)
    epsilon: float = option(8 / 255, epsilon)
    steps: int = option(10, integer(1, 1000))
    momentum: float = option(1.0, number(0, 10))
    diversity: float = option(0.5, number(0, 1))
    batch: int | str = option("auto", integer(1, 4096, also=("auto",)))
    loss: str = option("ce", choice("ce", "margin", "focus", "feature", "fia"))
    smoothing: int | str = option("auto", integer(0, 63, also=("auto",)))
    scales: int = option(1, integer(0, 8))
    balance: bool = option(False, boolean)
    transform: str = option("augment", choice(*TRANSFORMS, "auto"))
    copies: int = option(1, integer(1, 64))
    snapshots_per_step: int = option(0, integer(0, 64))
    skip_gamma: float = option(1.0, number(0, 1, open_low=True))
    polish: int = option(0, integer(0, 1000))


@dataclass(frozen=True)
class WatermarkOptions(Options):
    """``adversarial_watermark``: a visible mark placed and textured to fool the surrogates
    (:mod:`.watermark`)."""

    method: ClassVar[str] = "adversarial_watermark"
    surrogates: tuple[Path, ...] = option(check=surrogate_files, path=True, required=_SURROGATES)
    logo: Path | None = option(None, optional_file, path=True)
    logo_style: str = option("solid", choice("solid", "badge", "text"))
    logo_text: str = option("PROTECTED", text)
    max_area_fraction: float = option(1 / 16, number(0, 0.25, open_low=True))
    alpha_min: float = option(0.4, number(0, 1))
    alpha_max: float = option(1.0, number(0, 1))
    max_rotation: float = option(15.0, number(0, 180))
    keepout_saliency: float = option(0.25, number(0, 0.9))
    population: int = option(48, integer(4, 4096))
    generations: int = option(10, integer(1, 1000))
    texture: float = option(0.5, number(0, 1))
    texture_steps: int = option(20, integer(0, 1000))
    jpeg: bool = option(True, boolean)
    scoring: str = option("surrogate", choice("surrogate", "full"))

    def check(self) -> None:
        if self.alpha_min > self.alpha_max or self.alpha_max == 0:
            raise OptionError("alpha_max", "must be > 0 and >= alpha_min")


@dataclass(frozen=True)
class UnlearnableOptions(Options):
    """``unlearnable``: error-minimizing noise over a series (:mod:`.unlearnable`); the same
    defaults apply to ``protect-dataset``. ``rounds`` None: by task (decision 0009)."""

    method: ClassVar[str] = "unlearnable"
    surrogates: tuple[Path, ...] = option(check=surrogate_files, path=True, required=_SURROGATES)
    epsilon: float = option(8 / 255, epsilon)
    contour_radius: int = option(3, integer(0, 1000))
    texture_floor: float = option(0.25, number(0, 1, why=" (share of epsilon in flat regions)"))
    rounds: int | None = option(None, integer(0, 1000, also=(None,)))
    train_steps: int = option(5, integer(0, 1000))
    pgd_steps: int = option(5, integer(0, 1000))
    lr: float = option(1e-3, number(0, 1, open_low=True,
                                    why=" (the surrogate's learning rate in min-min)"))
    init: str = option("pattern", choice("pattern", "zero"))
    label_tag: str | None = option(None, text)
    classes: tuple[str, ...] | None = option(None, lambda v: _labels(v))

    def check(self) -> None:
        if len(self.surrogates) != 1:
            raise OptionError("surrogates", "unlearnable takes exactly one surrogate (its "
                              "starting point)")
        from .surrogate import load_surrogate

        info = load_surrogate(self.surrogates[0]).info
        if info.task != "classification":
            return
        if self.label_tag is None:
            raise OptionError("label_tag", "required with a classifier surrogate: the tag "
                              "holding labels")
        from pydicom.tag import Tag

        try:
            Tag(self.label_tag)
        except (ValueError, TypeError, OverflowError):
            raise OptionError("label_tag", f"not a DICOM keyword or tag: "
                              f"{self.label_tag!r}") from None
        if self.classes is None:
            raise OptionError("classes", "required with a classifier surrogate: the label "
                              "values in order")
        if len(self.classes) > len(info.classes):
            raise OptionError("classes", f"{len(self.classes)} values, but the surrogate has "
                              f"only {len(info.classes)} classes: at most one value per class, "
                              "in the surrogate's order")


def _labels(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) < 2:
        raise ValueError("required with a classifier surrogate: the label values in order")
    return tuple(str(v) for v in value)
