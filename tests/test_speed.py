"""The speed work changes no numbers: task batching, channels-last, pooling order, cached
evaluation and compilation each give what the plain implementation gives; the perf script runs."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmark.perf import workloads
from benchmark.cli import main
from benchmark.evaluate import evaluate
from benchmark.perf.references import reference_maml_backward, textbook_conv4
from learners import LEARNERS, ModelSpec
from learners import taskbatch
from learners.backbones import Conv4
from learners.maml import HEAD
from learners.text import BagOfWords
from tasks.datasets.shapes import generate
from tasks.episode import EpisodeLoader, TaskSetting, parse_modalities
from tasks.sampler import EpisodeManifest
from tests.conftest import TINY, make, only_run_dir, run_cli, tasks

IMAGE = TaskSetting(("image",), ("image",))


def test_conv4_pooling_before_relu_equals_the_textbook_order():
    torch.manual_seed(0)
    ours = Conv4((1, 28, 28), hidden=8, channels_last=False).double().train()
    textbook = textbook_conv4((1, 28, 28), hidden=8).double().train()
    for i in range(4):
        textbook[4 * i].load_state_dict(ours.blocks[i][0].state_dict())
        textbook[4 * i + 1].load_state_dict(ours.blocks[i][1].state_dict())
    x = torch.randn(6, 1, 28, 28, dtype=torch.float64)
    a, b = ours(x), textbook(x)
    assert torch.equal(a, b)  # max-pooling and ReLU commute exactly
    ga = torch.autograd.grad(a.square().sum(), list(ours.parameters()))
    gb = torch.autograd.grad(b.square().sum(), list(textbook.parameters()))
    for x_, y_ in zip(ga, gb):
        torch.testing.assert_close(x_, y_, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("strided", [False, True])
def test_channels_last_gives_the_same_features(strided):
    torch.manual_seed(0)
    ours = Conv4((3, 32, 32), hidden=8, strided=strided, channels_last=True)
    plain = Conv4((3, 32, 32), hidden=8, strided=strided, channels_last=False)
    plain.load_state_dict(ours.state_dict())
    x = torch.randn(5, 3, 32, 32)
    torch.testing.assert_close(ours(x), plain(x), rtol=1e-5, atol=1e-5)
    assert ours(x).is_contiguous()  # flattened features come out in the usual order


class Float32Errors:
    """Float32 gradient errors against a float64 computation, collected over several seeds.

    Float32 gradients of a Conv-4 step are decided by rounding "events": an activation right at a
    ReLU's kink, a near-tie in a max-pool or an ill-conditioned batch norm flips, and part of the
    gradient moves by up to ~7e-2 of the largest one. In the textbook NCHW implementation too; which
    seeds get events depends on the order of additions (layout, thread count), so one seed says
    little. Two statistics separate that from real imprecision:

    * ``bulk``: the median element's error, which events leave alone and a less accurate kernel
      raises everywhere;
    * ``worst``: the largest error, which shows how big the events are.

    Both relative to the largest float64 gradient; one value per seed.
    """

    def __init__(self) -> None:
        self.bulk: dict[str, list[float]] = {}
        self.worst: dict[str, list[float]] = {}

    def add(self, name: str, grads: torch.Tensor, exact: torch.Tensor) -> None:
        error = (grads - exact).abs() / exact.abs().max()
        self.bulk.setdefault(name, []).append(float(error.median()))
        self.worst.setdefault(name, []).append(float(error.max()))

    def median_bulk(self, name: str) -> float:
        return float(np.median(self.bulk[name]))


def flat_grads(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.double().flatten() for p in model.parameters()])


def as_double(batch):
    from tasks.episode import Episode

    return [Episode(support={"image": e.support["image"].double()}, support_labels=e.support_labels,
                    query={"image": e.query["image"].double()}, query_labels=e.query_labels,
                    class_ids=e.class_ids) for e in batch]


@pytest.fixture
def two_threads():
    """Rounding depends on how reductions are split; earlier tests may have set one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def test_channels_last_protonet_gradients_are_as_accurate_as_nchw(two_threads):
    """Channels-last batch norm on the CPU sums less accurately, so its bulk error is 1.3-3.5x
    NCHW's (measured); it must stay within 4x, and its events no larger than twice NCHW's."""
    cpu = torch.device("cpu")
    errors = Float32Errors()
    for seed in range(5):
        data = workloads.random_dataset((1, 28, 28), 60, 20, seed=seed)
        batch = workloads.episodes(data, "train", 20, 5, 5, 1, cpu)
        torch.manual_seed(seed)
        base = workloads.build("protonet", (1, 28, 28), cpu, channels_last=False)
        grads = {}
        for name, channels_last, dtype in (("truth", False, torch.float64), ("nchw", False, torch.float32),
                                           ("channels_last", True, torch.float32)):
            learner = workloads.build("protonet", (1, 28, 28), cpu, channels_last=channels_last)
            learner.load_state_dict(base.state_dict())
            learner = learner.to(dtype).train()
            learner.loss(as_double(batch) if dtype == torch.float64 else batch).backward()
            grads[name] = flat_grads(learner)
        for name in ("nchw", "channels_last"):
            errors.add(name, grads[name], grads["truth"])
    assert errors.median_bulk("channels_last") <= 4 * errors.median_bulk("nchw"), errors.bulk
    assert max(errors.worst["channels_last"]) <= 2 * max(errors.worst["nchw"]), errors.worst


@pytest.mark.parametrize("name,first_order,steps,head", [
    ("maml", False, 1, "zero"), ("maml", False, 2, "learned"), ("maml", True, 2, "zero"),
    ("anil", False, 2, "learned"), ("fomaml", True, 1, "learned"),
])
# 6 query images per task: 18 images make chunks of 3 tasks and 1 task
@pytest.mark.parametrize("query_chunk_images,query_channels_last", [(0, False), (18, False), (18, True)])
def test_task_batched_meta_gradient_equals_the_per_task_loop(name, first_order, steps, head, query_chunk_images,
                                                             query_channels_last):
    batched = make(name, first_order=first_order, train_steps=steps, head=head, n_way=3,
                   query_chunk_images=query_chunk_images, query_channels_last=query_channels_last).train()
    looped = make(name, first_order=first_order, train_steps=steps, head=head, n_way=3, task_batching=False).train()
    batch = tasks(4)
    assert batched.can_batch_tasks(batch) and not looped.can_batch_tasks(batch)
    assert batched.tasks_per_query_chunk(4, 6) == (3 if query_chunk_images else 4)
    losses = []
    for learner in (batched, looped):
        learner.zero_grad(set_to_none=True)
        loss = learner.loss(batch)
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-12)
    for a, b in zip(batched.parameters(), looped.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("options", [
    {"train_steps": 1}, {"train_steps": 2}, {"train_steps": 1, "first_order": True},
    {"train_steps": 2, "task_batching": False}, {"train_steps": 2, "first_order": True, "task_batching": False},
    {"train_steps": 2, "checkpoint": True}, {"train_steps": 3, "name": "anil"},
])
def test_zero_head_first_step_skips_only_exact_zeros(options):
    """With head="zero" the first inner step moves only the head (the encoder's gradient there is
    exactly zero); loss and meta-gradients equal the textbook loop, which computes everything."""
    options = dict(options)
    name, steps, first_order = options.pop("name", "maml"), options["train_steps"], options.get("first_order", False)
    options["head"] = "zero"  # Kao et al.'s zero head (the default is Finn's learned head)
    learner = make(name, **options).train()
    inner = [n for n in learner.initial_params(3) if learner.is_inner(n)]
    assert learner.stepped_names(learner.initial_params(3), 0) == [n for n in inner if n in HEAD]
    assert learner.stepped_names(learner.initial_params(3), 1) == inner
    textbook = make(name, **options).train()
    textbook.load_state_dict(learner.state_dict())
    batch = tasks(4)
    loss = learner.loss(batch)
    loss.backward()
    reference_maml_backward(textbook, batch, steps, textbook.config.train_step_size, first_order)
    for a, b in zip(learner.parameters(), textbook.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)
    assert any(float(p.grad.abs().max()) > 0 for p in learner.encoder.parameters())


@pytest.mark.parametrize("fusion", ["late", "attention", "film"])
def test_zero_head_first_step_skip_holds_for_fused_image_and_text(fusion):
    """Late fusion scores each modality with its block of the head; with a zero head every block is
    zero, so the first step's encoder and fusion gradients are still exactly zero."""
    from tasks.sampler import EpisodeSampler

    data = generate(n_classes=24, items_per_class=10, seed=0)
    setting = TaskSetting(("image", "text"), ("image", "text"))
    text = BagOfWords(list(data.captions), dim=16)
    loader = EpisodeLoader(data.images, data.mean, data.std, text.prepare(data.captions), None, setting)
    sampler = EpisodeSampler(data, "train", 3, 2, 2)
    rng = np.random.default_rng(0)
    def double(side: dict) -> dict:  # images to float64; text stays token ids
        return {k: v.double() if v.is_floating_point() else v for k, v in side.items()}

    batch = [loader.load(sampler.sample(rng, i)) for i in range(3)]
    batch = [dataclasses.replace(e, support=double(e.support), query=double(e.query)) for e in batch]
    learners = []
    for _ in range(2):
        torch.manual_seed(0)
        spec = ModelSpec(("image", "text"), setting, data.image_shape, backbone_options={"hidden": 4, "strided": True},
                         text_encoder=text, fusion=fusion)
        config = LEARNERS.get("maml").Config(train_steps=2, head="zero")
        learners.append(LEARNERS.get("maml")(spec, config).double().train())
    learner, textbook = learners
    learner.loss(batch).backward()
    reference_maml_backward(textbook, batch, 2, textbook.config.train_step_size, first_order=False)
    for a, b in zip(learner.parameters(), textbook.parameters()):
        if b.grad is None:
            assert a.grad is None or float(a.grad.abs().max()) == 0
            continue
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("head", ["zero", pytest.param("learned", marks=pytest.mark.slow)])
def test_task_batched_meta_gradient_is_accurate_in_float32_at_full_size(two_threads, head):
    """The perf script's MAML case (strided Conv-4-64, 32 tasks of 5w1s15q) in float32, 5 seeds.

    Both fast paths are judged against float64 next to two textbook loops that differ only in layout
    (NCHW, channels-last), not against one loop: one seed's largest error is a rounding event that
    flips with the order of additions (see :class:`Float32Errors`). Measured on an AMD EPYC, seed 0:
    fast vs NCHW loop 1.25e-3 of the largest gradient, because the *loop* is 1.25e-3 off float64
    (fast 8.0e-5); bulk 9.7e-8 (fast) vs 9.8e-8 (loop). Over the 5 seeds: bulk 1.00x the NCHW
    loop's, events 0.50x the loops' (fast_cl: 0.65x, 0.50x). Bounds: bulk within 1.25x the NCHW loop's
    (``query_channels_last=True``, whose batch norm sums less accurately: 4x the worse loop's),
    events within 2x the loops'. Caught: batch-norm eps 10x in the fast path (bulk 4.1e-4, ~4000x),
    one conv layer's gradient x1.001 (1.6x). ``head`` is named so the test keeps its meaning when
    MAML's default head changes.
    """
    cpu = torch.device("cpu")
    errors = Float32Errors()
    options = {"head": head, "n_way": 5} if head == "learned" else {"head": head}
    for seed in range(5):
        data = workloads.random_dataset((1, 28, 28), 60, 20, seed=seed)
        batch = workloads.episodes(data, "train", 5, 1, 15, 32, cpu)
        torch.manual_seed(seed)
        models = {
            "fast": workloads.build("maml", (1, 28, 28), cpu, strided=True, **options),
            "fast_cl": workloads.build("maml", (1, 28, 28), cpu, strided=True, query_channels_last=True, **options),
            "loop": workloads.build("maml", (1, 28, 28), cpu, strided=True, channels_last=False,
                                    task_batching=False, **options),
            "loop_cl": workloads.build("maml", (1, 28, 28), cpu, strided=True, task_batching=False, **options),
            "truth": workloads.build("maml", (1, 28, 28), cpu, strided=True, channels_last=False,
                                     task_batching=False, **options).double(),
        }
        for model in models.values():
            model.load_state_dict(models["fast"].state_dict())
            model.train()
        for name in ("fast", "fast_cl"):
            assert models[name].can_batch_tasks(batch)
            models[name].loss(batch).backward()
        for name in ("loop", "loop_cl"):
            reference_maml_backward(models[name], batch, 1, models[name].config.train_step_size, first_order=False)
        models["truth"].loss(as_double(batch)).backward()
        grads = {name: flat_grads(model) for name, model in models.items()}
        for name in ("fast", "fast_cl", "loop", "loop_cl"):
            errors.add(name, grads[name], grads["truth"])
    loop_worst = max(max(errors.worst[n]) for n in ("loop", "loop_cl"))
    # the NCHW fast path does the loop's arithmetic, batched: its bulk is the NCHW loop's, to ~1%
    assert errors.median_bulk("fast") <= 1.25 * errors.median_bulk("loop"), errors.bulk
    assert errors.median_bulk("fast_cl") <= 4 * max(errors.median_bulk(n) for n in ("loop", "loop_cl")), errors.bulk
    for name in ("fast", "fast_cl"):
        assert max(errors.worst[name]) <= 2 * loop_worst, (name, errors.worst)


def test_task_batching_falls_back_to_the_loop_where_it_cannot_run():
    batch = tasks(3)
    assert not make(batch_norm="running").train().can_batch_tasks(batch)  # shared running statistics
    assert not make(checkpoint=True).train().can_batch_tasks(batch)
    assert not make().train().can_batch_tasks(batch[:1])
    uneven = tasks(2) + tasks(1, way=4)  # tasks of different ways need the zero head (any number of ways)
    assert not make(head="zero").train().can_batch_tasks(uneven)
    learner = make(head="zero").train()
    loss = learner.loss(uneven)  # falls back and still runs
    assert torch.isfinite(loss)


@pytest.mark.parametrize("in_channels,kernel,stride,padding,dilation,bias", [
    (1, 3, 2, 1, 1, True), (1, 3, 1, 1, 1, False), (3, 3, 2, 0, 1, True), (3, 2, 1, 1, 2, True), (1, 5, 3, 2, 1, True),
])
def test_first_layer_by_kernel_taps_equals_a_convolution_per_task(in_channels, kernel, stride, padding, dilation, bias):
    """Few-input convolutions (Omniglot's and RGB first layers) run as one batched matmul over the
    kernel taps: values, first and second derivatives equal each task's own ``F.conv2d``."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(in_channels, 4, kernel, stride, padding, dilation, bias=bias).double()
    assert taskbatch._few_inputs_per_output(conv)
    n_tasks = 3
    weight = torch.randn(n_tasks, *conv.weight.shape, dtype=torch.float64, requires_grad=True)
    params = {"weight": weight}
    if bias:
        params["bias"] = torch.randn(n_tasks, 4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(n_tasks, 5, in_channels, 11, 12, dtype=torch.float64, requires_grad=True)
    together = taskbatch.forward(conv, params, taskbatch.to_grouped(x), n_tasks)
    alone = torch.cat([F.conv2d(x[t], weight[t], params["bias"][t] if bias else None, stride, padding, dilation)
                       for t in range(n_tasks)], 1)
    torch.testing.assert_close(together, alone, rtol=1e-10, atol=1e-12)
    inputs = [x, *params.values()]
    # second order: differentiate a gradient, as MAML's meta-gradient does
    first = [torch.autograd.grad((y ** 2).sum(), inputs, create_graph=True) for y in (together, alone)]
    second = [torch.autograd.grad(sum((g ** 2).sum() for g in grads), inputs) for grads in first]
    for a, b in zip(first[0] + second[0], first[1] + second[1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_taskbatch_forward_equals_one_forward_per_task():
    torch.manual_seed(0)
    net = Conv4((1, 16, 16), hidden=4, strided=True, channels_last=False).double()
    torch.func.replace_all_batch_norm_modules_(net)
    assert taskbatch.supports(net)
    weights = {n: torch.randn(3, *p.shape, dtype=torch.float64) for n, p in net.named_parameters()}
    x = torch.randn(3, 5, 1, 16, 16, dtype=torch.float64)
    together = taskbatch.forward(net, weights, taskbatch.to_grouped(x), 3)
    for t in range(3):
        alone = torch.func.functional_call(net, {n: w[t] for n, w in weights.items()}, (x[t],))
        torch.testing.assert_close(together[t], alone, rtol=1e-10, atol=1e-12)
    assert not taskbatch.supports(torch.nn.LSTM(3, 3))


@pytest.mark.parametrize("support,query,fusion", [
    ("image", "image", None), ("image+text", "image+text", "attention"), ("image+text", "image", "attention"),
])
def test_cached_evaluation_equals_embedding_every_episode(support, query, fusion):
    data = generate(n_classes=24, items_per_class=10, seed=0)
    setting = TaskSetting(parse_modalities(support), parse_modalities(query))
    modalities = parse_modalities(support)
    text = BagOfWords(list(data.captions), dim=16) if "text" in modalities else None
    loader = EpisodeLoader(data.images, data.mean, data.std,
                           text.prepare(data.captions) if text is not None else None, None, setting)
    spec = ModelSpec(modalities, setting, data.image_shape, backbone_options={"hidden": 8}, text_encoder=text,
                     fusion=fusion)
    torch.manual_seed(0)
    learner = LEARNERS.get("protonet")(spec)
    manifest = EpisodeManifest.generate(data, "test", 5, 1, 5, 12, seed=0)
    cached = evaluate(learner, loader, manifest, torch.device("cpu"), use_embedding_cache=True)
    scratch = evaluate(learner, loader, manifest, torch.device("cpu"), use_embedding_cache=False)
    assert np.array_equal(cached["accuracy"], scratch["accuracy"])
    np.testing.assert_allclose(cached["nll"], scratch["nll"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["maml", "anil"])
def test_batched_maml_evaluation_equals_one_episode_at_a_time(name):
    data = workloads.random_dataset((1, 16, 16), 30, 12)
    loader = EpisodeLoader(data.images, data.mean, data.std, setting=IMAGE)
    manifest = EpisodeManifest.generate(data, "test", 5, 1, 5, 10, seed=0)
    torch.manual_seed(0)
    spec = ModelSpec(("image",), IMAGE, (1, 16, 16), backbone_options={"hidden": 8, "strided": True})
    learner = LEARNERS.get(name)(spec, LEARNERS.get(name).Config(test_steps=2))
    batched = evaluate(learner, loader, manifest, torch.device("cpu"), batch_size=4)  # 4 + 4 + 2 episodes
    single = evaluate(learner, loader, manifest, torch.device("cpu"), batch_size=1)
    assert np.array_equal(batched["accuracy"], single["accuracy"])
    np.testing.assert_allclose(batched["nll"], single["nll"], rtol=1e-4)


def test_compile_backbone_keeps_the_state_dict_and_skips_maml():
    spec = ModelSpec(("image",), IMAGE, (1, 28, 28), backbone_options={"hidden": 8})
    torch.manual_seed(0)
    proto = LEARNERS.get("protonet")(spec)
    keys = list(proto.state_dict())
    assert proto.compile_backbone("eager")
    assert list(proto.state_dict()) == keys
    maml = LEARNERS.get("maml")(spec)
    assert not maml.compile_backbone("eager")


def test_train_compile_runs_and_is_recorded(tmp_path, capsys):
    args = TINY + ["--set", "methods=[protonet:image, maml:image]", "--set", "train.compile=eager",
                   "--set", "train_overrides.maml.way=3", "--set", "learner_options.maml.head=zero",  # any way
                   "--shots", "1", "--out", str(tmp_path)]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    record = json.loads((only_run_dir(tmp_path) / "run.json").read_text())
    compiled = {slug: m.get("compiled") for slug, m in record["methods"].items()}
    assert compiled == {"protonet-image-none": True, "maml-image-none": False}


def test_perf_script_smoke(tmp_path):
    out = tmp_path / "perf.json"
    assert main(["perf", "--smoke", "--compile", "eager", "--threads", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    from benchmark.provenance import cpu_model

    assert result["device_name"] == cpu_model() != ""  # every figure names its CPU model
    cases = result["cases"]
    assert set(cases) == {"sampling", "protonet_train", "maml_second_order", "maml_first_order", "maml_peer",
                          "maml_memory", "eval", "flops"}
    assert all(cases["maml_memory"][k]["peak_memory_mb"] > 0
               for k in ("second_order", "second_order_query_at_once", "second_order_checkpointed"))
    for key in ("maml_second_order", "maml_first_order"):
        case = cases[key]
        # fast path = reference loop, to float32 rounding (which test_task_batched_meta_gradient_is_accurate_in_float32
        # checks closely; a wrong layout or tap order is off by the gradient's own size)
        assert case["max_abs_grad_diff"] <= 1e-2 * case["max_abs_grad"]
        assert case["reference_channels_last_max_abs_grad_diff"] >= 0
        assert case["query_channels_last_max_abs_grad_diff"] <= 1e-2 * case["max_abs_grad"]
        assert case["query_channels_last_tasks_per_s"] > 0 and case["full_first_step_tasks_per_s"] > 0
        assert case["tasks_per_s"] > 0 and case["reference_tasks_per_s"] > 0 and case["ratio"] > 0
        assert case["reference_query_side_share"] > 0 and case["ceiling_ratio"] > 0 and case["query_side_ratio"] > 0
    assert cases["eval"]["protonet"]["same_accuracies"] is True
    assert 0 < cases["sampling"]["omniglot_28x28x1"]["fraction_of_train_step"]
    assert 0 < cases["flops"]["conv4_fraction_of_matmul"] and "compiled_conv4_fraction_of_matmul" in cases["flops"]
    assert cases["protonet_train"]["compiled_backend"] == "eager"


@pytest.mark.parametrize("args,message", [
    (["--out", "/proc/no-such-dir/perf.json"], "cannot write --out"),
    (["--compile", "no-such-backend"], "is not a torch.compile backend"),
    (["--cases", "sampling,nope"], "unknown perf case"),
])
def test_perf_bad_input_fails_fast_with_a_named_error(tmp_path, capsys, args, message):
    out = tmp_path / "perf.json"
    assert main(["perf", "--smoke", "--out", str(out), *args]) == 2  # a later --out wins
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing half-written, no empty file left by the writability probe



@pytest.mark.parametrize("images,n_tasks,queries,expected", [
    (160, 32, 75, 2), (160, 32, 5, 32), (160, 8, 5, 8), (50, 32, 75, 1), (0, 32, 75, 32),
])
def test_query_chunks_hold_about_query_chunk_images(images, n_tasks, queries, expected):
    """Chunks are whole tasks, about ``query_chunk_images`` query images, at least one task."""
    assert make(query_chunk_images=images).tasks_per_query_chunk(n_tasks, queries) == expected
