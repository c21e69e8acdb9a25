"""Which patch targets apply on the installed versions, and what lf-multilr says about each.

Every patch target names the versions it was verified on: the legs of the test matrix (docs/compatibility.md). A
version range is evidence, not a wall. On a version the target was not verified on, it still applies when it
resolves with the shape it was verified with (its signature), and one warning per run names the versions. A target
that is missing or changed, or a release older than the oldest verified one, is left stock and named; when it is
one the keys cannot work without (``essential``), setting a key is refused with the target's name, what changed,
and a fix. Another check, at run time, confirms the effect: the optimizer that steps must hold lf-multilr's groups.

Pure logic: the patches hand in what they found (the installed version, whether the name resolves, how its shape
differs) and act on the :class:`Decision`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from packaging.version import InvalidVersion, Version

#: The legs of the test matrix (Makefile, docs/compatibility.md): what each group of targets was verified on.
LLAMAFACTORY_CORE: tuple[str, ...] = ("0.9.4", "0.9.5", "0.9.6.dev0")
#: The releases the full suite (or, on main, every test of a target's behaviour and LlamaBoard's) ran on.
LLAMAFACTORY_FULL: tuple[str, ...] = ("0.9.5", "0.9.6.dev0")
LLAMAFACTORY_MAIN: tuple[str, ...] = ("0.9.6.dev0",)
TRANSFORMERS_CORE: tuple[str, ...] = ("4.57.1", "5.6.0", "5.7.0", "5.8.0")
TRANSFORMERS_5: tuple[str, ...] = ("5.6.0", "5.7.0", "5.8.0")
TRANSFORMERS_4: tuple[str, ...] = ("4.57.1",)
ACCELERATE_4: tuple[str, ...] = ("1.11.0",)

#: What to move to when a part is refused: verified pairs only, and never a release LLaMA-Factory itself excludes
#: (transformers 5.6.0 breaks FlashAttention 2; LLaMA-Factory's main excludes it and moves 0.9.5 users to 5.7.0).
RECOMMENDED = (
    "LLaMA-Factory main with transformers 5.8.0, LLaMA-Factory 0.9.5 with transformers 5.7.0 "
    "(DISABLE_VERSION_CHECK=1), or LLaMA-Factory 0.9.4 with transformers 4.57.1"
)


class Verdict(Enum):
    VERIFIED = "verified"
    #: Applied: the target resolves with its verified shape on a version it was not verified on.
    UNVERIFIED = "unverified"
    #: Left stock: the installed release is older than the oldest one the target was verified on.
    OLDER = "older"
    #: Left stock: the installed version has no such name.
    MISSING = "missing"
    #: Left stock: the name is there with another shape.
    CHANGED = "changed"
    #: Left stock: the name is missing here and a stand-in does its part (transformers 4.x).
    STOOD_IN = "stood in"
    #: Left stock: a stand-in for names this version has.
    NOT_NEEDED = "not needed"
    #: Left stock: an optional name this version does not have (another engine's parser, say).
    ABSENT = "absent"
    #: Left stock: an optional target on a release older than it was verified on, where nothing needs it (0.9.5's v1
    #: engine, which refuses lf-multilr's plugins by name).
    PREDATES = "predates"


APPLIED = frozenset({Verdict.VERIFIED, Verdict.UNVERIFIED})
#: Verdicts that take a part of lf-multilr away where it was expected to work.
LOST = frozenset({Verdict.OLDER, Verdict.MISSING, Verdict.CHANGED})


def parse(version: str | None) -> Version | None:
    try:
        return Version(version) if version else None
    except InvalidVersion:
        return None


def older_than_all(installed: str | None, verified: Sequence[str]) -> bool:
    """Whether ``installed`` is older than every version in ``verified`` (False when either cannot be read)."""
    mine, known = parse(installed), [v for v in map(parse, verified) if v is not None]
    return mine is not None and bool(known) and mine < min(known)


@dataclass(frozen=True)
class Decision:
    """What becomes of one patch target on the installed versions."""

    target: str
    verdict: Verdict
    package: str
    installed: str | None
    verified: tuple[str, ...]
    #: What lf-multilr does through this target, e.g. "the module param groups".
    role: str
    #: The keys cannot work without it: setting one is refused when it is lost.
    essential: bool = False
    #: What changed (CHANGED), or the names a stand-in replaces (STOOD_IN, NOT_NEEDED).
    detail: str = ""

    @property
    def applies(self) -> bool:
        return self.verdict in APPLIED

    @property
    def refuses_keys(self) -> bool:
        return self.essential and self.verdict in LOST

    @property
    def broken(self) -> bool:
        """Whether this is something to fix (``doctor`` exits non-zero): a changed or missing name, or a lost
        essential one. A stand-in's twin, an optional name or a part older than verified that the keys do not need
        is not."""
        return self.verdict in (Verdict.MISSING, Verdict.CHANGED) or self.refuses_keys

    @property
    def where(self) -> str:
        return f"{self.package} {self.installed or '(version unknown)'}"

    def verified_text(self) -> str:
        return f"verified on {self.package} {', '.join(self.verified)}"

    def why(self) -> str:
        """Why the target is left stock, as a clause (for the warning, the refusal and ``doctor``)."""
        if self.verdict is Verdict.OLDER:
            return f"{self.where} is older than the oldest release it was {self.verified_text()}"
        if self.verdict is Verdict.MISSING:
            return f"{self.where} has no `{self.target}`"
        if self.verdict is Verdict.CHANGED:
            return f"on {self.where} {self.detail}"
        if self.verdict is Verdict.STOOD_IN:
            return f"{self.where} has no such name; a stand-in does its part"
        if self.verdict is Verdict.NOT_NEEDED:
            return f"stands in for {self.detail}, which the installed version has"
        if self.verdict is Verdict.ABSENT:
            return f"{self.where} has no such name and needs none"
        if self.verdict is Verdict.PREDATES:
            return f"{self.where} is older than the oldest release it was {self.verified_text()}, and needs none"
        return ""

    def status(self) -> str:
        """``doctor``'s words for the target."""
        if self.verdict is Verdict.VERIFIED:
            return self.verified_text()
        if self.verdict is Verdict.UNVERIFIED:
            return f"unverified here ({self.where}): signature matches; {self.verified_text()}"
        if self.verdict in LOST:
            outcome = "REFUSED when an lf-multilr key is set" if self.essential else f"stock: {self.role} is off"
            return f"{outcome}: {self.why()}"
        return f"stock: {self.why()}"

    def warning(self) -> tuple[str, str] | None:
        """(the line to print once, its topic) when this target is lost here, or None.

        Every missing or changed target gets its own line; the targets a release is older than share one.
        """
        if self.verdict not in LOST:
            return None
        outcome = "lf-multilr keys are refused" if self.essential else f"{self.role} is off"
        if self.verdict is Verdict.OLDER:
            text = (
                f"{self.where} is older than the oldest release lf-multilr's patches were {self.verified_text()}: "
                f"they stay stock and {outcome} (`lf-multilr doctor` lists them). Verified pairs: {RECOMMENDED}."
            )
            return text, f"older {self.package} {self.verified}"
        text = f"not patching {self.target}: {self.why()}; {outcome}. Verified pairs: {RECOMMENDED}."
        return text, text


@dataclass(frozen=True)
class TargetFacts:
    """What is known of one patch target whose owner module is imported: the table's row and what was found.

    ``stand_in`` names the targets this one replaces where they are missing (``stand_in_needed`` says whether they
    are); ``stood_in`` says a stand-in replaces this one here. ``stock_safe`` targets (the keys in the parser, the
    checks) apply on older releases too, so that a key is refused with lf-multilr's words rather than an unknown-key
    error; ``optional`` ones may be absent without loss.
    """

    target: str
    package: str
    installed: str | None
    verified: Sequence[str]
    role: str
    exists: bool
    essential: bool = False
    stock_safe: bool = False
    optional: bool = False
    mismatch: str | None = None
    stand_in: str = ""
    stand_in_needed: bool = False
    stood_in: bool = False

    def decision(self, verdict: Verdict, detail: str = "") -> Decision:
        return Decision(
            self.target, verdict, self.package, self.installed, tuple(self.verified), self.role, self.essential, detail
        )


def decide(facts: TargetFacts) -> Decision:
    """The verdict for one target whose owner module is imported."""
    if facts.stand_in and not facts.stand_in_needed:
        return facts.decision(Verdict.NOT_NEEDED, facts.stand_in)
    if not facts.exists:
        if facts.stood_in:
            return facts.decision(Verdict.STOOD_IN)
        return facts.decision(Verdict.ABSENT if facts.optional else Verdict.MISSING)
    if facts.mismatch is not None:
        return facts.decision(Verdict.CHANGED, facts.mismatch)
    if facts.installed in facts.verified:
        return facts.decision(Verdict.VERIFIED)
    if older_than_all(facts.installed, facts.verified) and not facts.stock_safe:
        return facts.decision(Verdict.PREDATES if facts.optional else Verdict.OLDER)
    return facts.decision(Verdict.UNVERIFIED)


def unverified_line(decisions: Iterable[Decision]) -> str | None:
    """The one warning per run for the targets applied on versions they were not verified on (on a release older
    than verified, the line about its lost targets says it all)."""
    unverified = [
        decision
        for decision in decisions
        if decision.verdict is Verdict.UNVERIFIED and not older_than_all(decision.installed, decision.verified)
    ]
    if not unverified:
        return None
    packages: dict[str, tuple[str, set[str]]] = {}
    for decision in unverified:
        _, known = packages.setdefault(decision.package, (decision.installed or "(version unknown)", set()))
        known.update(decision.verified)
    named = "; ".join(
        f"{package} {installed} (verified: {', '.join(sorted(known, key=_order))})"
        for package, (installed, known) in packages.items()
    )
    return (
        f"unverified versions: {named}. {len(unverified)} patch targets keep the shape lf-multilr was verified on "
        "and are applied; the run checks that the optimizer holds the module groups. `lf-multilr doctor` lists them."
    )


def _order(version: str) -> tuple[bool, Version, str]:
    parsed = parse(version)
    return (parsed is None, parsed or Version("0"), version)


def keys_lost(decisions: Iterable[Decision]) -> tuple[str, str] | None:
    """(why, fix) for refusing the keys because essential targets are lost here; None when none is."""
    lost = [decision for decision in decisions if decision.refuses_keys]
    if not lost:
        return None
    why = "; ".join(f"`{decision.target}` ({decision.role}) is not patched: {decision.why()}" for decision in lost)
    fix = f"use a verified pair ({RECOMMENDED}), or remove the lf-multilr keys; `lf-multilr doctor` shows every target"
    return why, fix
