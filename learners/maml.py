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
from learners.maml_batched import TaskBatchedMAML
from learners.encoder import ModelSpec
from learners.registry import LEARNERS
from tasks.episode import Episode
from tasks.errors import BenchmarkError

Params = dict[str, Tensor]
HEAD = ("head.weight", "head.bias")
INNER_LOSSES = ("mean", "sum_per_shot")


@LEARNERS.register("maml")
class MAML(TaskBatchedMAML, Learner):
    """MAML (Finn, Abbeel & Levine, ICML 2017), second order.

    The model is encoder -> fusion -> linear head with ``n_way`` outputs. For each
    task the inner loop takes ``steps`` SGD steps on the support loss from the
    meta-parameters; the meta-loss is the query loss at the adapted parameters,
    differentiated through the inner loop (second order) or, with
    ``first_order=True``, with the inner gradients treated as constants (FOMAML).

    Batch norm is transductive by default, as in the paper: batch statistics of
    the current forward batch (support or query) in every forward, also at test
    time. ``batch_norm="running"`` keeps running statistics and uses them at test.

    Meta-training runs all tasks of a meta-batch at once, inner steps and query side: the
    tasks' weights become the groups of one grouped convolution (:mod:`learners.taskbatch`;
    image-only encoders of supported layers, else a per-task loop). Batching with
    ``torch.func.vmap`` was not kept: it was slower than the loop in places (docs/speed.md,
    "Design choices and their measurements"), and ``vmap`` over ``torch.func.grad`` composed with
    outer autograd gave second-order meta-gradients that disagree with finite differences
    (torch 2.14) for a learned head or two or more inner steps.

    Args (``Config``):
        train_steps, train_step_size: inner loop during meta-training.
        test_steps, test_step_size: inner loop at test (adaptation).
        first_order: drop second-order terms (FOMAML).
        batch_norm: ``"transductive"`` or ``"running"``.
        head: ``"learned"`` (default, Finn et al.'s MAML): a meta-learned ``nn.Linear(D, n_way)``
            with PyTorch's default initialisation; episodes must have ``n_way`` classes.
            ``"zero"``: Kao et al. (2022)'s zeroing trick, a variant: the head starts at zero in every
            task (any number of ways, label-permutation equivariant). The first inner step then moves
            only the head, because every encoder gradient is exactly zero there
            (:meth:`stepped_names`); this skips that step's encoder backward pass and, for second
            order, its double backward. With one inner training step the encoder is then never
            adapted during meta-training, which is not Finn et al.'s algorithm.
        n_way: outputs of the learned head (``head="learned"`` only; episodes must match).
        checkpoint: recompute each inner step in the backward pass (gradient checkpointing) to
            save memory with many inner steps (tasks then run one by one).
        task_batching: take the inner steps of all tasks of a meta-batch together, as grouped
            convolutions (:mod:`learners.taskbatch`), where the encoder allows it; the same
            meta-gradients as the per-task loop.
        query_chunk_images: with task batching, the query side runs forward and backward inside
            :meth:`loss` in chunks of whole tasks holding about this many query images (at least
            one task per chunk), so only one chunk's query activations are held (0: all tasks at
            once). The same loss and meta-gradients either way. The default 160 was measured
            fastest on 2 CPU cores (docs/speed.md): 2 tasks a chunk with 15 queries per class,
            all 32 tasks at once with 1 query.
        batch_norm_scale: give batch norm a learned scale (PyTorch's ``affine``); ``False``: a shift
            only, as TensorFlow's ``batch_norm`` defaults in cbfinn/maml (``scale=False``).
        adapt_batch_norm: let the inner loop adapt the batch-norm parameters; ``False``: they are
            meta-learned in the outer loop only, as in cbfinn/maml, whose batch-norm variables sit
            outside the ``weights`` that the inner loop updates.
        inner_loss: ``"mean"``: the support loss is the mean cross-entropy. ``"sum_per_shot"``:
            cbfinn/maml's, the cross-entropy summed over the support set and divided by the shots
            (``xent / update_batch_size`` under ``tf.gradients``, which sums), i.e. ``n_way`` times
            the mean: at 5-way its step of 0.4 is a step of 2.0 on the mean loss. Test-time
            adaptation uses the same loss; the outer loss stays the mean (Adam ignores its scale).
        query_channels_last: run the batched query side with channels-last activations. A step is
            somewhat faster on CPU (docs/speed.md), but PyTorch's channels-last batch norm (CPU) sums
            its statistics less accurately, so float32 meta-gradients end up about as far from
            float64 as a channels-last textbook loop's, several times further than the NCHW loop's
            (``tests/test_speed.py``). Off by default: the default matches the NCHW loop to 1e-6.
    """

    @dataclasses.dataclass
    class Config:
        train_steps: int = 1
        train_step_size: float = 0.4
        test_steps: int = 3
        test_step_size: float = 0.4
        first_order: bool = False
        batch_norm: str = "transductive"
        head: str = "learned"  # Finn et al.; "zero": Kao et al. (2022)
        n_way: int = 5
        checkpoint: bool = False
        task_batching: bool = True
        query_chunk_images: int = 160
        query_channels_last: bool = False
        batch_norm_scale: bool = True  # cbfinn/maml: False
        adapt_batch_norm: bool = True  # cbfinn/maml: False
        inner_loss: str = "mean"  # cbfinn/maml: "sum_per_shot"

        def __post_init__(self) -> None:
            if self.batch_norm not in ("transductive", "running"):
                raise ValueError(f"batch_norm must be 'transductive' or 'running', got {self.batch_norm!r}")
            if self.inner_loss not in INNER_LOSSES:
                raise ValueError(f"inner_loss must be one of {INNER_LOSSES}, got {self.inner_loss!r}")
            if self.head not in ("zero", "learned"):
                raise ValueError(f"head must be 'zero' or 'learned', got {self.head!r}")
            for key in ("train_steps", "test_steps", "query_chunk_images"):
                if getattr(self, key) < 0:
                    raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
            if self.n_way < 2:
                raise ValueError(f"n_way must be >= 2, got {self.n_way}")

    transductive = True  # per instance: False with batch_norm="running"
    compilable = False  # the meta-gradient differentiates through inner-loop gradients
    #: names of the parameters the inner loop adapts (``None``: all of them)
    inner_prefixes: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, spec: ModelSpec, config: Config | None = None) -> None:
        super().__init__(spec, config)
        self.transductive = self.config.batch_norm == "transductive"
        if self.transductive:  # batch statistics always: no running buffers at all
            torch.func.replace_all_batch_norm_modules_(self.encoder)
        norms = [m for m in self.encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]
        if not self.config.batch_norm_scale:
            for norm in norms:
                norm.weight = None  # F.batch_norm then scales by one
        #: parameters the inner loop leaves alone (``adapt_batch_norm=False``: the batch-norm ones)
        self.outer_only: frozenset[str] = frozenset() if self.config.adapt_batch_norm else frozenset(
            f"encoder.{module_name}.{param_name}"
            for module_name, module in self.encoder.named_modules() if module in norms
            for param_name, _ in module.named_parameters(recurse=False))
        self.head = nn.Linear(self.encoder.out_dim, self.config.n_way) if self.config.head == "learned" else None
        self.permutation_equivariant = self.head is None  # a learned head's rows are tied to label positions

    # -- functional model -----------------------------------------------------------------------
    def meta_params(self) -> Params:
        """The meta-learned parameters that the inner loop may change, by name."""
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def is_inner(self, name: str) -> bool:
        """Whether the inner loop adapts parameter ``name``."""
        if name in self.outer_only:
            return False
        return self.inner_prefixes is None or name.startswith(self.inner_prefixes)

    def inner_loss_scale(self, n_way: int) -> float:
        """Factor on the mean support loss that gives the inner loop's loss (``inner_loss``)."""
        return float(n_way) if self.config.inner_loss == "sum_per_shot" else 1.0

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
        for step in range(steps):
            names = self.stepped_names(params, step)
            if not names:
                continue
            if self.config.checkpoint and create_graph:
                values = torch.utils.checkpoint.checkpoint(
                    self._step, params, support, labels, names, step_size, *[params[n] for n in names],
                    use_reentrant=False)
            else:
                values = self._step(params, support, labels, names, step_size, *[params[n] for n in names],
                                    create_graph=create_graph)
            params = {**params, **dict(zip(names, values))}
            self._new_nodes_for_skipped(params, names)
        return params

    def stepped_names(self, params: Mapping[str, Tensor], step: int) -> list[str]:
        """The parameters that inner step ``step`` (0-based) moves.

        Those the inner loop adapts, except at the first step with ``head="zero"``: the logits are
        ``features @ 0 + 0`` there, so the loss reaches the encoder only through a zero matrix and
        every encoder gradient is exactly zero, as a function of the encoder's weights too (its
        second-order terms vanish). That step moves only the head, which skips the encoder's
        backward pass (and, for second order, its double backward) without changing any number.
        """
        names = [n for n in params if self.is_inner(n)]
        if step == 0 and self.head is None:
            return [n for n in names if n in HEAD]
        return names

    def _new_nodes_for_skipped(self, params: Params, stepped: list[str]) -> None:
        """After a step that skipped some inner parameters (:meth:`stepped_names`), give them new
        autograd nodes with the same values in ``params``.

        A later step must differentiate with respect to this step's output, as if it had subtracted
        an exactly zero gradient. Its gradient with respect to the tensors this step used would be
        a total derivative instead: it would also count the paths through the head this step moved.
        """
        for n in params:
            if self.is_inner(n) and n not in stepped:
                params[n] = params[n].view_as(params[n])

    def _step(self, params: Params, support: Mapping[str, Tensor], labels: Tensor, names: list[str],
              step_size: float, *values: Tensor, create_graph: bool = True) -> tuple[Tensor, ...]:
        params = {**params, **dict(zip(names, values))}
        for n in names:  # a zero head created under no_grad
            if not params[n].requires_grad:
                params[n] = params[n].requires_grad_()
        logits = self.logits(params, support)
        loss = F.cross_entropy(logits, labels) * self.inner_loss_scale(logits.shape[1])
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
        if self.can_batch_tasks(episodes):
            return self.task_batched_loss(episodes)
        return torch.stack([self.task_loss(e) for e in episodes]).mean()


@LEARNERS.register("fomaml")
class FOMAML(MAML):
    """First-order MAML (Finn et al. 2017, section 5.2): MAML without second-order terms.

    Same options and defaults as :class:`MAML`, Finn et al.'s meta-learned linear head included
    (``head="zero"`` is Kao et al. (2022)'s zeroing trick).
    """

    @dataclasses.dataclass
    class Config(MAML.Config):
        first_order: bool = True

