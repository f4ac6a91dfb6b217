"""Compute the authors'-code reference values that tests/unit/test_methods3_engine.py pins.

Run once, offline, against local clones of the authors' repositories; the test needs neither
the clones nor this script. The code is read from each clone at the commit named below
(``git --git-dir <clone>/.git show <commit>:<path>``, or a bare clone's git directory, so
whatever is checked out does not matter), executed with these source patches only: ``.cuda()``
dropped (CPU), and cls_KD's ``from mmcls.registry import MODELS`` / ``@MODELS.register_module()``
lines removed. Everything runs in float64 on the inputs the test module builds (it is imported
for them), with the same parameter values as kdlight's side for every learnable part.

    repository                                       commit                                    files read
    yuanli2333/Teacher-free-Knowledge-Distillation   d000ab378a409535a5f5f645b473e05e27529a02  my_loss_function.py
    yzd-v/cls_KD                                     1e5d48f36957ee460d39d7ebc592c6cc7f8f3d66  mmcls/models/dis_losses/uskd.py
    DefangChen/SimKD                                 2b389c31ed7779aea31e7aaf0bb0f2d8b6ac2f01  models/util.py (SimKD)
    megvii-research/mdistiller                       a08d46f10d6102bd6e3f258ca5ac880b020ea259  mdistiller/engine/dot.py

How to run (from the kdlight repository root, in its virtualenv)::

    mkdir -p /tmp/refs && cd /tmp/refs
    git clone https://github.com/yuanli2333/Teacher-free-Knowledge-Distillation tfkd
    git clone https://github.com/yzd-v/cls_KD
    git clone https://github.com/DefangChen/SimKD
    git clone https://github.com/megvii-research/mdistiller
    cd -
    python benchmarks/reference/make_reference_values_engine3.py --tfkd /tmp/refs/tfkd \
        --cls-kd /tmp/refs/cls_KD --simkd /tmp/refs/SimKD --mdistiller /tmp/refs/mdistiller

It writes tests/unit/data/reference_values_engine3.json (``--out`` to write elsewhere). Rerun
it only when a case is added or an input builder changes; never to make a failing test pass.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from authors_code import NO_CUDA, ROOT, load_source, load_tests  # noqa: E402

REPOS = {
    "yuanli2333/Teacher-free-Knowledge-Distillation": "d000ab378a409535a5f5f645b473e05e27529a02",
    "yzd-v/cls_KD": "1e5d48f36957ee460d39d7ebc592c6cc7f8f3d66",
    "DefangChen/SimKD": "2b389c31ed7779aea31e7aaf0bb0f2d8b6ac2f01",
    "megvii-research/mdistiller": "a08d46f10d6102bd6e3f258ca5ac880b020ea259",
}


PATCHES = (NO_CUDA, ("from mmcls.registry import MODELS", ""), ("@MODELS.register_module()", ""))


def source(clone: Path, repo: str, path: str) -> dict:
    """Execute ``path`` of ``clone`` at the pinned commit (patched as the module docstring says)."""
    namespace: dict = {"__name__": f"ref_{Path(path).stem}"}
    return load_source(
        clone, REPOS[repo], path, namespace, filename=f"{repo}/{path}", replace=PATCHES
    )


def lst(t: torch.Tensor):
    return t.detach().double().tolist()


def tfkd_values(ns: dict, T) -> dict:
    case = T.tfkd_case()
    out = {}
    z = case["logits"].double().requires_grad_(True)
    params = SimpleNamespace(reg_alpha=0.1, reg_temperature=20.0, multiplier=100.0)
    loss = ns["loss_kd_regularization"](z, case["y"], params)
    loss.backward()
    out["tfkd_virtual"] = {"loss": loss.item(), "grad": lst(z.grad)}
    z = case["logits"].double().requires_grad_(True)
    params = SimpleNamespace(alpha=0.95, temperature=6.0, multiplier=50.0)
    loss = ns["loss_kd_self"](z, case["y"], case["teacher"].double(), params)
    loss.backward()
    out["tfkd_self"] = {"loss": loss.item(), "grad": lst(z.grad)}
    return out


def uskd_values(ns: dict, T) -> dict:
    case = T.uskd_case()
    ref = ns["USKDLoss"]("loss_uskd", True, channel=6, alpha=0.1, beta=0.1, mu=0.1, num_classes=T.C)
    T.fill_(list(ref.fc.parameters()), 14)
    ref = ref.double()
    z = case["logits"].double().requires_grad_(True)
    mid = case["mid"].double().requires_grad_(True)
    loss = ref(mid, z, case["y"])
    loss.backward()
    out = {
        "loss": loss.item(),
        "grad_logits": lst(z.grad),
        "grad_mid": lst(mid.grad),
        "grad_fc_weight": lst(ref.fc.weight.grad),
    }
    ref.alpha, ref.mu = 1.0, 0.005
    with torch.no_grad():
        out["loss_imagenet"] = ref(case["mid"].double(), case["logits"].double(), case["y"]).item()
    return {"uskd": out}


def simkd_values(ns: dict, T) -> dict:
    out = {}
    for name, (s_hw, t_hw) in T.SIMKD_CASES.items():
        case = T.simkd_case(s_hw, t_hw)
        ref = ns["SimKD"](s_n=6, t_n=8, factor=2)
        T.fill_(list(ref.transfer.parameters()), 24)
        cls_t = nn.Linear(8, T.C)
        T.fill_(list(cls_t.parameters()), 40)
        ref, cls_t = ref.double(), cls_t.double()
        fs = case["fs"].double().requires_grad_(True)
        trans_s, trans_t, pred = ref(fs, case["ft"].double(), cls_t)
        loss = nn.MSELoss()(trans_s, trans_t)  # the authors' -c 0 -d 0 -b 1
        loss.backward()
        out[name] = {"loss": loss.item(), "grad_fs": lst(fs.grad), "pred": lst(pred)}
    return out


def dot_values(ns: dict, T) -> dict:
    case = {k: (v.double() if v.is_floating_point() else v) for k, v in T.dot_case().items()}
    m = T.dot_model().double()
    s = T.DOT_SETTINGS
    opt = ns["DistillationOrientedTrainer"](
        list(m.parameters()), lr=s["lr"], momentum=s["momentum"] - s["delta"],
        momentum_kd=s["momentum"] + s["delta"], weight_decay=s["weight_decay"],
    )  # fmt: skip
    for _ in range(2):  # mdistiller's DOT.train_iter
        loss_ce, loss_kd = T.dot_losses(m, case)
        opt.zero_grad(set_to_none=True)
        loss_kd.backward(retain_graph=True)
        opt.step_kd()
        opt.zero_grad(set_to_none=True)
        loss_ce.backward()
        opt.step()
    return {"dot": {"params": [lst(p) for p in m.parameters()]}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tfkd", type=Path, required=True)
    p.add_argument("--cls-kd", type=Path, required=True)
    p.add_argument("--simkd", type=Path, required=True)
    p.add_argument("--mdistiller", type=Path, required=True)
    p.add_argument(
        "--out", type=Path, default=ROOT / "tests/unit/data/reference_values_engine3.json"
    )
    args = p.parse_args()
    T = load_tests("test_methods3_engine.py", "engine3_cases")
    tf = "yuanli2333/Teacher-free-Knowledge-Distillation"
    values = {
        "sources": {
            tf: {"commit": REPOS[tf], "files": ["my_loss_function.py"]},
            "yzd-v/cls_KD": {
                "commit": REPOS["yzd-v/cls_KD"],
                "files": ["mmcls/models/dis_losses/uskd.py"],
            },
            "DefangChen/SimKD": {"commit": REPOS["DefangChen/SimKD"], "files": ["models/util.py"]},
            "megvii-research/mdistiller": {
                "commit": REPOS["megvii-research/mdistiller"],
                "files": ["mdistiller/engine/dot.py"],
            },
        }
    }
    values.update(tfkd_values(source(args.tfkd, tf, "my_loss_function.py"), T))
    uskd = source(args.cls_kd, "yzd-v/cls_KD", "mmcls/models/dis_losses/uskd.py")
    values.update(uskd_values(uskd, T))
    values.update(simkd_values(source(args.simkd, "DefangChen/SimKD", "models/util.py"), T))
    dot = source(args.mdistiller, "megvii-research/mdistiller", "mdistiller/engine/dot.py")
    values.update(dot_values(dot, T))
    args.out.write_text(json.dumps(values, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
