"""Architectures users bring (issue 20): token ids, attention, exits on every
architecture, a space that offers only what runs, from-model warm starts.

The models are small configs trained briefly on digits (tests/_archs.py); the fast
tests check structure (dtypes, heads, exit points, shapes, what is offered), the slow
ones run every family and a search end to end and read the exported ONNX back."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from slimtune import Task
from slimtune.spaces.base import KnobContext, SpaceError
from slimtune.tasks._outputs import LogitsOutput

transformers = pytest.importorskip("transformers")
from tests import _archs as archs  # noqa: E402

STEPS = 40  # training steps of the fast tests' models: structure, not accuracy


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    torch.set_num_threads(before)


def _model(arch: str, steps: int = STEPS) -> nn.Module:
    model = archs.trained(arch, steps)
    return LogitsOutput(model, "logits").eval() if arch in archs.HF else model


def _ctx(x: torch.Tensor, **info) -> KnobContext:
    return KnobContext(example_input=x[:1], calibration=x, finetune=lambda *a, **k: None, finetune_epochs=0,
                       info={"num_classes": 10, **info})


# -- 1. integer inputs -------------------------------------------------------------------------
@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8])
def test_token_ids_from_a_loader_stay_integers(streaming, dtype):
    """A loader's ids are never cast to float: int64 in every split, in the example
    input and the calibration samples (int32 / uint8 ids become int64)."""
    xtr, ytr, xva, yva, xte, yte = archs.data("tokens")
    loader = lambda x, y: DataLoader(TensorDataset(x.to(dtype), y), batch_size=64)  # noqa: E731
    task = Task.from_model(archs.trained("tokens", STEPS), train=loader(xtr, ytr), val=loader(xva, yva),
                           test=loader(xte, yte), streaming=streaming)
    for split in (task.data.train, task.data.val, task.data.test):
        x, _ = next(iter(split.chunks(8)))
        assert x.dtype == torch.int64 and split.head(3).dtype == torch.int64
    assert task.example_input(2).dtype == torch.int64
    again = Task.from_model(archs.trained("tokens", STEPS), train=loader(xtr, ytr), val=loader(xva, yva),
                            test=loader(xte, yte), streaming=streaming)
    assert task.fingerprint() == again.fingerprint()


def test_token_ids_through_training_int8_and_the_onnx_artifact():
    """int64 ids through distillation, PTQ calibration, timing and the exported ONNX
    model, whose input and metadata say int64; its accuracy is the stored one."""
    import onnx
    import onnxruntime as ort

    from slimtune.search._task_space import build_space
    from slimtune.search._baseline import get_baseline
    from slimtune.search._pipeline import EvalSettings, Evaluator

    task = archs.task("tokens", STEPS)
    evaluator = Evaluator(task, build_space(task), EvalSettings(epochs=1, finetune_epochs=1, latency_repeats=3,
                                                                latency_warmup=1), get_baseline(task))
    assert evaluator.calibration.dtype == torch.int64
    result = evaluator.evaluate({"quant.bits": 8, "quant.mode": "ptq"})
    model = onnx.load_from_string(result.artifact)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["input_dtype"] == "int64"
    session = ort.InferenceSession(result.artifact, providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": task.data.x_val.numpy()})[0]
    assert float((logits.argmax(1) == task.data.y_val.numpy()).mean()) == pytest.approx(result.measurement.accuracy)


def test_a_model_that_wants_floats_says_so_when_given_integers():
    x = torch.randint(0, 16, (40, 1, 8, 8))
    y = torch.arange(40) % 3
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(144, 3))
    with pytest.raises(Exception, match=r"int64"):
        Task.from_model(conv, train=DataLoader(TensorDataset(x, y), batch_size=8), val=(x.float(), y),
                        test=(x.float(), y))


# -- 2. attention ---------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["vit", "bert", "distilbert"])
def test_channel_pruning_removes_whole_heads_and_mlp_channels(arch):
    """Heads go whole (4 -> 2 at 0.5, the head count updated), MLP channels halve, the
    residual width stays; MACs halve; a fresh model pruned to the recorded widths loads
    the weights and computes the same function."""
    from slimtune.search._macs import count_macs
    from slimtune.spaces._attention import find_attention
    from slimtune.spaces.pruning import prune_channels, rebuild_channel_widths

    model = _model(arch)
    x = archs.data(arch)[0][:6]
    ctx = _ctx(x)
    pruned = prune_channels(copy.deepcopy(model), 0.5, ctx)
    assert set(ctx.info["prune"]["heads"].values()) == {2}
    attention = find_attention(pruned)
    assert attention and all(getattr(m, spec.heads) == 2 for _, m, spec in attention)
    widths = ctx.info["channel_widths"]
    assert all(w == 16 for name, w in widths.items() if name.endswith(("query", "q_lin")))
    assert all(w == 32 for name, w in widths.items() if name.endswith(("intermediate.dense", "ffn.lin1")))
    assert all(w == 32 for name, w in widths.items() if name.endswith(("output.dense", "out_lin", "ffn.lin2")))
    assert count_macs(pruned, x[:1]) < 0.55 * count_macs(model, x[:1])
    with torch.no_grad():
        out = pruned(x)
    assert out.shape == (6, 10)
    rebuilt = rebuild_channel_widths(_model(arch), widths, x[:1])
    rebuilt.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert torch.allclose(rebuilt.eval()(x), out, atol=1e-5)


def test_at_least_one_head_stays():
    from slimtune.spaces.pruning import prune_channels

    x = archs.data("vit")[0][:4]
    ctx = _ctx(x)
    prune_channels(_model("vit"), 0.9, ctx)
    assert set(ctx.info["prune"]["heads"].values()) == {1}


def test_pruning_nn_transformer_encoder_keeps_attention_and_prunes_the_mlp():
    from slimtune.spaces.pruning import prune_channels

    model = _model("tokens")
    x = archs.data("tokens")[0][:4]
    ctx = _ctx(x)
    pruned = prune_channels(copy.deepcopy(model), 0.5, ctx)
    for layer in pruned.encoder.layers:
        assert layer.self_attn.embed_dim == 32 and layer.linear1.out_features == 32
    assert pruned(x).shape == (4, 10)


def test_weight_pruning_masks_attention_weights_and_trains_more_than_one_step():
    """``nn.MultiheadAttention`` reads ``out_proj.weight`` directly: the masks are
    parametrizations, recomputed at every access (the old masks failed the second
    backward pass), and the packed in_proj weight is pruned too."""
    from slimtune.spaces.pruning import prune_weights

    model = _model("tokens").train()
    x, y = archs.data("tokens")[0][:16], archs.data("tokens")[1][:16]
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)

    def finetune(m, epochs=None, lr=None):
        for _ in range(3):
            loss = nn.functional.cross_entropy(m(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

    ctx = KnobContext(example_input=x[:1], calibration=x, finetune=finetune, finetune_epochs=1)
    pruned = prune_weights(model, 0.5, ctx)
    assert ctx.info["prune"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    attn = pruned.encoder.layers[0].self_attn
    assert float((attn.in_proj_weight == 0).float().mean()) > 0.2 and float((attn.out_proj.weight == 0).float().mean()) > 0.2
    assert not any("parametrizations" in k for k in pruned.state_dict())
    pruned.eval()
    with torch.no_grad():
        assert pruned(x).shape == (16, 10)


def test_low_rank_leaves_multihead_attention_whole_and_says_so():
    from slimtune.spaces.lowrank import LowRank

    model = _model("tokens")
    params = LowRank().params(model)
    assert not any("out_proj" in p.name for p in params)
    assert any("left whole: encoder.layers.0.self_attn.out_proj" in p.doc for p in params)
    x = archs.data("tokens")[0][:4]
    ctx = _ctx(x)
    out = LowRank().apply(model, {p.name: 0.5 for p in params}, ctx)
    assert ctx.info["lowrank"]["ranks"] and "encoder.layers.0.self_attn.out_proj" in ctx.info["lowrank"]["left_whole"]
    with torch.no_grad():  # the encoder layers' inference fast path reads linear1.weight: the factors' product
        assert out.eval()(x).shape == (4, 10)


def test_attention_macs_are_counted():
    """The projections and the attention products count (nn.MultiheadAttention calls
    neither its out_proj nor any nn.Linear)."""
    from slimtune.search._macs import count_macs

    model = archs.build("tokens").eval()
    x = archs.data("tokens")[0][:1]
    tokens, dim, ff = 65, 32, 64
    per_layer = 4 * tokens * dim * dim + 2 * tokens * tokens * dim + 2 * tokens * dim * ff
    assert count_macs(model, x) == 2 * per_layer + dim * 10


# -- 3. early exits ---------------------------------------------------------------------------------
EXITS = {
    "vit": ["model.vit.encoder.layer.0", "model.vit.encoder.layer.1", "model.vit.encoder.layer.2"],
    "bert": ["model.bert.encoder.layer.0", "model.bert.encoder.layer.1"],
    "distilbert": ["model.distilbert.transformer.layer.0", "model.distilbert.transformer.layer.1"],
    "tokens": ["encoder.layers.0"],
    "mobilenet_v3": ["2", "4", "5", "7"],
    "mlp_bn": ["2"],
}


@pytest.mark.parametrize("arch", list(EXITS))
def test_exits_are_found_after_blocks_and_reproduce_the_model(arch):
    """Exit points come from the real forward (embeddings, position embeddings, final
    norm and pooling stay where the model has them); the exit model is the model's
    function when nobody leaves, and exports as one ONNX model that agrees with torch in
    eval mode (BatchNorm reads its statistics on a batch of one)."""
    from slimtune.search._runtimes import compile_model
    from slimtune.spaces.exits import EarlyExitNet, EarlyExits

    model = _model(arch)
    knob = EarlyExits()
    docs = [p.doc for p in knob.params(model) if p.name.endswith(".enabled")]
    assert docs == [f"attach an exit head after {name}" for name in EXITS[arch]]
    x = archs.data(arch)[2][:6]
    ctx = _ctx(x)
    net = knob.apply(copy.deepcopy(model), {"exits.0.enabled": True, "exits.0.threshold": 2.0}, ctx)
    assert isinstance(net, EarlyExitNet)
    with torch.no_grad():
        assert torch.allclose(net.eval()(x), model(x), atol=1e-5)
        compiled = compile_model(net, runtime="onnxruntime", bits=32, calibration=x)
        logits, where = compiled.predict_with_exits(x)
        assert (where == 1).all() and logits == pytest.approx(model(x).numpy(), abs=1e-4)
        net.set_thresholds([0.0])
        first = net.forward_all(x)[0]
        compiled = compile_model(net, runtime="onnxruntime", bits=32, calibration=x)
        logits, where = compiled.predict_with_exits(x)
        assert (where == 0).all() and logits == pytest.approx(first.numpy(), abs=1e-4)


def test_exits_after_names_blocks_or_says_why_not():
    from slimtune.spaces.exits import EarlyExits

    vit = _model("vit")
    named = EarlyExits(exits_after=["vit.encoder.layer.1"]).params(vit)
    assert [p.doc for p in named if p.name.endswith(".enabled")] == ["attach an exit head after "
                                                                       "model.vit.encoder.layer.1"]
    tokens = _model("tokens")
    assert len(EarlyExits(exits_after=["encoder.layers.0"]).params(tokens)) == 2
    with pytest.raises(SpaceError, match=r"runs inside 'encoder.layers.0', which the trace keeps whole"):
        EarlyExits(exits_after=["encoder.layers.0.linear1"]).params(tokens)
    with pytest.raises(SpaceError, match=r"more than one value flows past it"):
        EarlyExits(exits_after=["5.body.3"]).params(_model("mobilenet_v3"))  # the block input waits for the residual


class ViTLike(nn.Module):
    """``blocks`` and ``head`` like timm's ViT, with a patch embedding, position
    embedding, final norm and CLS pooling around them: not ``head(blocks(x))``."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(1, 16, 4, stride=4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 16))
        self.pos_embed = nn.Parameter(torch.randn(1, 17, 16) * 0.02)
        self.blocks = nn.Sequential(*[nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
                                      for _ in range(4)])
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def test_blocks_and_head_are_not_taken_for_head_of_blocks():
    from slimtune.spaces.exits import EarlyExitNet, EarlyExits, exit_points

    torch.manual_seed(0)
    model = ViTLike().eval()
    assert exit_points(model) == []
    knob = EarlyExits(exits_after=["blocks.3"])  # named: allowed, even after the last block
    assert [p.doc for p in knob.params(model) if p.name.endswith(".enabled")] == ["attach an exit head after blocks.3"]
    auto = [p.doc for p in EarlyExits().params(model) if p.name.endswith(".enabled")]
    assert auto == [f"attach an exit head after blocks.{i}" for i in range(3)]
    x = torch.randn(3, 1, 16, 16)
    net = EarlyExits().apply(copy.deepcopy(model), {"exits.1.enabled": True, "exits.1.threshold": 2.0}, _ctx(x))
    assert isinstance(net, EarlyExitNet)
    with torch.no_grad():
        assert torch.allclose(net.eval()(x), model(x), atol=1e-6)


# -- 4. the space offers what runs ---------------------------------------------------------------
class OddAttention(nn.Module):
    """Self-attention with a fused qkv and a head count under a name no table knows:
    pruning its channels breaks the reshape."""

    def __init__(self, dim: int = 16, h: int = 2) -> None:
        super().__init__()
        self.h, self.d = h, dim // h
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.h, self.d).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class OddTokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(archs.VOCAB, 16)
        self.attn = OddAttention()
        self.fc = nn.Linear(16, 10)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        return self.fc((x + self.attn(x)).mean(dim=1))


def test_a_family_that_fails_on_the_model_is_not_offered_and_says_why():
    from click.testing import CliRunner

    from slimtune.search._task_space import build_space
    from slimtune.cli import main

    xtr, ytr, xva, yva, xte, yte = archs.data("tokens")
    torch.manual_seed(0)
    task = Task.from_model(OddTokens().eval(), train=(xtr, ytr), val=(xva, yva), test=(xte, yte), name="odd")
    space = build_space(task)
    assert "prune" in space.omitted and not any(p.family == "prune" for p in space.params)
    assert space.omitted["prune"].startswith("prune 0.45 ") and "fails on this model: RuntimeError: shape" \
        in space.omitted["prune"]
    assert {"quant", "lowrank", "distill"} <= {p.family for p in space.params}
    with pytest.raises(SpaceError, match=r"`prune.ratio` is fixed, but the space offers no prune parameter"):
        build_space(task, fixed={"prune.ratio": 0.5})
    result = CliRunner().invoke(main, ["space", "--task", "tests.test_user_archs:odd_task"])
    assert result.exit_code == 0, result.output
    line = [ln for ln in result.output.splitlines() if "no prune knob" in ln]
    assert len(line) == 1 and "RuntimeError" in line[0] and "Traceback" not in result.output


def odd_task() -> Task:
    xtr, ytr, xva, yva, xte, yte = archs.data("tokens")
    torch.manual_seed(0)
    return Task.from_model(OddTokens().eval(), train=(xtr, ytr), val=(xva, yva), test=(xte, yte), name="odd")


@pytest.mark.parametrize("arch", archs.ARCHS)
def test_the_space_of_each_architecture(arch):
    """What each architecture is offered; what is not, with its reason."""
    from slimtune.search._task_space import build_space

    space = build_space(archs.task(arch, STEPS))
    families = {p.family for p in space.params}
    expected = {"prune", "quant", "distill", "lowrank", "exits", "cluster"} | ({"dsconv"} if arch in ("vit", "mobilenet_v3")
                                                                     else set())
    assert families == expected, space.omitted
    if "dsconv" not in families:
        assert "no eligible conv" in space.omitted["dsconv"]


# -- 5. from-model warm starts and epochs --------------------------------------------------------
def test_from_model_warm_starts_are_the_recipes_adapted_to_the_model():
    from slimtune.search._task_space import build_space
    from slimtune.search._warm_start import warm_start_trials
    from slimtune.tasks._builtin import FEW_INPUT_CHANNELS, model_warm_starts
    from slimtune.tasks._from_model import scaled_epochs

    from tests import _hf_models as hf

    resnet = hf.hf_task("resnet", steps=STEPS)
    starts = resnet.extra["warm_starts"]
    assert starts[0] == {"quant.bits": 8, "quant.mode": "ptq"}
    assert starts[1] == {"quant.bits": 8, "quant.mode": "ptq", "prune.granularity": "channel", "prune.ratio": 0.33}
    assert starts[2] == {"prune.granularity": "channel", "prune.ratio": 0.33}
    assert starts[4] == {"quant.bits": 4, "quant.mode": "qat", "prune.granularity": "weight", "prune.ratio": 0.5}
    model = resnet.build_model()
    ds = starts[3]
    assert ds and all(model.get_submodule(n[len("dsconv."):]).in_channels > FEW_INPUT_CHANNELS for n in ds)
    stem = "dsconv.model.resnet.embedder.embedder.convolution"
    assert model.get_submodule(stem[len("dsconv."):]).in_channels == 1 and stem not in ds
    trials = warm_start_trials(build_space(resnet), resnet)
    assert len(trials) == 5 and trials[3][stem] is False and sum(trials[3][n] for n in ds) == len(ds)
    # the only k x k conv of the MobileNetV3-like model is its stem, of a ViT its patch embedding: no DS-conv start
    mobile = archs.task("mobilenet_v3", STEPS)
    assert [len(model_warm_starts(m)) for m in (mobile.build_model(), _model("vit"))] == [4, 4]
    assert Task.from_model(archs.trained("mlp_bn", STEPS), train=archs.data("mlp_bn")[:2],
                           val=archs.data("mlp_bn")[2:4], test=archs.data("mlp_bn")[4:],
                           warm_starts=[]).extra["warm_starts"] == []
    # epochs from the training split: digits (17 batches of 64) and a large data set
    assert (mobile.finetune_epochs, mobile.recovery_epochs) == scaled_epochs(17) == (3, 12)
    assert scaled_epochs(938) == (1, 1)


# -- 6. smaller points ------------------------------------------------------------------------------
def test_export_to_a_format_slimtune_does_not_write_is_one_line(tmp_path):
    from click.testing import CliRunner

    from slimtune.cli import main

    result = CliRunner().invoke(main, ["export", "any", "--trial", "0", "--out", str(tmp_path / "model.tflite"),
                                       "--storage", f"sqlite:///{tmp_path / 'none.db'}"])
    assert result.exit_code == 2 and result.output.strip().count("\n") == 0
    assert "ends in .tflite" in result.output and ".onnx" in result.output
    assert not (tmp_path / "none.db").exists()


def test_the_notebook_database_side_files_are_ignored():
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    for name in ("slimtune.db-shm", "slimtune.db-wal", "examples/slimtune.db-wal"):
        assert subprocess.run(["git", "check-ignore", "-q", name], cwd=root).returncode == 0, name


def test_the_digits_split_as_documented():
    """The built-in digits split is reproducible from its description: numpy's
    ``default_rng(0).permutation(1797)``, the first round(0.6 n) train, the next
    round(0.2 n) validation, the rest test; pixels / 16, then (x - 0.3) / 0.4."""
    from sklearn.datasets import load_digits

    from slimtune.tasks import get_task

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    train, val = int(round(0.6 * len(order))), int(round(0.2 * len(order)))
    test = order[train + val:]
    x = (digits.images[test].astype(np.float32)[:, None] / 16.0 - 0.3) / 0.4
    task = get_task("digits")
    assert (train, val, len(test)) == (1078, 359, 360)
    assert np.array_equal(task.data.y_test.numpy(), digits.target[test])
    assert np.allclose(task.data.x_test.numpy(), x, atol=1e-6)


def test_low_rank_gets_a_group_per_stage_of_a_stack_of_blocks():
    from slimtune.spaces.lowrank import lowrank_groups
    from tests._hf_models import build_hf

    mobilenet = LogitsOutput(build_hf("mobilenet_v2"), "logits").eval()
    groups = lowrank_groups(mobilenet)
    stages = [g for g in groups if g.startswith("model.mobilenet_v2.layer.")]
    assert len(stages) == 9 and len(groups) == 12  # 16 blocks in 9 runs, within 12 groups in all
    assert stages[0] == "model.mobilenet_v2.layer.0-1"
    # its "same" padding reads the conv's stride, kernel and dilation: the factorized conv has them
    from slimtune.search._space_trial import failing_families
    from slimtune.spaces._space import Space

    space = Space.for_model(mobilenet, families=["lowrank"])
    assert failing_families(space, mobilenet, torch.randn(4, 1, 32, 32), num_classes=10) == {}

    class Stack(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Linear(8, 16)
            self.blocks = nn.Sequential(*[nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))
                                          for _ in range(12)])
            self.head = nn.Linear(16, 3)

    names = list(lowrank_groups(Stack()))  # 12 blocks in 10 runs of consecutive blocks, 12 groups in all
    assert names[0] == "stem" and names[-1] == "head" and len(names) == 12
    assert names[1:5] == ["blocks.0", "blocks.1", "blocks.2-3", "blocks.4"]


def test_a_task_module_in_the_current_directory_imports_without_pythonpath(tmp_path):
    """The ``slimtune`` script does not put the current directory on Python's path;
    the task module is found there, and the workers are told where it was found."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "my_task.py").write_text(
        "from slimtune import tasks\n"
        "def make():\n"
        "    return tasks.get_task('digits')\n")
    script = Path(sys.executable).with_name("slimtune")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    proc = subprocess.run([str(script), "space", "--task", "my_task:make"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Joint space of task 'digits'" in proc.stdout
    code = ("import json; from slimtune.tasks import get_task; from slimtune.cli._workers import PATH_ENV, "
            "worker_environment; get_task('my_task:make'); print(json.loads(worker_environment('sqlite://', 1)[PATH_ENV])[0])")
    out = subprocess.run([sys.executable, "-P", "-c", code] if sys.version_info >= (3, 11) else
                         [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    if sys.version_info >= (3, 11):  # the directory found is on the path the workers get
        assert out.returncode == 0 and out.stdout.strip() == str(tmp_path), out.stderr
    missing = subprocess.run([str(script), "space", "--task", "nowhere:make"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "current directory" in missing.stderr


# -- end to end (slow) --------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("arch", archs.ARCHS)
def test_every_family_offered_runs_and_a_search_completes(arch, tmp_path):
    """``eval`` of each family the space offers, then a short search: every trial
    completes, and each exported ONNX model gives the stored validation accuracy."""
    import onnxruntime as ort

    from slimtune.studies import Study
    from tests import _hf_models as hf

    task = archs.task(arch)
    base, rows = hf.run_knobs(task, epochs=1, repeats=5)
    assert rows and all(r["accuracy"] > 0 for r in rows.values())
    study = Study.create_or_load(f"s-{arch}", storage=f"sqlite:///{tmp_path / 's.db'}", task=task,
                                 settings={"epochs": 1, "finetune_epochs": 1, "latency_repeats": 10}, seed=0,
                                 early_stopping=False)
    try:
        done = study.optimize(n_trials=4, progress=False)  # warm starts
        assert [r["state"] for r in done] == ["COMPLETE"] * 4, [r.get("error") for r in done]
        x, y = task.data.x_val.numpy(), task.data.y_val.numpy()
        for row in done:
            path = study.candidate(row["trial"]).export(tmp_path / f"t{row['trial']}.onnx")
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            exits = len(session.get_outputs()) == 2
            logits = np.concatenate([session.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))]) if exits \
                else session.run(None, {"input": x})[0]
            assert float((logits.argmax(1) == y).mean()) == pytest.approx(row["val_accuracy"], abs=1e-9)
    finally:
        study.close()


class FailsWhenTraining(nn.Module):
    """Runs in eval mode and on a few samples, fails on a training batch: a trial that
    the space's structure-only tries cannot foresee."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] > 8:
            raise RuntimeError("this model refuses to train on more than 8 samples")
        return self.fc(x)


def failing_task() -> Task:
    xtr, ytr, xva, yva, xte, yte = archs.data("mlp_bn")
    torch.manual_seed(0)
    return Task.from_model(FailsWhenTraining().eval(), train=(xtr, ytr), val=(xva, yva), test=(xte, yte),
                           name="fails", warm_starts=[])


def test_a_failing_trial_is_one_line_and_the_exit_code_says_so(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "slimtune.cli", "run", "--study", "f", "--task",
                           "tests.test_user_archs:failing_task", "--trials", "1", "--epochs", "1",
                           "--latency-repeats", "3", "--storage", f"sqlite:///{tmp_path / 's.db'}"],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    # trial 0 is the training-free int8 candidate (rung 0: nothing trains, so it completes)
    failed = [ln for ln in proc.stderr.splitlines() if "Trial 1 failed" in ln]  # (after the progress bar's \r)
    assert len(failed) == 1 and failed[0].endswith(
        "Trial 1 failed: RuntimeError: this model refuses to train on more than 8 samples"), proc.stderr
    assert "Error: 1 of 2 trials failed" in proc.stderr
    one = subprocess.run([sys.executable, "-m", "slimtune.cli", "eval", "--task", "tests.test_user_archs:failing_task",
                          "--epochs", "1"], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(root)},
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 1 and "Traceback" not in one.stderr, one.stderr
    assert one.stderr.strip().splitlines()[-1] == ("Error: the candidate failed: RuntimeError: this model refuses "
                                                   "to train on more than 8 samples")
