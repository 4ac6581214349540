"""Checks shared by the schedules' ``validate`` (``schedules/*.py``).

The schedules folder is data loaded by path (``resources.load_schedule``), not a package, so
what its modules share lives here.  Every check raises, or reports, ``ValueError`` text in one
wording across schedules.
"""
from __future__ import annotations


def check_known(config, knobs, schedule: str) -> None:
    """Raise if ``config`` names a knob that ``knobs`` (the schedule's ``KNOBS``) does not."""
    unknown = set(config) - set(knobs)
    if unknown:
        raise ValueError(f"unknown knob(s) {sorted(unknown)} for {schedule}; known: {sorted(knobs)}")


def check(config, knobs, schedule: str, problems) -> None:
    """``check_known``, then one ``ValueError`` listing every problem ``problems()`` (the
    schedule's own rules, run on a config of known knobs) finds."""
    check_known(config, knobs, schedule)
    found = problems()
    if found:
        raise ValueError(f"{schedule} config {config}: " + "; ".join(found))


def pow2_problem(name: str, value, lo: int, hi: int) -> str | None:
    """Why ``value`` is not a power of two in [lo, hi], or None when it is (for schedules that
    collect every problem of a config before raising)."""
    if isinstance(value, int) and lo <= value <= hi and value & (value - 1) == 0:
        return None
    return f"{name} must be a power of two in [{lo}, {hi}], got {value!r}"


def require_pow2(name: str, value, lo: int, hi: int) -> None:
    problem = pow2_problem(name, value, lo, hi)
    if problem:
        raise ValueError(problem)


def pow2_at_least(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(0, n - 1).bit_length()
