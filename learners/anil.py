"""Almost No Inner Loop (ANIL)."""
from __future__ import annotations

from learners.maml import MAML
from learners.registry import LEARNERS


@LEARNERS.register("anil")
class ANIL(MAML):
    """ANIL (Raghu, Raghu, Bengio & Vinyals, ICLR 2020).

    MAML whose inner loop adapts only the linear head; the encoder (backbone and
    fusion) is meta-learned in the outer loop but frozen within a task. Same
    options as :class:`~learners.maml.MAML` (``first_order``, inner steps, batch norm, head).
    """

    inner_prefixes = ("head.",)

