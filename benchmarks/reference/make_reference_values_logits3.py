"""Compute the authors'-code reference values that tests/unit/test_methods3_logits.py pins.

Run once, offline, against local clones of the authors' repositories; the test needs neither
the clones nor this script. Each file is read at the commit named below (``git -C <clone>
show <commit>:<path>``), executed with documented patches, and run in float64 (and once in
float32, for ``f32_err``) on the inputs the test module builds (it is imported for them).

    repository                                        commit                                    files read
    Jin-Ying/Multi-Level-Logit-Distillation           5ee473fcf193dfb00a0598b64d0acfe6ad58a482  mdistiller/distillers/KD_ours.py
    zkxufo/TTM                                        fe457b33a71ba27536ec04fe3d32c5b04963522f  distiller_zoo/wttm.py
    yzd-v/cls_KD                                      1e5d48f36957ee460d39d7ebc592c6cc7f8f3d66  mmcls/models/dis_losses/nkd.py
    shicaiwei123/SDD-CVPR2024                         e412036c6b7b67d8ed25418d2dedad223ab49a71  mdistiller/distillers/{KD,SDD_DKD}.py,
                                                                                                mdistiller/models/cifar/utils.py
    WangYZ1608/Knowledge-Distillation-via-ND          fc6f3f9058ed35189a1d3c0a79a7594025e4d88f  CIFAR/utils.py,
                                                                                                CIFAR/Models/embtrans_cifar.py
    bellymonster/Weighted-Soft-Label-Distillation     67820dd7c3c733d5331b78b1e66ef8a990391d5e  knowledge_distiller.py

Patches: ``.cuda()`` dropped; lines importing the package itself (``from .``, ``from
mdistiller``, ``from mmcls``), MLKD's unused ``from termios``/``from turtle`` and WSLD's
``imagenet_train_cfg``/``tools`` imports dropped (WSLD gets ``config.optim.label_smooth =
False``); WSLD's ``num_classes=1000`` set to the case's 10 classes and its hard-coded T / alpha
set per case on the instance; KD++'s class means (``T_EMB``) are the exact means of the
case's history and batch teacher embeddings (the authors round them to 4 decimals); SDD's
region logits are computed as ``ResNet_SDD.forward`` does (SPP, permute, fc, permute).
``kdpp_head`` runs the authors' ``EmbTrans`` built as ``train_cifar_kd.py`` builds it for
``wrn40_1_cifar`` (64 -> 128), around a stand-in student that returns the case's embedding and
logits, with the case's head parameters, in training mode and under the test module's
``fixed_dropout`` (the case's keep mask in place of a random one; kdlight's side runs under
the same); its BatchNorm running statistics after the step are recorded too (``buffers``).

    mkdir -p /tmp/refs && cd /tmp/refs
    git clone https://github.com/Jin-Ying/Multi-Level-Logit-Distillation mlkd
    git clone https://github.com/zkxufo/TTM ttm
    git clone https://github.com/yzd-v/cls_KD nkd
    git clone https://github.com/shicaiwei123/SDD-CVPR2024 sdd
    git clone https://github.com/WangYZ1608/Knowledge-Distillation-via-ND kdpp
    git clone https://github.com/bellymonster/Weighted-Soft-Label-Distillation wsld
    cd -
    python benchmarks/reference/make_reference_values_logits3.py --clones /tmp/refs

(``--clones`` holds one clone per method, named as above; a bare git directory works too.)
It writes tests/unit/data/reference_values_logits3.json. Rerun it only when a case is added
or an input builder changes; never to make a failing test pass.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from authors_code import (  # noqa: E402
    NO_CUDA,
    PRELUDE,
    ROOT,
    grad_record,
    leaf,
    load_source,
    load_tests,
    rel_errs,
)

REPOS = {
    "mlkd": ("Jin-Ying/Multi-Level-Logit-Distillation", "5ee473fcf193dfb00a0598b64d0acfe6ad58a482"),
    "wttm": ("zkxufo/TTM", "fe457b33a71ba27536ec04fe3d32c5b04963522f"),
    "nkd": ("yzd-v/cls_KD", "1e5d48f36957ee460d39d7ebc592c6cc7f8f3d66"),
    "sdd": ("shicaiwei123/SDD-CVPR2024", "e412036c6b7b67d8ed25418d2dedad223ab49a71"),
    "kdpp": (
        "WangYZ1608/Knowledge-Distillation-via-ND",
        "fc6f3f9058ed35189a1d3c0a79a7594025e4d88f",
    ),
    "wsld": (
        "bellymonster/Weighted-Soft-Label-Distillation",
        "67820dd7c3c733d5331b78b1e66ef8a990391d5e",
    ),
}
DROP = ("from .", "from __future__", "from mdistiller", "from mmcls", "from termios",
        "from turtle", "from imagenet_train_cfg", "from tools")  # fmt: skip


class Sources:
    def __init__(self, clones: Path):
        self.clones = clones

    def load(self, method: str, path: str, replace: dict | None = None, **inject) -> dict:
        repo, commit = REPOS[method]
        ns = {**PRELUDE, "np": np, "__name__": "ref", **inject}
        return load_source(self.clones / method, commit, path, ns, filename=f"{repo}/{path}",
                           drop=DROP, replace=[NO_CUDA, *(replace or {}).items()])  # fmt: skip


class Distiller(nn.Module):
    def __init__(self, student=None, teacher=None):
        super().__init__()


def register(*args, **kwargs):
    return lambda cls: cls


class StandIn(nn.Module):
    """The student inside ``EmbTrans``: ``student(x, embed=True)`` -> (embedding, logits)."""

    def __init__(self, emb: torch.Tensor, logits: torch.Tensor):
        super().__init__()
        self.emb, self.logits = emb, logits

    def forward(self, x, embed=True):
        return self.emb, self.logits


class References:
    def __init__(self, src: Sources, tests):
        self.t = tests
        self.mlkd = src.load("mlkd", "mdistiller/distillers/KD_ours.py", Distiller=Distiller,
                             CrossEntropyLabelSmooth=None)  # fmt: skip
        self.wttm = src.load("wttm", "distiller_zoo/wttm.py")
        mmcls = types.SimpleNamespace(register_module=register)
        self.nkd = src.load("nkd", "mmcls/models/dis_losses/nkd.py", MODELS=mmcls)
        self.sdd_kd = src.load("sdd", "mdistiller/distillers/KD.py", Distiller=Distiller)
        self.sdd_dkd = src.load("sdd", "mdistiller/distillers/SDD_DKD.py", Distiller=Distiller,
                                dkd_loss_origin=None)  # fmt: skip
        self.spp = src.load("sdd", "mdistiller/models/cifar/utils.py")["SPP"]
        self.kdpp = src.load("kdpp", "CIFAR/utils.py")
        self.emb_trans = src.load("kdpp", "CIFAR/Models/embtrans_cifar.py")["EmbTrans"]
        cfg = types.SimpleNamespace(optim=types.SimpleNamespace(label_smooth=False))
        self.wsld = src.load("wsld", "knowledge_distiller.py", {"num_classes=1000": "num_classes=10"},
                             config=cfg, utils=None)  # fmt: skip

    # each returns ({term: value}, {grad name: tensor}) named as kdlight's
    def mlkd_(self, case, kw, epoch, dtype):
        s = leaf(case["student_logits"], dtype)
        t = case["teacher_logits"].to(dtype)
        y = case["labels"] if case["labels"] is not None else torch.zeros(len(s), dtype=torch.long)
        ce_w, kd_w = kw.get("ce_weight", 0.1), kw.get("kd_weight", 0.9)
        m = self.mlkd["KD_ours"].__new__(self.mlkd["KD_ours"])
        nn.Module.__init__(m)
        m.temperature, m.ce_loss_weight, m.kd_loss_weight = 4.0, ce_w, kd_w
        m.student = lambda x: (s, None)
        m.teacher = lambda x: (t, None)
        _, losses = m.forward_train("view", "view", y)
        temps = (4.0, 3.0, 5.0, 2.0, 6.0)
        kd = sum(self.mlkd["kd_loss"](s, t, T) for T in temps)
        bc = sum(self.mlkd["bc_loss"](s, t, T) for T in temps)
        cc = sum(self.mlkd["cc_loss"](s, t, T) for T in temps)
        ce = F.cross_entropy(s, y)
        loss = sum(losses.values())
        if not kw.get("strong_branch", True):  # the weak view's terms alone
            loss = loss - ce_w * ce - kd_w * kd
        loss.backward()
        terms = {"loss": loss, "loss_kd": kd, "loss_bc": bc, "loss_cc": cc}
        if case["labels"] is not None:
            terms["loss_ce"] = ce
        return terms, {"student_logits": s.grad}

    def wttm_(self, case, kw, epoch, dtype):
        s = leaf(case["student_logits"], dtype)
        t = case["teacher_logits"].to(dtype)
        term = self.wttm["WTTM"](kw.get("power", 0.2))(s, t)
        ce_w = kw.get("ce_weight", 1.0)
        loss = kw.get("beta", 4.0) * term  # loops.py: gamma * cls + alpha * div + beta * kd
        terms = {"loss_wttm": term}
        if case["labels"] is not None:
            terms["loss_ce"] = F.cross_entropy(s, case["labels"])
            loss = loss + ce_w * terms["loss_ce"]
        loss.backward()
        return {"loss": loss, **terms}, {"student_logits": s.grad}

    def nkd_(self, case, kw, epoch, dtype):
        s = leaf(case["student_logits"], dtype)
        t = case["teacher_logits"].to(dtype)
        crit = self.nkd["NKDLoss"]("loss_nkd", True, temp=kw["temperature"], gamma=kw["gamma"])
        nkd = crit(s, t, case["labels"])
        ce = F.cross_entropy(s, case["labels"])
        loss = ce + nkd  # ClassificationDistiller: ori_loss + loss_nkd
        loss.backward()
        return {"loss": loss, "loss_nkd": nkd, "loss_ce": ce}, {"student_logits": s.grad}

    def wsld_(self, case, kw, epoch, dtype):
        s = leaf(case["student_logits"], dtype)
        t = case["teacher_logits"].to(dtype)
        d = self.wsld["WSLDistiller"](lambda x: t, lambda x: s)
        d.T, d.alpha = kw["temperature"], kw["alpha"]
        _, loss = d("image", case["labels"])
        ce = F.cross_entropy(s, case["labels"])
        loss.backward()
        return {"loss": loss, "loss_wsld": (loss - ce) / kw["alpha"], "loss_ce": ce}, {
            "student_logits": s.grad
        }

    def kdpp_(self, case, kw, epoch, dtype):
        s = leaf(case["student_logits"], dtype)
        t = case["teacher_logits"].to(dtype)
        s_emb = leaf(case["student_emb"], dtype)
        t_emb = case["teacher_emb"].to(dtype)
        head, emb_s = None, s_emb
        if "head" in case:  # train_cifar_kd.py: model = EmbTrans(student=model, model_name=...)
            head = self.emb_trans(student=StandIn(s_emb, s), model_name="wrn40_1_cifar")
            bn, _, fc = head.fc1
            head.to(dtype).train()
            with torch.no_grad():
                for p, v in zip([*bn.parameters(), *fc.parameters()], case["head"], strict=True):
                    assert p.shape == v.shape, (p.shape, v.shape)
                    p.copy_(v)
            with self.t.fixed_dropout(case["dropout_keep"]) as calls:
                emb_s, logits = head("images", embed=True)
            assert len(calls) == 1 and logits is s, calls
        y = case["labels"]
        emb = torch.cat([case["history_emb"], case["teacher_emb"]])
        lab = torch.cat([case["history_labels"], y])
        t_embs = {str(c): emb[lab == c].mean(dim=0).tolist() for c in lab.unique().tolist()}
        kd_loss = self.kdpp["KDLoss"](kl_loss_factor=kw.get("kd_weight", 1.0), T=4.0)
        nd_loss = self.kdpp["DirectNormLoss"](num_class=10, nd_loss_factor=kw.get("nd_weight", 2.0))
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # torch.tensor(T_EMB[...]) takes the default dtype
        try:
            nd = nd_loss(s_emb=emb_s, t_emb=t_emb, T_EMB=t_embs, labels=y)
        finally:
            torch.set_default_dtype(previous)
        ce = F.cross_entropy(s, y)
        div = kd_loss(s, t) * min(1.0, epoch / 20.0)  # train_cifar_kd.py, epochs from 0
        loss = ce + div + nd
        loss.backward()
        terms = {"loss": loss, "loss_ce": ce, "loss_kd": kd_loss(s, t) / kw.get("kd_weight", 1.0),
                 "loss_nd": nd / kw.get("nd_weight", 2.0)}  # fmt: skip
        grads = {"student_logits": s.grad, "student_emb": s_emb.grad}
        if head is not None:
            grads.update(head_bn_weight=bn.weight.grad, head_bn_bias=bn.bias.grad,
                         head_fc_weight=fc.weight.grad, head_fc_bias=fc.bias.grad)  # fmt: skip
            grads["buffers"] = {"head_bn_running_mean": bn.running_mean,
                                "head_bn_running_var": bn.running_var}  # fmt: skip
        return terms, grads

    def sdd_(self, case, kw, epoch, dtype):
        scales = kw.get("scales", [1, 2, 4])
        spp = self.spp(M=str(scales).replace(" ", ""))
        fmap = leaf(case["student_map"], dtype)
        w_s, b_s = (leaf(p, dtype) for p in case["student_fc"])
        w_t, b_t = (p.to(dtype) for p in case["teacher_fc"])

        def regions(x, w, b):  # ResNet_SDD.forward's lines after layer3
            x_spp, _ = spp(x)
            x_spp = x_spp.permute((2, 0, 1))
            m, n, c = x_spp.shape
            score = F.linear(torch.reshape(x_spp, (m * n, c)), w, b)
            return torch.reshape(score, (m, n, w.shape[0])).permute((1, 2, 0))

        patch_s = regions(fmap, w_s, b_s)
        patch_t = regions(case["teacher_map"].to(dtype), w_t, b_t)
        y = case["labels"]
        logits_s = F.linear(fmap.mean(dim=(2, 3)), w_s, b_s)
        ce = F.cross_entropy(logits_s, y)
        temp = kw.get("temperature", 4.0)
        if kw["base"] == "kd":
            term = self.sdd_kd["sdd_kd_loss"](patch_s, patch_t, temp, y)
            loss = 0.1 * ce + 0.9 * term
        else:
            term = self.sdd_dkd["multi_dkd"](patch_s, patch_t, y, kw.get("alpha", 1.0),
                                             kw.get("beta", 8.0), temp)  # fmt: skip
            loss = 1.0 * ce + min((epoch + 1) / 20.0, 1.0) * term  # mdistiller: epochs from 1
        loss.backward()
        terms = {"loss": loss, "loss_ce": ce, "loss_sdd": term}
        return terms, {"student_map": fmap.grad, "fc_weight": w_s.grad, "fc_bias": b_s.grad}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clones", type=Path, required=True)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "tests/unit/data/reference_values_logits3.json"
    )
    args = parser.parse_args()
    tests = load_tests("test_methods3_logits.py", "methods3_cases")
    refs = References(Sources(args.clones), tests)
    out = {"repositories": dict(REPOS.values()), "cases": {}}
    for name, (method, kw, epoch, build) in tests.CASES.items():
        case = build()
        fn = getattr(refs, method + "_")
        terms64, grads64 = fn(case, kw, epoch, torch.float64)
        terms32, grads32 = fn(build(), kw, epoch, torch.float32)
        buffers64, buffers32 = grads64.pop("buffers", {}), grads32.pop("buffers", {})
        terms = {k: float(v) for k, v in terms64.items()}
        rel = rel_errs(terms32, terms)
        repo, commit = REPOS[method]
        out["cases"][name] = {
            "source": {"repository": repo, "commit": commit},
            "method": method, "kwargs": kw, "epoch": epoch,
            "fingerprint": tests.fingerprint(case),
            "terms": terms, "terms_f32_rel_err": rel,
            "grads": {k: grad_record(grads64[k], grads32[k]) for k in grads64},
        }  # fmt: skip
        if buffers64:
            out["cases"][name]["buffers"] = {
                k: grad_record(buffers64[k], buffers32[k]) for k in buffers64
            }
        print(f"{name:16s} f32_err terms {max(rel.values()):.1e} grads "
              f"{max(r['f32_err'] for r in out['cases'][name]['grads'].values()):.1e}")  # fmt: skip
    args.out.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
