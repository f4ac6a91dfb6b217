"""Compute the authors'-code values that tests/unit/test_methods3_vit.py pins (DeiT, ViTKD, OFA).

Run once, offline, against local clones (or bare mirrors) of the authors' repositories; the test
needs neither. Each file is read at the pinned commit (``git --git-dir <clone> show
<commit>:<path>``), its package-relative imports and registry decorators dropped (what they
imported is injected), and executed in float64 on the inputs the test module builds, with the
parameter values of kdlight's built modules loaded by state-dict name (the branch and block
structures are the authors', so the names agree) and, for ViTKD, the same random mask (the
same ``torch.manual_seed`` before the one ``torch.rand`` each side draws).

    repository                  commit                                    files read
    facebookresearch/deit       7e160fe43f0252d17191b71cbb5826254114ea5b  losses.py
    yzd-v/cls_KD                1e5d48f36957ee460d39d7ebc592c6cc7f8f3d66  mmcls/models/dis_losses/vitkd.py
    Hao840/OFAKD                f7bb896cac9879040800bde08a8cc2057a904c52  distillers/{ofa,_base,utils}.py

    python benchmarks/reference/make_reference_values_vit3.py \
        --deit /path/deit --cls-kd /path/cls_KD --ofakd /path/OFAKD

DeiT's base criterion is timm's ``LabelSmoothingCrossEntropy(0.1)`` (its ``main.py``); OFA's the
same (its CIFAR configs' ``smoothing: 0.1``). Writes tests/unit/data/reference_values_vit3.json.
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
from timm.loss import LabelSmoothingCrossEntropy
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from authors_code import PRELUDE, ROOT, grad_record, leaf, load_source, load_tests  # noqa: E402

REPOS = {
    "facebookresearch/deit": "7e160fe43f0252d17191b71cbb5826254114ea5b",
    "yzd-v/cls_KD": "1e5d48f36957ee460d39d7ebc592c6cc7f8f3d66",
    "Hao840/OFAKD": "f7bb896cac9879040800bde08a8cc2057a904c52",
}


DROP = ("from .", "from mmcls", "@MODELS.", "@register_distiller")


def load(clone: Path, repo: str, path: str, **inject) -> dict:
    ns = {**PRELUDE, "np": np, "__name__": f"ref.{path}", **inject}
    # drop_continued: a dropped import may continue on the next line
    return load_source(
        clone, REPOS[repo], path, ns, filename=f"{repo}/{path}", drop=DROP, drop_continued=True
    )


class Refs:
    def __init__(self, args):
        self.deit = load(args.deit, "facebookresearch/deit", "losses.py")
        self.vitkd = load(args.cls_kd, "yzd-v/cls_KD", "mmcls/models/dis_losses/vitkd.py")
        ofa = "Hao840/OFAKD"
        utils = load(args.ofakd, ofa, "distillers/utils.py")
        base = load(args.ofakd, ofa, "distillers/_base.py", register_distiller=lambda c: c)
        names = ("GAP1d", "get_module_dict", "init_weights", "is_cnn_model", "PatchMerging",
                 "SepConv", "set_module_dict", "TokenFilter", "TokenFnContext")  # fmt: skip
        inject = {n: utils[n] for n in names}
        self.ofa = load(args.ofakd, ofa, "distillers/ofa.py", BaseDistiller=base["BaseDistiller"], **inject)  # fmt: skip

    def run_deit(self, case, kw, mine):
        cls, dist = leaf(case["cls"]), leaf(case["dist"])
        t = case["teacher_logits"].double()
        crit = LabelSmoothingCrossEntropy(smoothing=0.1)
        make = self.deit["DistillationLoss"]
        teacher = lambda x: t  # noqa: E731 - the stored teacher logits
        full = make(crit, teacher, kw["distillation_type"], kw["alpha"], kw["tau"])
        only = make(crit, teacher, kw["distillation_type"], 1.0, kw["tau"])
        loss = full(None, (cls, dist), case["labels"])
        terms = {"loss": loss, "loss_ce": crit(cls, case["labels"]), "loss_dist": only(None, (cls, dist), case["labels"])}  # fmt: skip
        loss.backward()
        return terms, {"cls": cls.grad, "dist": dist.grad}

    def run_vitkd(self, case, kw, mine):
        d_s, d_t = case["student"][0].shape[-1], case["teacher"][0].shape[-1]
        lam = kw.get("mask_ratio", 0.5)

        def ref(a, b):
            m = self.vitkd["ViTKDLoss"]("loss_vitkd", True, d_s, d_t, a, b, lam).double()
            m.load_state_dict(mine.state_dict())
            return m

        s = [leaf(x) for x in case["student"]]
        low_s = torch.stack([s[0][:, 1:], s[1][:, 1:]], 1)
        t = [x.double() for x in case["teacher"]]
        preds_t = [torch.stack([t[0], t[1]], 1), t[2]]
        z = leaf(case["student_logits"])

        def vit(a, b):
            m = ref(a, b)  # its construction draws random numbers: seed after it
            torch.manual_seed(case["seed"])
            return m([low_s, s[2][:, 1:]], preds_t)

        vitkd = vit(kw["mimic_weight"], kw["generation_weight"])
        ce = F.cross_entropy(z, case["labels"])
        loss = vitkd + ce  # gamma 1, alpha 0 in every case
        terms = {
            "loss": loss,
            "loss_ce": ce,
            "loss_mimic": vit(1.0, 0.0),
            "loss_gen": vit(0.0, lam),
        }
        loss.backward()
        return terms, {"a": s[0].grad, "c": s[2].grad, "student_logits": z.grad}

    def run_ofa(self, case, kw, mine):
        feats = [leaf(f) for f in case["student_feats"]]
        z = leaf(case["student_logits"])
        t = case["teacher_logits"].double()
        cnn = feats[0].dim() == 4
        w_s, w_t = case["widths"]

        class Net(nn.Module):
            num_tokens = 0 if cnn else 1

            def __init__(self, width, out=None):
                super().__init__()
                self.width, self.out = width, out

            def stage_info(self, stage):
                if stage == -1:
                    return -1, self.width
                return stage - 1, tuple(feats[stage - 1].shape[1:])

            def forward(self, image, requires_feat=False):
                return self.out

        eps = kw["eps"] if isinstance(kw["eps"], list) else [kw["eps"]]
        args = types.SimpleNamespace(ofa_eps=eps, ofa_stage=[1, 2, 3, 4], num_classes=10,
                                     ofa_temperature=kw.get("temperature", 1.0), ofa_loss_weight=1.0,
                                     gt_loss_weight=1.0, kd_loss_weight=1.0)  # fmt: skip
        crit = LabelSmoothingCrossEntropy(smoothing=0.1)
        ref = self.ofa["OFA"](Net(w_s, (z, feats)), Net(w_t, t), crit, args).double()
        ref.projector.load_state_dict(mine.projector.state_dict())
        _, losses = ref(None, case["labels"])
        loss = losses["loss_gt"] + losses["loss_kd"] + losses["loss_ofa"]
        loss.backward()
        terms = {"loss": loss, "loss_ce": losses["loss_gt"], "loss_kd": losses["loss_kd"], "loss_ofa": losses["loss_ofa"]}  # fmt: skip
        return terms, {"s0": feats[0].grad, "s3": feats[3].grad, "student_logits": z.grad}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--deit", type=Path, required=True)
    p.add_argument("--cls-kd", type=Path, required=True)
    p.add_argument("--ofakd", type=Path, required=True)
    p.add_argument("--out", type=Path, default=ROOT / "tests/unit/data/reference_values_vit3.json")
    args = p.parse_args()
    tests = load_tests("test_methods3_vit.py", "vit3_cases")
    refs = Refs(args)
    out = {"about": __doc__.split("\n")[0], "torch": torch.__version__, "repositories": REPOS, "cases": {}}  # fmt: skip
    source = {"deit": "facebookresearch/deit", "vitkd": "yzd-v/cls_KD", "ofa": "Hao840/OFAKD"}
    for name, (method, kw, make) in tests.CASES.items():
        case = make()
        mine = tests.build(method, kw, case).double()
        full = {**{"mask_ratio": 0.5}, **kw} if method == "vitkd" else kw
        terms, grads = getattr(refs, f"run_{method}")(case, full, mine)
        flat = [v for v in case.values() if isinstance(v, torch.Tensor)]
        flat += [t for v in case.values() if isinstance(v, list) for t in v if isinstance(t, torch.Tensor)]  # fmt: skip
        ours, _ = tests.run_kdlight(method, kw, case)  # float32, as trained
        diff = max(abs(ours[k] - float(v)) / max(abs(float(v)), 1e-12) for k, v in terms.items())
        print(
            f"{name}: kdlight (float32) vs reference, largest relative term difference {diff:.2e}"
        )
        out["cases"][name] = {
            "method": method,
            "source": {"repository": source[method], "commit": REPOS[source[method]]},
            "kdlight_kwargs": kw,
            "fingerprint": sum(float(t.double().abs().sum()) for t in flat),
            "terms": {k: float(v) for k, v in terms.items()},
            "grads": {k: grad_record(g) for k, g in grads.items()},
        }
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
