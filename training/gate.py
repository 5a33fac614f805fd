"""The promotion gate: a new model replaces the champion only when it is better and locks no more.

Both models are measured on the same held-out rows (the newest messages of the event
log) and, when a held-out simulator log is given, on the same replay. The candidate
passes when it is not worse than the champion beyond `tolerance` on any gate metric,
strictly better on at least one, and makes no more false locks in the replay.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True, slots=True)
class GatePolicy:
    metrics: tuple[str, ...] = ("pr_auc", "recall_at_fpr_1pct")
    tolerance: float = 0.002


@dataclass(slots=True)
class GateResult:
    passed: bool
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def judge(
    candidate: dict[str, float],
    champion: dict[str, float],
    policy: GatePolicy,
    candidate_false_locks: int | None = None,
    champion_false_locks: int | None = None,
) -> GateResult:
    reasons: list[str] = []
    worse, better = False, False
    for name in policy.metrics:
        new, old = candidate.get(name), champion.get(name)
        if new is None or old is None:
            raise KeyError(f"gate metric {name!r} is missing (known: {sorted(candidate)})")
        if new < old - policy.tolerance:
            worse = True
            reasons.append(f"{name} {new:.4f} is below the champion's {old:.4f}")
        elif new > old:
            better = True
            reasons.append(f"{name} {new:.4f} beats the champion's {old:.4f}")
        else:
            reasons.append(f"{name} {new:.4f} does not beat the champion's {old:.4f}")
    locks_up = (
        candidate_false_locks is not None
        and champion_false_locks is not None
        and candidate_false_locks > champion_false_locks
    )
    if candidate_false_locks is not None and champion_false_locks is not None:
        verb = "raises" if locks_up else "keeps"
        reasons.append(f"{verb} false locks in the held-out replay ({champion_false_locks} -> {candidate_false_locks})")
    else:
        reasons.append("no held-out replay: false locks not compared")
    return GateResult(passed=better and not worse and not locks_up, reasons=reasons)
