"""An epsilon cap that refuses, rather than records, an over-budget step.

An accountant only *measures* what was spent; a budget *decides*. Keeping the
decision here means the refusal happens before any data is touched: a device
that cannot afford one more round does not train, and a server that cannot
afford one more round stops.
"""

from __future__ import annotations

import math
from typing import Any

from fedrec.errors import BudgetExhaustedError, PrivacyError
from fedrec.privacy.accounting import PrivacyAccountant


class PrivacyBudget:
    """A per-device or per-run epsilon budget over a :class:`PrivacyAccountant`.

    Parameters
    ----------
    epsilon
        The cap; ``math.inf`` never refuses.
    accountant
        Where the spent budget is recorded; shared, not copied, so the owner
        of the accountant sees every accepted step.
    """

    def __init__(self, *, epsilon: float, accountant: PrivacyAccountant) -> None:
        if (
            not isinstance(epsilon, (int, float))
            or isinstance(epsilon, bool)
            or math.isnan(epsilon)
            or epsilon <= 0
        ):
            raise PrivacyError(f"epsilon budget must be > 0 (inf allowed), got {epsilon!r}")
        self._epsilon = float(epsilon)
        self._accountant = accountant

    @property
    def epsilon_budget(self) -> float:
        """The cap."""
        return self._epsilon

    @property
    def accountant(self) -> PrivacyAccountant:
        """The accountant the budget records into."""
        return self._accountant

    @property
    def spent(self) -> float:
        """Epsilon spent so far."""
        return self._accountant.epsilon()

    @property
    def remaining(self) -> float:
        """Epsilon left; never negative."""
        return max(0.0, self._epsilon - self.spent)

    def allows(self, *, noise_multiplier: float, sample_rate: float, steps: int = 1) -> bool:
        """True when ``steps`` more invocations stay within the cap."""
        return not self._accountant.would_exceed(
            epsilon_budget=self._epsilon,
            noise_multiplier=noise_multiplier,
            sample_rate=sample_rate,
            steps=steps,
        )

    def spend(self, *, noise_multiplier: float, sample_rate: float, steps: int = 1) -> float:
        """Record the invocations if affordable and return the new epsilon.

        Raises
        ------
        BudgetExhaustedError
            When the step would exceed the cap; nothing is recorded then.
        """
        if not self.allows(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps):
            after = self._accountant.epsilon_after(
                noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps
            )
            raise BudgetExhaustedError(
                f"privacy budget exhausted: {steps} more step(s) at noise_multiplier="
                f"{noise_multiplier}, sample_rate={sample_rate} would reach epsilon={after:.4g} "
                f"> budget {self._epsilon:.4g} (spent {self.spent:.4g})"
            )
        self._accountant.step(
            noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps
        )
        return self._accountant.epsilon()

    def report(self) -> dict[str, Any]:
        """The accountant's report plus the cap and what is left."""
        out = self._accountant.report()
        out["epsilon_budget"] = self._epsilon
        out["epsilon_remaining"] = max(0.0, self._epsilon - float(out["epsilon"]))
        return out
