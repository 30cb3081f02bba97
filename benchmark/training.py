"""Episodic meta-training with validation-based model selection and resumable checkpoints."""
from __future__ import annotations

import copy
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from benchmark import distributed
from benchmark.checkpoint import check_state_dict, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from benchmark.config import TrainConfig
from benchmark.evaluate import evaluate
from benchmark.methods import Method
from benchmark.runtime import check_compile_backend
from benchmark.selection import require_selection_split
from benchmark.trainlog import TrainLog
from learners import Learner
from tasks.episode import EpisodeLoader
from tasks.errors import BenchmarkError
from tasks.sampler import EpisodeManifest, EpisodeSampler

log = logging.getLogger(__name__)


def meta_train(learner: Learner, method: Method, cfg: TrainConfig, make_loader: Callable[[], EpisodeLoader],
               sampler: EpisodeSampler, val_manifest: EpisodeManifest | None, device: torch.device, seed: int,
               path: Path, resume: bool, train_log: TrainLog | None = None) -> dict:
    """Episodic meta-training with validation-based model selection; keeps the best state.

    Long: one loop whose step, validation, log and checkpoint order is what makes a resumed run
    step-exact; splitting it would scatter that order.

    With ``cfg.val_every == 0`` there is no validation (e.g. training on train + val classes, as
    Snell et al.'s final models) and the state after the last step is kept.

    Every ``train.checkpoint_every`` steps the whole training state is saved to ``path`` (the
    harness uses ``checkpoints/<slug>.train.pt``); with ``resume`` a later run continues from it and
    computes exactly what an uninterrupted run computes (see :mod:`benchmark.checkpoint`).
    The returned (and checkpointed) history holds ``train_wall_time_s``: the seconds of training
    that produced the state, summed over resumed sessions (the work a killed session did after
    its last checkpoint is not counted: it is done again); ``None`` when a checkpoint written
    before this was recorded was resumed.

    Args:
        cfg: the method's training settings.
        make_loader: builds the episode loader (called only when there is something to train).
        sampler: draws the training episodes; val_manifest: the validation episodes (``None``
            when ``cfg.val_every == 0``).
        seed: of the training-episode generator.
        path: the training checkpoint; resume: continue from it if it exists.
        train_log: the per-step log (:class:`benchmark.trainlog.TrainLog`), continued on resume.

    Raises:
        BenchmarkError: a non-finite loss (names the step, the learner and the last finite
            loss; the last good checkpoint is kept), or an unusable checkpoint.
    """
    params = [p for p in learner.parameters() if p.requires_grad]
    history = {"best_step": 0, "best_val_accuracy": None, "val": [], "train_wall_time_s": 0.0}
    if cfg.episodes == 0 or not params:
        return history
    if cfg.val_every:  # the kept checkpoint is a choice: made on validation episodes only
        require_selection_split(val_manifest.split, "the checkpoint kept (the best validation step)")
    loader = make_loader()
    optimiser = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = (torch.optim.lr_scheduler.StepLR(optimiser, cfg.lr_decay_every, gamma=0.5)
                 if cfg.lr_decay_every else None)
    rng = np.random.default_rng(seed)
    best_state, best = copy.deepcopy(learner.state_dict()), -1.0
    first, saved, last_loss = 1, None, None
    if resume and path.exists():
        first, best, best_state, history, last_loss = _restore(path, learner, optimiser, scheduler, rng,
                                                                    cfg.episodes)
        saved = first - 1
        log.info("%s: resuming from step %d of %d (%s)", method.label, saved, cfg.episodes, path)
        history.setdefault("train_wall_time_s", None)  # a checkpoint from before it was recorded: unknown
    session_start, wall_before = time.perf_counter(), history["train_wall_time_s"]

    def wall_time() -> float | None:
        return None if wall_before is None else wall_before + time.perf_counter() - session_start
    if cfg.compile:
        check_compile_backend(cfg.compile, f"train_overrides.{method.learner}.compile")
        compiled = learner.compile_backbone(cfg.compile)
        history["compiled"] = compiled
        if not compiled:
            log.warning("%s: train.compile=%s is ignored: this learner trains eagerly (inner-loop gradients "
                        "or no image backbone)", method.label, cfg.compile)
    kill_at = _test_kill_step(method)
    dp = distributed.current()  # data-parallel under torchrun (benchmark.distributed); else a no-op
    if train_log is not None and dp.is_main:  # rank 0 alone writes files
        train_log.start(first - 1)
    bar = tqdm(range(first, cfg.episodes + 1), desc=f"train {method.label}", leave=False, mininterval=1)
    for step in bar:
        learner.train()
        tasks = dp.share([sampler.sample(rng, step) for _ in range(cfg.meta_batch)])  # all ranks draw all
        episodes = [loader.load(task).to(device) for task in tasks]
        batch_norm = dp.batch_norm_state(learner)
        loss = learner.loss(episodes)
        loss_value = dp.mean_loss(loss, len(tasks), cfg.meta_batch)
        if not math.isfinite(loss_value):
            kept = (f"the last good checkpoint (step {saved}) is kept in {path}" if saved else
                    "no checkpoint was saved yet")
            raise BenchmarkError(
                f"{method.label}: the training loss became {loss_value} at step {step} (last finite loss "
                f"{'none' if last_loss is None else f'{last_loss:.6g}'}); {kept}. "
                "Lower train.lr or set train.grad_clip (e.g. --set train.grad_clip=1.0)")
        if not loss.requires_grad:
            raise BenchmarkError(
                f"{method.label}: the training loss depends on none of its trainable parameters (e.g. a fusion "
                "whose image-only path is the identity, on a frozen backbone): there is nothing to train; "
                "set train.episodes=0 or compare with the method it reduces to")
        last_loss, lr = loss_value, optimiser.param_groups[0]["lr"]
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        dp.average_gradients(params, len(tasks), cfg.meta_batch)
        dp.sync_batch_norm(batch_norm)
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimiser.step()
        if scheduler is not None:
            scheduler.step()
        validation = None
        if cfg.val_every and (step % cfg.val_every == 0 or step == cfg.episodes):
            if dp.is_main:
                validation = {k: float(v.mean())
                              for k, v in evaluate(learner, loader, val_manifest, device).items()}
            val = dp.from_main(lambda: validation["accuracy"])
            history["val"].append({"step": step, "loss": last_loss, "val_accuracy": val})
            bar.set_postfix(loss=f"{last_loss:.3f}", val=f"{100 * val:.1f}")
            if val > best:
                best, best_state = val, copy.deepcopy(learner.state_dict())
                history.update(best_step=step, best_val_accuracy=val)
        if train_log is not None and dp.is_main:
            train_log.write(step, last_loss, lr, validation)
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.episodes and dp.is_main:
            history["train_wall_time_s"] = wall_time()
            save_checkpoint(path, {
                "method": method.slug, "step": step, "model": learner.state_dict(),
                "optimiser": optimiser.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "rng": rng_state(rng, device), "best": best, "best_state": best_state,
                "history": history, "last_loss": last_loss,
            })
            saved = step
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # test hook (MMFS_TEST_KILL_AT_STEP): die like an OOM kill
    history["train_wall_time_s"] = wall_time()
    if cfg.val_every:
        learner.load_state_dict(best_state)
    else:
        history["best_step"] = cfg.episodes  # no validation: the last step is the model
    return history


def _restore(path: Path, learner: Learner, optimiser, scheduler, rng: np.random.Generator,
             episodes: int):
    """Load a training checkpoint into the learner, optimiser, scheduler and generators."""
    state = load_checkpoint(path)
    try:
        step, best, history = int(state["step"]), float(state["best"]), state["history"]
        model, best_state, last_loss = state["model"], state["best_state"], state["last_loss"]
        check_state_dict(learner, model, f"checkpoint {path}")
        check_state_dict(learner, best_state, f"checkpoint {path} (best state)")
        learner.load_state_dict(model)
        optimiser.load_state_dict(state["optimiser"])
        if (scheduler is None) != (state["scheduler"] is None):
            raise ValueError("the learning-rate schedule differs")
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        set_rng_state(rng, state["rng"])
    except (KeyError, ValueError, TypeError, RuntimeError) as err:
        raise BenchmarkError(f"checkpoint {path} does not fit this run ({type(err).__name__}: {err}); "
                             "delete it or use --no-resume to train this method from scratch") from None
    if step >= episodes:
        raise BenchmarkError(f"checkpoint {path} is at step {step}, beyond train.episodes="
                             f"{episodes}; delete it or use --no-resume")
    return step + 1, best, best_state, history, last_loss


def _test_kill_step(method: Method) -> int | None:
    """Test hook: ``MMFS_TEST_KILL_AT_STEP=N`` or ``SLUG:N`` SIGKILLs this process after step N."""
    value = os.environ.get("MMFS_TEST_KILL_AT_STEP", "")
    if not value:
        return None
    slug, _, step = value.rpartition(":")
    return int(step) if slug in ("", method.slug) else None
