"""Model-Agnostic Meta-Learning (second and first order) on ``torch.func.functional_call``."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from learners.base import Learner
from learners.encoder import ModelSpec
from learners.registry import LEARNERS
from tasks.episode import Episode
from tasks.errors import BenchmarkError

Params = dict[str, Tensor]
HEAD = ("head.weight", "head.bias")


@LEARNERS.register("maml")
class MAML(Learner):
    """MAML (Finn, Abbeel & Levine, ICML 2017), second order.

    The model is encoder -> fusion -> linear head with ``n_way`` outputs. For each
    task the inner loop takes ``steps`` SGD steps on the support loss from the
    meta-parameters; the meta-loss is the query loss at the adapted parameters,
    differentiated through the inner loop (second order) or, with
    ``first_order=True``, with the inner gradients treated as constants (FOMAML).

    Batch norm is transductive by default, as in the paper: batch statistics of
    the current forward batch (support or query) in every forward, also at test
    time. ``batch_norm="running"`` keeps running statistics and uses them at test.

    Tasks run in a per-task loop. Batching the tasks of a meta-batch with
    ``torch.func.vmap`` (whole task, or only the inner loop) was measured and not
    kept: on the 2-core CPU it was 0.45x-1.14x the loop's speed, and ``vmap`` over
    ``torch.func.grad`` composed with outer autograd gave second-order
    meta-gradients that disagree with finite differences (torch 2.14) for a learned
    head or two or more inner steps.

    Args (``Config``):
        train_steps, train_step_size: inner loop during meta-training.
        test_steps, test_step_size: inner loop at test (adaptation).
        first_order: drop second-order terms (FOMAML).
        batch_norm: ``"transductive"`` or ``"running"``.
        head: ``"zero"``: the head starts at zero in every task (works for any number of ways and
            is label-permutation equivariant; Kao et al. 2022); ``"learned"``: a meta-learned
            ``nn.Linear(D, n_way)`` with PyTorch's default initialisation, as in the paper.
        n_way: outputs of the learned head (``head="learned"`` only; episodes must match).
        checkpoint: recompute each inner step in the backward pass (gradient checkpointing) to
            save memory with many inner steps.
    """

    @dataclasses.dataclass
    class Config:
        train_steps: int = 1
        train_step_size: float = 0.4
        test_steps: int = 3
        test_step_size: float = 0.4
        first_order: bool = False
        batch_norm: str = "transductive"
        head: str = "zero"
        n_way: int = 5
        checkpoint: bool = False

        def __post_init__(self) -> None:
            if self.batch_norm not in ("transductive", "running"):
                raise ValueError(f"batch_norm must be 'transductive' or 'running', got {self.batch_norm!r}")
            if self.head not in ("zero", "learned"):
                raise ValueError(f"head must be 'zero' or 'learned', got {self.head!r}")
            for key in ("train_steps", "test_steps"):
                if getattr(self, key) < 0:
                    raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
            if self.n_way < 2:
                raise ValueError(f"n_way must be >= 2, got {self.n_way}")

    transductive = True  # per instance: False with batch_norm="running"
    #: names of the parameters the inner loop adapts (``None``: all of them)
    inner_prefixes: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, spec: ModelSpec, config: Config | None = None) -> None:
        super().__init__(spec, config)
        self.transductive = self.config.batch_norm == "transductive"
        if self.transductive:  # batch statistics always: no running buffers at all
            torch.func.replace_all_batch_norm_modules_(self.encoder)
        self.head = nn.Linear(self.encoder.out_dim, self.config.n_way) if self.config.head == "learned" else None

    # -- functional model -----------------------------------------------------------------------
    def meta_params(self) -> Params:
        """The meta-learned parameters that the inner loop may change, by name."""
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def is_inner(self, name: str) -> bool:
        """Whether the inner loop adapts parameter ``name``."""
        return self.inner_prefixes is None or name.startswith(self.inner_prefixes)

    def initial_params(self, n_way: int, like: Tensor | None = None) -> Params:
        """Meta-parameters plus the task's starting head (zeros for ``head="zero"``)."""
        params = self.meta_params()
        if self.head is None:
            ref = like if like is not None else next(iter(params.values()))
            params["head.weight"] = ref.new_zeros(n_way, self.encoder.out_dim)
            params["head.bias"] = ref.new_zeros(n_way)
        elif n_way != self.config.n_way:
            raise BenchmarkError(f"maml with head='learned' has {self.config.n_way} outputs but got a {n_way}-way "
                                 f"episode; set learner_options.<name>.n_way={n_way} or use head='zero'")
        return params

    def logits(self, params: Mapping[str, Tensor], inputs: Mapping[str, Tensor]) -> Tensor:
        """Logits ``[B, n_way]`` of the model with ``params`` (names as in ``self``) on ``inputs``."""
        encoder = {n[8:]: p for n, p in params.items() if n.startswith("encoder.")}
        features = functional_call(self.encoder, encoder, (inputs,), strict=False)
        # through compare() so that late fusion scores each modality's block on its own
        return self.encoder.compare(F.linear, features, params["head.weight"]) + params["head.bias"]

    # -- inner loop ------------------------------------------------------------------------------
    def _steps(self) -> tuple[int, float]:
        cfg = self.config
        return (cfg.train_steps, cfg.train_step_size) if self.training else (cfg.test_steps, cfg.test_step_size)

    def inner_loop(self, params: Params, support: Mapping[str, Tensor], labels: Tensor, steps: int,
                   step_size: float, create_graph: bool) -> Params:
        """SGD on the support loss with ``torch.autograd.grad`` (one task).

        With ``create_graph`` the result stays differentiable with respect to ``params``
        (second order); otherwise the inner gradients are constants.
        """
        names = [n for n in params if self.is_inner(n)]
        for _ in range(steps):
            if self.config.checkpoint and create_graph:
                values = torch.utils.checkpoint.checkpoint(
                    self._step, params, support, labels, names, step_size, *[params[n] for n in names],
                    use_reentrant=False)
            else:
                values = self._step(params, support, labels, names, step_size, *[params[n] for n in names],
                                    create_graph=create_graph)
            params = {**params, **dict(zip(names, values))}
        return params

    def _step(self, params: Params, support: Mapping[str, Tensor], labels: Tensor, names: list[str],
              step_size: float, *values: Tensor, create_graph: bool = True) -> tuple[Tensor, ...]:
        params = {**params, **dict(zip(names, values))}
        for n in names:  # a zero head created under no_grad
            if not params[n].requires_grad:
                params[n] = params[n].requires_grad_()
        loss = F.cross_entropy(self.logits(params, support), labels)
        # allow_unused: parameters used outside the functional call (late fusion's logit weights,
        # read in compare()) get no inner-loop gradient and stay as they are
        grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=create_graph, allow_unused=True)
        return tuple(params[n] if g is None else params[n] - step_size * g for n, g in zip(names, grads))

    # -- learner API -----------------------------------------------------------------------------
    def adapt(self, episode: Episode) -> Params:
        """Adapted parameters (detached) after the inner loop on the support set."""
        steps, step_size = self._steps()
        with torch.enable_grad():
            params = self.inner_loop(self.initial_params(episode.n_way), episode.support,
                                     episode.support_labels, steps, step_size, create_graph=False)
        return {n: p.detach() for n, p in params.items()}

    def predict(self, state: Params, query: Mapping[str, Tensor]) -> Tensor:
        return self.logits(self.require_state(state), query)

    def task_loss(self, episode: Episode) -> Tensor:
        """Query loss after the inner loop, differentiable to the meta-parameters (one task)."""
        steps, step_size = self._steps()
        params = self.inner_loop(self.initial_params(episode.n_way), episode.support, episode.support_labels,
                                 steps, step_size, create_graph=not self.config.first_order)
        return F.cross_entropy(self.logits(params, episode.query), episode.query_labels)

    def loss(self, episodes: Sequence[Episode]) -> Tensor:
        """Meta-loss: the query loss after adaptation, averaged over the meta-batch."""
        return torch.stack([self.task_loss(e) for e in episodes]).mean()


@LEARNERS.register("fomaml")
class FOMAML(MAML):
    """First-order MAML (Finn et al. 2017, section 5.2): MAML without second-order terms."""

    @dataclasses.dataclass
    class Config(MAML.Config):
        first_order: bool = True

