"""tfkd, uskd, simkd and dot against the authors' code, and the engine hooks they use.

The expected numbers in ``tests/unit/data/reference_values_engine3.json`` were computed once,
offline, by ``benchmarks/reference/make_reference_values_engine3.py`` from the authors' code read
at the commits it names (executed in float64 on the inputs this module builds; the module is
imported there for them). No test here needs the authors' repositories.

Engine hooks: a teacher-free method builds, loads, trains and stores no teacher; SimKD's test
accuracy, ``kdlight eval`` and ``kdlight export`` use the deployed network (student, projector,
the teacher's classifier), whose ONNX and TorchScript files give PyTorch's logits; DOT refuses
an optimizer other than SGD; AB and FSP clear the optimizer's state when their second stage
starts (``fresh_optimizer``).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from kdlight.engine import DistillationModule
from kdlight.errors import ConfigError
from kdlight.methods.ab import AB
from kdlight.methods.base import Context
from kdlight.methods.dot import DOT, DOTOptimizer
from kdlight.methods.fsp import FSP
from kdlight.methods.simkd import SimKD, projector
from kdlight.methods.tfkd import TFKD
from kdlight.methods.uskd import USKD, uskd_terms

DATA = Path(__file__).parent / "data" / "reference_values_engine3.json"
N, C = 8, 10


def gen(seed: int, *shape: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).float()


def labels(seed: int, n: int = N, c: int = C) -> torch.Tensor:
    return torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(seed))


def fill_(params, seed: int, scale: float = 0.3) -> None:
    """Deterministic values for ``params`` (the same on both sides)."""
    with torch.no_grad():
        for i, p in enumerate(params):
            p.copy_(gen(seed + i, *p.shape, scale=scale))


# ---- the inputs (the reference script imports these) -------------------------------------------
def tfkd_case() -> dict:
    return {"logits": gen(1, N, C, scale=3.0), "teacher": gen(2, N, C, scale=3.0), "y": labels(3)}


def uskd_case() -> dict:
    return {"logits": gen(11, N, C, scale=2.0), "mid": gen(12, N, 6), "y": labels(13)}


def simkd_case(s_hw: int, t_hw: int) -> dict:
    return {"fs": gen(21, 4, 6, s_hw, s_hw), "ft": gen(22, 4, 8, t_hw, t_hw), "y": labels(23, 4)}


def dot_case() -> dict:
    return {"x": gen(31, N, 5), "teacher": gen(32, N, 3, scale=2.0), "y": labels(33, N, 3)}


#: SimKD cases: (student H, teacher H); the larger map is pooled to the other's size
SIMKD_CASES = {"simkd_same": (4, 4), "simkd_student_larger": (8, 4), "simkd_teacher_larger": (4, 8)}


def dot_model() -> nn.ModuleDict:
    """A linear classifier, a scale only the KD loss reaches and one only the CE loss reaches."""
    m = nn.ModuleDict({"fc": nn.Linear(5, 3)})
    m.kd_scale = nn.Parameter(torch.ones(()))
    m.ce_scale = nn.Parameter(torch.ones(()))
    fill_(list(m.fc.parameters()), 34)
    return m


def dot_losses(m, case: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """mdistiller's KD terms: 0.1 * CE and 0.9 * T^2 KL at T 4 (its CIFAR DOT recipe)."""
    z = m.fc(case["x"])
    ce = 0.1 * F.cross_entropy(z * m.ce_scale, case["y"])
    t = 4.0
    log_s = F.log_softmax(z * m.kd_scale / t, dim=1)
    p_t = F.softmax(case["teacher"] / t, dim=1)
    kd = 0.9 * (F.kl_div(log_s, p_t, reduction="none").sum(1).mean() * t * t)
    return ce, kd


DOT_SETTINGS = {"lr": 0.05, "momentum": 0.9, "delta": 0.075, "weight_decay": 5e-4}


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads(DATA.read_text())


def close(got: torch.Tensor, want, rel: float = 2e-5, abs_: float = 1e-6) -> None:
    want = torch.tensor(want, dtype=torch.float64)
    assert got.shape == want.shape
    assert torch.allclose(got.detach().double(), want, rtol=rel, atol=abs_), (got, want)


def test_reference_file_names_its_sources(expected):
    assert set(expected["sources"]) == {
        "yuanli2333/Teacher-free-Knowledge-Distillation",
        "yzd-v/cls_KD",
        "DefangChen/SimKD",
        "megvii-research/mdistiller",
    }


# ---- tfkd ------------------------------------------------------------------------------------
def test_tfkd_virtual_teacher_matches_loss_kd_regularization(expected):
    case = tfkd_case()
    z = case["logits"].clone().requires_grad_(True)
    ctx = Context(z, None, case["y"], torch.arange(N))
    out = TFKD(form="virtual", alpha=0.1, temperature=20.0, correct_prob=0.99, multiplier=100.0)(
        ctx
    )
    out["loss"].backward()
    close(out["loss"], expected["tfkd_virtual"]["loss"])
    close(z.grad, expected["tfkd_virtual"]["grad"])


def test_tfkd_self_matches_loss_kd_self(expected):
    case = tfkd_case()
    z = case["logits"].clone().requires_grad_(True)
    ctx = Context(z, case["teacher"], case["y"], torch.arange(N))
    method = TFKD(form="self", alpha=0.95, temperature=6.0, multiplier=50.0)
    assert method.needs_teacher and not TFKD().needs_teacher
    out = method(ctx)
    out["loss"].backward()
    close(out["loss"], expected["tfkd_self"]["loss"])
    close(z.grad, expected["tfkd_self"]["grad"])


# ---- uskd ------------------------------------------------------------------------------------
def test_uskd_matches_the_authors_loss_with_the_same_weak_head(expected):
    case = uskd_case()
    method = USKD(alpha=0.1, beta=0.1, mu=0.1, ce_weight=0.0, layer="mid")
    method.resolve_layers(nn.Identity(), None)
    method.build({"mid": case["mid"]}, {}, C)
    fill_(list(method.fc.parameters()), 14)
    z = case["logits"].clone().requires_grad_(True)
    mid = case["mid"].clone().requires_grad_(True)
    ctx = Context(z, None, case["y"], torch.arange(N), student_feats={"mid": mid})
    out = method(ctx)
    out["loss"].backward()
    want = expected["uskd"]
    close(out["loss"], want["loss"])
    close(z.grad, want["grad_logits"])
    close(mid.grad, want["grad_mid"])
    close(method.fc.weight.grad, want["grad_fc_weight"])
    # the terms alone, at the authors' ImageNet weights
    t, non, weak = uskd_terms(case["logits"], method.fc(case["mid"]), case["y"], 0.005)
    close(1.0 * t + 0.1 * non + weak, want["loss_imagenet"])


# ---- simkd -----------------------------------------------------------------------------------
def simkd_method(case: dict) -> SimKD:
    method = SimKD(student_layer="s", teacher_layer="t")
    teacher = nn.Sequential(nn.Identity(), nn.Linear(8, C))
    method.classifier_name = "1"
    method.resolve_layers(nn.Identity(), teacher)
    method.student_layer, method.teacher_layer = "s", "t"
    method.build({"s": case["fs"]}, {"t": case["ft"]}, C)
    fill_([p for p in method.projector.parameters()], 24)
    fill_(list(method.classifier.parameters()), 40)
    return method


@pytest.mark.parametrize("name", sorted(SIMKD_CASES))
def test_simkd_projector_loss_and_predictions_match_the_authors(name, expected):
    case = simkd_case(*SIMKD_CASES[name])
    method = simkd_method(case)
    fs = case["fs"].clone().requires_grad_(True)
    ctx = Context(None, None, case["y"], torch.arange(4), student_feats={"s": fs})
    ctx.teacher_feats = {"t": case["ft"]}
    out = method(ctx)
    out["loss"].backward()
    want = expected[name]
    close(out["loss"], want["loss"])
    close(fs.grad, want["grad_fs"])
    close(method.predict(method.project(case["fs"])), want["pred"], rel=1e-4, abs_=1e-5)
    assert not any(p.requires_grad for p in method.classifier.parameters())


def test_simkd_flat_features_use_a_linear_projector():
    p = projector(6, 8, 2, flat=True)
    assert isinstance(p[0], nn.Linear) and p(torch.randn(4, 6)).shape == (4, 8)


# ---- dot -------------------------------------------------------------------------------------
def test_dot_update_matches_mdistillers_optimizer_over_two_steps(expected):
    case = dot_case()
    m = dot_model()
    params = list(m.parameters())
    opt = DOTOptimizer(params, **DOT_SETTINGS)
    for _ in range(2):
        ce, kd = dot_losses(m, case)
        grads = torch.autograd.grad(kd, params, retain_graph=True, allow_unused=True)
        opt.add_distill_gradients(params, grads)
        opt.zero_grad(set_to_none=True)
        ce.backward()
        opt.step()
    for (name, p), want in zip(m.named_parameters(), expected["dot"]["params"], strict=True):
        close(p, want, rel=1e-6, abs_=1e-7), name


def test_dot_scaled_gradients_are_unscaled():
    case, params = dot_case(), None
    results = []
    for scale in (1.0, 1024.0):
        m = dot_model()
        params = list(m.parameters())
        opt = DOTOptimizer(params, **DOT_SETTINGS)
        ce, kd = dot_losses(m, case)
        grads = torch.autograd.grad(kd * scale, params, retain_graph=True, allow_unused=True)
        opt.add_distill_gradients(params, grads, scale)
        ce.backward()
        opt.step()
        results.append(torch.cat([p.detach().flatten() for p in params]))
    assert torch.allclose(results[0], results[1], atol=1e-7)


def tiny_nets():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    return student, teacher


def loader(n: int = 16):
    x, y = torch.randn(n, 12, generator=torch.Generator().manual_seed(5)), labels(6, n, 3)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


def trainer(**kw) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, **kw,
    )  # fmt: skip


def test_dot_refuses_adam_naming_it():
    student, teacher = tiny_nets()
    module = DistillationModule(
        student, teacher, "dot", optimizer=functools.partial(torch.optim.Adam, lr=1e-3)
    )
    with pytest.raises(ConfigError, match=r"module\.optimizer\._target_=torch\.optim\.adam\.Adam"):
        module.build_optimizer(list(student.parameters()), False)
    with pytest.raises(ConfigError, match="nesterov"):
        DOT().optimizer(functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9, nesterov=True), [])


def test_dot_trains_through_lightning_with_its_optimizer_and_the_scheduler():
    student, teacher = tiny_nets()
    sgd = functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5)
    module = DistillationModule(student, teacher, "dot", optimizer=sgd, scheduler=sched)
    before = [p.detach().clone() for p in student.parameters()]
    t = trainer(max_epochs=2, gradient_clip_val=1.0)
    t.fit(module, loader())
    opt = t.optimizers[0]
    assert isinstance(opt, DOTOptimizer) and opt.param_groups[0]["lr"] == pytest.approx(0.0125)
    assert all("momentum_kd_buffer" in opt.state[p] for p in student.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True))


# ---- teacher-free ----------------------------------------------------------------------------
def test_library_api_trains_a_teacher_free_method_without_a_teacher(caplog):
    student, teacher = tiny_nets()
    module = DistillationModule(student, None, "tfkd")
    assert module.teacher is None and not module.log_agreement
    trainer(max_epochs=1).fit(module, loader())
    assert trainer().test(module, loader(), verbose=False)[0]["test/acc"] >= 0
    with caplog.at_level("WARNING", logger="kdlight.engine"):
        ignored = DistillationModule(student, teacher, "uskd", example_input=torch.randn(2, 12))
    assert ignored.teacher is None and "ignored" in caplog.text
    with pytest.raises(ConfigError, match="teacher=None"):
        DistillationModule(student, None, "kd")


@pytest.mark.parametrize("method", ["tfkd", "uskd"])
def test_a_teacher_free_run_builds_and_stores_no_teacher(method, make_cfg, tmp_path, caplog):
    from kdlight.run.train import run

    store = tmp_path / "store"
    with caplog.at_level("WARNING"):
        record = run(
            make_cfg(
                "+experiment=fmnist_mlp_kd",
                f"distill={method}",
                "teacher_ckpt=/nonexistent.pt",
                "+trainer.fast_dev_run=true",
                store_dir=store,
            )  # fmt: skip
        )
    assert record["status"] == "finished" and record["hparams"]["teacher"] == "none"
    assert "teacher/source" not in record and "test/agreement_last" not in record
    assert not (store / "teachers").exists() and not (store / "logits").exists()
    assert sum("ignored" in r.getMessage() for r in caplog.records) == 1


# ---- simkd deployment ------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:FutureWarning")
def test_simkd_evaluates_and_exports_its_deployed_network(make_cfg, tmp_path):
    import onnxruntime as ort

    from kdlight.cli.export import main as export_main
    from kdlight.run.evaluate import evaluate
    from kdlight.run.read import build_method, deployed_network, open_run
    from kdlight.run.train import run

    cfg = make_cfg(
        "+experiment=cifar_cnn_kd_5pct_cpu", "distill=simkd", "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2", store_dir=tmp_path / "store",
    )  # fmt: skip
    record = run(cfg)
    run_dir = Path(cfg.paths.output_dir)
    (run_dir / ".hydra").mkdir(exist_ok=True)  # the config Hydra would have saved
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    opened, ckpt = open_run(run_dir, "last")
    student = opened.build("student")
    from kdlight.checkpoints import load_weights

    load_weights(student, ckpt)
    net = deployed_network(build_method(opened.cfg.distill), student, ckpt)
    assert type(net).__name__ == "ReusedClassifierNet"
    # the run's test accuracy is the deployed network's: kdlight eval recomputes it from the file
    eval_cfg = OmegaConf.create({"run": str(run_dir), "which": "last", "trainer": {}})
    assert evaluate(eval_cfg)["test/acc"] == pytest.approx(record["test/acc_last"])
    out = tmp_path / "export"
    assert export_main([str(run_dir), "--which", "last", "--out", str(out), "--no-teacher",
                        "--warmup", "1", "--runs", "2"]) == 0  # fmt: skip
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        ref = net(x).numpy()
    session = ort.InferenceSession(str(out / "student.onnx"), providers=["CPUExecutionProvider"])
    assert np.abs(session.run(["logits"], {"input": x.numpy()})[0] - ref).max() < 1e-4
    ts = torch.jit.load(str(out / "student.ts"))
    assert np.abs(ts(x).detach().numpy() - ref).max() < 1e-5
    report = json.loads((out / "deployment.json").read_text())
    own = sum(p.numel() for p in student.parameters())
    assert report["models"]["student"]["parameters"] > own  # projector + teacher classifier


# ---- staged methods: a fresh optimizer state when the second stage starts ----------------------
class StateAtFirstBatch(L.Callback):
    """The number of parameters with optimizer state when each epoch's first step starts."""

    def __init__(self) -> None:
        self.sizes: dict[int, int] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.sizes[trainer.current_epoch] = len(trainer.optimizers[0].state)


def conv_nets():
    torch.manual_seed(0)

    def net():
        return nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4, 3),
        )  # fmt: skip

    return net(), net()


@pytest.mark.parametrize("fresh", [True, False])
def test_ab_second_stage_starts_with_a_fresh_adam_state(fresh):
    student, teacher = conv_nets()
    method = AB(init_epochs=1, fresh_optimizer=fresh, student_layers=["1:in"], teacher_layers=["1:in"])  # fmt: skip
    adam = functools.partial(torch.optim.Adam, lr=1e-3)
    x = torch.randn(16, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    module = DistillationModule(student, teacher, method, optimizer=adam, example_input=x[:2])
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, labels(6, 16, 3)), batch_size=8)  # fmt: skip
    probe = StateAtFirstBatch()
    trainer(max_epochs=3, callbacks=[probe]).fit(module, data)
    trained_in_init = len(list(student[0].parameters())) + len(list(method.parameters()))
    assert probe.sizes[0] == 0
    assert probe.sizes[1] == (0 if fresh else trained_in_init)  # the AB stage's moments, or none
    assert probe.sizes[2] > 0  # only the switch is afresh


def test_fsp_restarts_only_when_its_init_stage_ends():
    def restarts(**kw) -> list[bool]:
        return [FSP(**kw).restarts_optimizer(e) for e in range(4)]

    assert restarts(init_epochs=2) == [False, False, True, False]
    assert not any(restarts(init_epochs=0))
    assert not any(restarts(init_epochs=2, fresh_optimizer=False))
    assert DOT().restarts_optimizer(0) is False  # the default: never
