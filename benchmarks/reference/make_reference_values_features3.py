"""Compute the authors'-code values that tests/unit/test_methods3_features.py pins (AB, FT, FSP,
KDSVD, OFD).

Run once, offline, against local clones (or bare mirrors) of the references; the test needs
neither. Each file is read at the pinned commit (``git --git-dir <clone> show <commit>:<path>``,
whatever is checked out) and executed as is, with one documented patch: mdistiller's
``from ._base import Distiller`` is replaced by a bare ``nn.Module`` subclass (OFD's margins
and loss are then called on an object built without a student and a teacher). The inputs are
the test module's (imported: one definition), run in float64 (and float32, to record the
references' own rounding), with the test's parameter values for every learnable part.

    repository                   commit                                    files read
    HobbitLong/RepDistiller      b84f547c5db6a35318d4671d7d5c4de74c822403  distiller_zoo/{AB,FT,FSP,KDSVD}.py,
                                                                           models/util.py (Connector, ConvReg,
                                                                           Paraphraser, Translator)
    megvii-research/mdistiller   a08d46f10d6102bd6e3f258ca5ac880b020ea259  mdistiller/distillers/OFD.py

    python benchmarks/reference/make_reference_values_features3.py \
        --repdistiller /path/to/RepDistiller --mdistiller /path/to/mdistiller

Writes tests/unit/data/reference_values_features3.json (``--out`` elsewhere). Rerun only when a
case is added or an input builder changes; never to make a failing test pass.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from authors_code import ROOT, grad_record, leaf, load_source, load_tests  # noqa: E402

RD, MD = "HobbitLong/RepDistiller", "megvii-research/mdistiller"
REPOS = {
    RD: "b84f547c5db6a35318d4671d7d5c4de74c822403",
    MD: "a08d46f10d6102bd6e3f258ca5ac880b020ea259",
}
SOURCE = {"ab": RD, "ft": RD, "fsp": RD, "kdsvd": RD, "ofd": MD}


class Sources:
    def __init__(self, clones: dict[str, Path]):
        self.clones = clones

    def load(self, repo: str, path: str, *patches: tuple[str, str]) -> dict:
        ns: dict = {"__name__": f"ref_{path.replace('/', '_')}"}
        filename = f"{repo}@{REPOS[repo][:8]}:{path}"
        return load_source(self.clones[repo], REPOS[repo], path, ns, filename=filename,
                           replace=patches, strict=True)  # fmt: skip


class References:
    def __init__(self, src: Sources, t):
        self.t = t
        self.util = src.load(RD, "models/util.py")
        self.rd = {n: src.load(RD, f"distiller_zoo/{n}.py") for n in ("AB", "FT", "FSP", "KDSVD")}
        self.md_ofd = src.load(
            MD,
            "mdistiller/distillers/OFD.py",
            ("from ._base import Distiller", "from torch.nn import Module as Distiller"),
        )

    def fill(self, params, name):
        self.t.fill_(list(params), self.t.PARAM_SEED[name])

    def run(self, name, dtype):
        method, kw, epoch, builder = self.t.CASES[name]
        case = builder()
        sf = [leaf(x, dtype) for x in case["student_feats"]]
        tf = [x.to(dtype) for x in case["teacher_feats"]]
        logits = leaf(case["student_logits"], dtype)
        ce = F.cross_entropy(logits, case["labels"])
        terms, mods = getattr(self, method)(name, kw, epoch, case, sf, tf, ce, dtype)
        terms["loss"].backward()
        grads = {f"student_feats.{i}": x.grad for i, x in enumerate(sf) if x.grad is not None}
        if logits.grad is not None:
            grads["student_logits"] = logits.grad
        for prefix, module in mods:
            for n, p in module.named_parameters():
                if p.grad is not None:
                    grads[f"param.{prefix}{n}"] = p.grad
        return terms, grads

    # RepDistiller's loop: loss = gamma * CE + beta * loss_kd; its init stages (helper/pretrain.py)
    # minimise the method's loss alone
    def ab(self, name, kw, epoch, case, sf, tf, ce, dtype):
        s_shapes = [x.shape for x in sf]
        t_shapes = [x.shape for x in tf]
        conn = self.util["Connector"](s_shapes, t_shapes).to(dtype)
        self.fill(conn.parameters(), name)
        crit = self.rd["AB"]["ABLoss"](len(sf), margin=kw.get("margin", 1.0))
        value = sum(crit(conn(sf), tf))
        mods = [("connectors.", conn.connectors)]
        if epoch < kw["init_epochs"]:
            return {"loss": value, "loss_ab": value}, mods
        loss = ce + kw["beta"] * value  # "can also add loss to this stage"
        return {"loss": loss, "loss_ab": value, "loss_ce": ce}, mods

    def ft(self, name, kw, epoch, case, sf, tf, ce, dtype):
        para = self.util["Paraphraser"](tf[0].shape).to(dtype)
        trans = self.util["Translator"](sf[0].shape, tf[0].shape).to(dtype)
        self.fill([*para.parameters(), *trans.parameters()], name)
        if epoch < kw["init_epochs"]:  # pretrain.py: criterion_init = MSELoss on the reconstruction
            _, rec = para(tf[0])
            loss = nn.MSELoss()(rec, tf[0])
            return {"loss": loss, "loss_rec": loss}, [("paraphraser.", para)]
        value = self.rd["FT"]["FactorTransfer"]()(trans(sf[0]), para(tf[0], is_factor=True))
        loss = ce + kw["beta"] * value
        return {"loss": loss, "loss_ft": value, "loss_ce": ce}, [("translator.", trans)]

    def fsp(self, name, kw, epoch, case, sf, tf, ce, dtype):
        crit = self.rd["FSP"]["FSP"]([x.shape for x in sf], [x.shape for x in tf])
        value = sum(crit(sf, tf))
        return {"loss": value, "loss_fsp": value}, []

    def kdsvd(self, name, kw, epoch, case, sf, tf, ce, dtype):
        value = sum(self.rd["KDSVD"]["KDSVD"](k=kw["k"])(sf, tf))
        loss = ce + kw["beta"] * value
        return {"loss": loss, "loss_svd": value, "loss_ce": ce}, []

    def ofd(self, name, kw, epoch, case, sf, tf, ce, dtype):
        cls = self.md_ofd["OFD"]
        obj = cls.__new__(cls)
        nn.Module.__init__(obj)
        bns = []
        for w, b in case["bn"]:
            bn = nn.BatchNorm2d(w.numel())
            with torch.no_grad():  # kdlight's margin reads the float32 parameters
                bn.weight.copy_(w.float())
                bn.bias.copy_(b.float())
            bns.append(bn)
        obj.init_ofd_modules(
            tea_channels=[x.shape[1] for x in tf],
            stu_channels=[x.shape[1] for x in sf],
            bn_before_relu=bns,
            kernel_size=1,
        )
        obj.connectors = obj.connectors.to(dtype)
        self.fill(obj.connectors.parameters(), name)
        value = obj.ofd_loss(sf, tf)
        loss = ce + kw["beta"] * value
        # mdistiller's connectors.connectors.<i> = Sequential(conv, bn): kdlight's connectors.<i>.conv/.bn
        mods = []
        for i, seq in enumerate(obj.connectors.connectors):
            mods += [(f"connectors.{i}.conv.", seq[0]), (f"connectors.{i}.bn.", seq[1])]
        return {"loss": loss, "loss_ofd": value, "loss_ce": ce}, mods


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repdistiller", type=Path, required=True)
    p.add_argument("--mdistiller", type=Path, required=True)
    p.add_argument("--out", type=Path, default=ROOT / "tests/unit/data/reference_values_features3.json")  # fmt: skip
    args = p.parse_args(argv)
    t = load_tests("test_methods3_features.py", "features3_cases")
    refs = References(Sources({RD: args.repdistiller, MD: args.mdistiller}), t)
    cases = {}
    for name, (method, kw, epoch, builder) in t.CASES.items():
        terms, grads = refs.run(name, torch.float64)
        terms32, grads32 = refs.run(name, torch.float32)
        rel = {
            k: abs(float(terms32[k]) - float(v)) / max(abs(float(v)), 1e-30)
            for k, v in terms.items()
        }
        cases[name] = {
            "method": method,
            "source": {"repository": SOURCE[method], "commit": REPOS[SOURCE[method]]},
            "kdlight_kwargs": kw,
            "kdlight_epoch": epoch,
            "fingerprint": t.fingerprint(builder()),
            "terms": {k: float(v) for k, v in terms.items()},
            "terms_f32_rel_err": rel,
            # a conv bias right before BatchNorm has no effect: its gradient is 0 up to rounding
            "grads": {
                k: grad_record(g, grads32[k], eps=1e-30)
                for k, g in grads.items()
                if float(g.norm()) > 1e-9
            },
        }
        worst = max([*rel.values(), *(r["f32_err"] for r in cases[name]["grads"].values())])
        print(f"{name:20s} terms {sorted(terms)}  grads {len(grads)}  float32 rel err {worst:.2e}")
    out = {
        "about": "Authors'-code reference values for tests/unit/test_methods3_features.py, written "
        "by benchmarks/reference/make_reference_values_features3.py (float64).",
        "torch": torch.__version__,
        "repositories": REPOS,
        "cases": cases,
    }
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
