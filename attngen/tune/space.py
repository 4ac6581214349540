"""The search space of a spec on a target: the knobs its schedule declares, around its default.

A schedule module (``schedules/*.py``) declares ``KNOBS`` (name -> description), a heuristic
``default(spec, target)`` and ``validate(spec, target, config)``, which raises ``ValueError``
for a config the target cannot run (shared memory, threads, divisibility).  The space is
read from those alone, so a new schedule is tunable the day it lands:

* an integer knob ranges over its default times powers of two (1/8 .. 8): every tile, thread
  and lane knob in the schedules is a power of two or a divisor that halves cleanly;
* a string knob ranges over the double-quoted words of its description (``'"float32" or
  "input"'``);
* a schedule may instead list values itself in ``CANDIDATES`` (knob -> values).

Every combination is validated before it is offered, so an invalid candidate is never built.
Candidates are ordered by their distance from the default (knobs changed, then log2 steps),
so a trial budget explores the neighbourhood of the heuristic first; the default is first.
"""
from __future__ import annotations

import itertools
import math
import re

_SCALES = (1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8)


def schedule_module(spec, target):
    """The schedule module that lowers ``spec`` for ``target``, as the family's ``lower``
    dispatches: the softmax family sends supported CUDA decode specs to its decode kernel and
    supported CUDA prefill specs to its tensor-core kernel, everything else to the SIMT/CPU
    schedule of the target."""
    from ..family import family_of

    if family_of(spec).name != "softmax":
        from ..linear.lower import schedule_module as pick

        return pick(target, spec)
    from ..resources import load_schedule
    from ..softmax import lower as softmax_lower

    try:
        from ..softmax import decode
    except ImportError:
        decode = None
    try:
        from ..softmax import tensorcore
    except ImportError:
        tensorcore = None
    if decode is not None and decode.supports(spec, target, None):
        return decode.schedule_module(spec)
    if tensorcore is not None and tensorcore.supported(spec, target):
        return load_schedule(tensorcore.SCHEDULE)
    return softmax_lower.schedule_module(target)


def default_config(spec, target) -> dict:
    return dict(schedule_module(spec, target).default(spec, target))


def knob_values(sched, name: str, default) -> list:
    listed = getattr(sched, "CANDIDATES", {}).get(name)
    if listed is not None:
        return list(listed)
    if isinstance(default, bool):
        return [default, not default]
    if isinstance(default, int):
        return sorted({int(default * s) for s in _SCALES if default * s >= 1 and
                       float(default * s).is_integer()})
    if isinstance(default, str):
        words = re.findall(r'"([^"]+)"', sched.KNOBS.get(name, ""))
        return [default] + [w for w in words if w != default]
    return [default]


def is_valid(spec, target, config) -> bool:
    try:
        schedule_module(spec, target).validate(spec, target, dict(config))
    except (ValueError, TypeError, KeyError):
        return False
    return True


def candidates(spec, target, limit: int | None = None, fixed=()) -> list:
    """Valid configs, the default first, then by distance from it; at most ``limit``.

    Knobs named in ``fixed`` keep their default (a structural choice, like ``tile_map``,
    whose alternative is known to be slower, need not cost a build per candidate)."""
    sched = schedule_module(spec, target)
    base = dict(sched.default(spec, target))
    unknown = set(fixed) - set(base)
    if unknown:
        raise ValueError(f"cannot fix {sorted(unknown)}: the schedule's knobs are {sorted(base)}")
    names = sorted(base)
    axes = [[base[n]] if n in fixed else knob_values(sched, n, base[n]) for n in names]
    out = []
    for values in itertools.product(*axes):
        config = dict(zip(names, values))
        try:
            sched.validate(spec, target, dict(config))
        except (ValueError, TypeError, KeyError):
            continue
        out.append(config)
    out.sort(key=lambda c: _distance(c, base))
    if base not in out:
        # the default must be measurable: validate() has the last word on why it is not
        sched.validate(spec, target, dict(base))
    return out[:limit] if limit else out


def _distance(config: dict, base: dict):
    changed = [k for k in base if config[k] != base[k]]
    # log2 steps for positive int knobs; one step for any other change (a 0 = "off" default)
    steps = sum(abs(math.log2(config[k] / base[k])) if isinstance(base[k], int)
                and not isinstance(base[k], bool) and base[k] > 0 and config[k] > 0 else 1
                for k in changed)
    return (len(changed), steps, sorted(config.items(), key=str))


def config_id(config: dict) -> str:
    """A short, filesystem-safe, stable name of a config (``block_k32-kv_tile_input``)."""
    return "-".join(f"{k}{v}" if isinstance(v, int) else f"{k}_{_safe(v)}"
                    for k, v in sorted(config.items()))


def _safe(v) -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", str(v))
