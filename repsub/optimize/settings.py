"""The optimization settings, each declared once with what it is to the rest of repsub.

A setting is a field of `OptimSettings` made by `setting(...)`, whose `Setting` says:
  meaning  its value changes what a units row means: rows of another value are not mixed in a table
           (repsub.runstore.provenance.units_meaning)
  reused   a command writing into an existing run takes the run's value unless given
           (repsub.commands.extend)
  help     the help of its `repsub visualize` option --NAME (None: no option); an option of a reused setting
           that does not say its default says "the run's, else <default>" (repsub.cli)
  choices, minimum, maximum, positive: its valid values (`validate`, which the commands and the sweep config
           call; the option offers the choices)
Every list of settings derives from these fields (`declared`), so a new setting is added here alone, and a
subclass of OptimSettings with more settings works with every consumer that is given it.

Light on purpose (no torch): the command line builds its options from it without loading the library.
"""

from __future__ import annotations

from dataclasses import Field, asdict, dataclass, field, fields

from repsub.errors import UsageError
from repsub.validate import check_int, check_number

# The valid names, without torch: repsub.optimize.param.PARAMETERIZATIONS and
# repsub.capture.precision.PRECISIONS hold the implementations (tests/test_settings.py checks they agree).
OWN_TERMS = ("hybrid", "post", "pre")  # how the unit's own term is climbed (repsub.optimize.objectives)
PARAMETERIZATION_NAMES = ("fourier", "pixel")
PRECISIONS = ("auto", "fp32", "bf16")
SETTING = "repsub.setting"  # the key of a field's metadata that holds its Setting


def precision_help(what: str) -> str:
    """The help of a --precision option (the optimization's and the selectivity forward's)."""
    return (
        f"{what} precision: bf16 where the hardware runs it fast (auto), or fp32/bf16; what is recorded is "
        "computed in fp32 (default auto)"
    )


@dataclass(frozen=True)
class Setting:
    """What one optimization setting is to the commands, the run's records and the command line."""

    meaning: bool = False  # changes what a units row means (not mixed with rows of another value)
    reused: bool = False  # taken from the run by a command extending it, unless given
    help: str | None = None  # the help of its command-line option; None: no option
    choices: tuple[str, ...] | None = None
    minimum: float = 0.0  # numbers: the least valid value (above it when `positive`)
    maximum: float | None = None
    positive: bool = False


def setting(default, **declared) -> Field:
    """A field of OptimSettings (or a subclass) with its Setting (the keywords of Setting)."""
    return field(default=default, metadata={SETTING: Setting(**declared)})


def declared(settings=None) -> list[tuple[str, object, Setting]]:
    """(name, default, Setting) of every setting of the class `settings` (default OptimSettings), in
    declaration order; a field without a Setting is a plain field (not reused, no meaning, no option)."""
    cls = settings or OptimSettings
    return [(f.name, f.default, f.metadata.get(SETTING) or Setting()) for f in fields(cls)]


def meaning_names(settings=None) -> tuple[str, ...]:
    """The settings that define what a units row means (repsub.runstore.provenance)."""
    return tuple(name for name, _, declared_as in declared(settings) if declared_as.meaning)


def reused_names(settings=None) -> tuple[str, ...]:
    """The settings a command extending a run takes from it (repsub.commands.extend)."""
    return tuple(name for name, _, declared_as in declared(settings) if declared_as.reused)


def option_name(name: str) -> str:
    return f"--{name.replace('_', '-')}"


@dataclass(frozen=True)
class OptimSettings:
    """How images are optimized. Defaults follow common feature-visualization practice (Lucid), except
    `own_term`, chosen by measurement (docs/science.md)."""

    steps: int = setting(256, reused=True, help="optimization steps", minimum=1)
    lr: float = setting(0.05, reused=True, help="Adam learning rate", positive=True)
    image_size: int = setting(
        224,
        meaning=True,
        reused=True,
        help="image side (default: the run's, else the model's: 224 for vgg16, 32 for the paper's models)",
        minimum=1,
    )
    param: str = setting(  # "fourier" (decorrelated colour) or "pixel"
        "fourier", meaning=True, reused=True, help="image parameterization", choices=PARAMETERIZATION_NAMES
    )
    # The random transforms; beyond their maximum no image is left.
    jitter: float = setting(0.03, meaning=True, reused=True, maximum=0.5)  # max shift, fraction of the side
    scale: float = setting(0.05, meaning=True, reused=True, maximum=0.99)  # zoom drawn in [1 - s, 1 + s]
    rotate: float = setting(5.0, meaning=True, reused=True, maximum=180.0)  # max rotation, degrees
    rescue_rounds: int = setting(
        3,
        reused=True,
        help="a target whose own activation is still <= 0 after --steps goes on from its image for up to this "
        "many more rounds of --steps steps, until it responds; its row records the steps it took (0: no rescue)",
        minimum=0,
    )
    batch_size: int = setting(64, reused=True, help="units optimized together", minimum=1)
    own_term: str = setting(
        "hybrid",
        meaning=True,
        reused=True,
        help="how the unit's own term is climbed: hybrid (post-ReLU while > 0, else pre-ReLU, so units that "
        "start at 0 move), post, pre; recorded values are post-ReLU in every case",
        choices=OWN_TERMS,
    )
    # Of the steps (repsub.capture.precision): not reused, as it depends on the hardware, not the results.
    precision: str = setting("auto", help=precision_help("the optimization steps'"), choices=PRECISIONS)

    def validate(self) -> None:
        """Each setting within its declared values: a UsageError naming its option (its key without one)."""
        for name, default, declared_as in declared(type(self)):
            value = getattr(self, name)
            named = option_name(name) if declared_as.help else name
            if declared_as.choices is not None:
                if value not in declared_as.choices:
                    valid = ", ".join(declared_as.choices)
                    raise UsageError(f"unknown {name.replace('_', '-')} {value!r}; valid: {valid}")
            elif isinstance(default, bool) or not isinstance(default, int | float):
                continue  # no declared range
            elif isinstance(default, int):
                check_int(value, named, int(declared_as.minimum))
            else:
                number = check_number(value, named, declared_as.minimum, positive=declared_as.positive)
                if declared_as.maximum is not None and number > declared_as.maximum:
                    raise UsageError(f"{named} must be at most {declared_as.maximum}, got {value}")

    def to_dict(self) -> dict:
        return asdict(self)
