"""MAML's inner loops for a whole meta-batch at once (the fast path of :class:`learners.maml.MAML`).

A mixin, so that ``maml.py`` reads as the algorithm: these methods use the learner's ``config``,
``encoder``, ``initial_params``, ``stepped_names`` and ``_new_nodes_for_skipped``, and give the
same values and gradients as its per-task loop (``tests/test_maml.py``). The layers run through
:mod:`learners.taskbatch` (grouped convolutions).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from learners import taskbatch
from tasks.episode import Episode

Params = dict[str, Tensor]


class TaskBatchedMAML:
    """The task-batched methods of :class:`learners.maml.MAML` (a mixin; not a learner on its own)."""

    def can_batch_tasks(self, episodes: Sequence[Episode]) -> bool:
        """Whether :meth:`loss` may take the inner steps of ``episodes`` together.

        Needs ``task_batching``, transductive batch norm, no gradient checkpointing, an
        image-only encoder made of layers :mod:`learners.taskbatch` supports, and episodes
        of one shape.
        """
        cfg, encoder = self.config, self.encoder
        if not cfg.task_batching or cfg.checkpoint or not self.transductive or len(episodes) < 2:
            return False
        if encoder.fusion is not None or tuple(encoder.encoders) != ("image",):
            return False
        if not taskbatch.supports(encoder.encoders["image"]):
            return False
        shape = lambda e: (e.n_way, tuple(e.support["image"].shape), tuple(e.query["image"].shape))  # noqa: E731
        return all(set(e.support) == {"image"} == set(e.query) and shape(e) == shape(episodes[0]) for e in episodes)

    def task_batched_logits(self, params: Mapping[str, Tensor], images: Tensor, channels_last: bool = False) -> Tensor:
        """Logits ``[T, B, n_way]`` of ``T`` tasks' models on their images ``[T, B, C, H, W]``.

        ``params`` maps names (as in ``self``) to per-task values ``[T, *shape]``;
        ``channels_last``: activations in channels-last memory (:func:`taskbatch.forward`).
        """
        features = taskbatch.forward(self.encoder.encoders["image"], params, taskbatch.to_grouped(images),
                                     images.shape[0], prefix="encoder.encoders.image.", channels_last=channels_last)
        return taskbatch.linear(features, params["head.weight"], params["head.bias"])

    def task_batched_adapt(self, episodes: Sequence[Episode], create_graph: bool) -> Params:
        """Per-task adapted parameters ``name -> [T, *shape]`` after the inner loop of every task.

        The same as :meth:`inner_loop` run on each episode (train or test steps by mode).
        """
        n_tasks = len(episodes)
        steps, step_size = self._steps()
        params = {}
        for name, value in self.initial_params(episodes[0].n_way).items():
            tiled = value.expand(n_tasks, *value.shape)  # every task starts from the meta-parameters
            params[name] = tiled if value.requires_grad else tiled.contiguous().requires_grad_()
        support = torch.stack([e.support["image"] for e in episodes])
        labels = torch.stack([e.support_labels for e in episodes])
        for step in range(steps):
            names = self.stepped_names(params, step)
            if not names:  # nothing moves (a zero head that the inner loop does not adapt)
                continue
            # always NCHW: channels-last made the support side's second-order pass slower (docs/speed.md)
            logits = self.task_batched_logits(params, support)
            # the sum over tasks of each task's mean loss: its gradient with respect to task t's
            # copy of the weights is task t's own gradient
            loss = (F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum") / logits.shape[1]
                    * self.inner_loss_scale(logits.shape[2]))
            grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=create_graph,
                                        allow_unused=True)
            params.update({n: params[n] if g is None else params[n] - step_size * g for n, g in zip(names, grads)})
            self._new_nodes_for_skipped(params, names)
        return params

    def task_batched_loss(self, episodes: Sequence[Episode]) -> Tensor:
        """:meth:`loss` with all tasks run together (same value and gradients)."""
        params = self.task_batched_adapt(episodes, create_graph=not self.config.first_order)
        query = torch.stack([e.query["image"] for e in episodes])
        return self.query_loss(params, query, torch.stack([e.query_labels for e in episodes]))

    def query_loss(self, params: Params, query: Tensor, labels: Tensor) -> Tensor:
        """Mean query loss of ``T`` tasks at their adapted ``params`` (``name -> [T, *shape]``).

        ``query [T, Q, C, H, W]``, ``labels [T, Q]``. With gradients on and more than one chunk of
        ``query_chunk_images`` (:meth:`tasks_per_query_chunk`), the query side's backward is taken
        here, in chunks (:meth:`_chunked_query_loss`); ``backward`` on the result gives the same
        gradients either way.
        """
        chunk = self.tasks_per_query_chunk(*query.shape[:2])
        if chunk < len(query) and torch.is_grad_enabled():
            return self._chunked_query_loss(params, query, labels, chunk)
        logits = self.task_batched_logits(params, query, self.config.query_channels_last)
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten())

    def tasks_per_query_chunk(self, n_tasks: int, queries_per_task: int) -> int:
        """Tasks in one chunk of the query side: about ``query_chunk_images`` images, at least one
        task, at most ``n_tasks`` (all of them when ``query_chunk_images`` is 0)."""
        images = self.config.query_chunk_images
        return min(n_tasks, max(1, images // queries_per_task)) if images else n_tasks

    def _chunked_query_loss(self, params: Params, query: Tensor, labels: Tensor, chunk: int) -> Tensor:
        """The mean query loss, with the query side's backward already taken, ``chunk`` tasks at a time.

        ``params``: adapted ``name -> [T, *shape]``, still attached to the meta-parameters;
        ``query [T, Q, C, H, W]``; ``labels [T, Q]``. Each chunk's gradient with respect to its
        adapted weights is stored and its activations freed. The returned tensor has the loss's
        value; its ``backward`` carries the stored gradients from the adapted weights into the
        meta-parameters (through the inner loop), which gives the meta-gradient of the loss.
        """
        names = [n for n, p in params.items() if p.requires_grad]
        grads = {n: torch.empty_like(params[n]) for n in names}
        total = query.new_zeros(())
        for start in range(0, len(query), chunk):
            part = slice(start, start + chunk)
            leaves = {n: p[part].detach().requires_grad_() if n in grads else p[part] for n, p in params.items()}
            logits = self.task_batched_logits(leaves, query[part], self.config.query_channels_last)
            loss = F.cross_entropy(logits.flatten(0, 1), labels[part].flatten(), reduction="sum") / labels.numel()
            for n, g in zip(names, torch.autograd.grad(loss, [leaves[n] for n in names], allow_unused=True)):
                grads[n][part] = 0 if g is None else g
            total = total + loss.detach()
        surrogate = sum(((params[n] * grads[n]).sum() for n in names), query.new_zeros(()))
        return total + (surrogate - surrogate.detach())

    def predict_episodes(self, episodes: Sequence[Episode]) -> list[Tensor]:
        """Test-time logits of several episodes, adapted together where :meth:`can_batch_tasks` allows."""
        if not self.can_batch_tasks(episodes):
            return super().predict_episodes(episodes)
        with torch.enable_grad():
            params = {n: p.detach() for n, p in self.task_batched_adapt(episodes, create_graph=False).items()}
        query = torch.stack([e.query["image"] for e in episodes])
        return list(self.task_batched_logits(params, query, self.config.query_channels_last).unbind(0))
