"""Compute the authors'-code reference values that tests/unit/test_reference_losses.py pins.

Run once, offline, against local clones of the authors' repositories; the test needs neither
the clones nor this script. The loss code is read from each clone at the commit named below
(``git --git-dir <clone>/.git show <commit>:<path>``, or a bare git directory, so whatever the
clone has checked out does not matter), executed here with two documented source patches (relative imports replaced by the
definitions they import; ``.cuda()`` dropped so it runs on a CPU), and run in float64 on the
inputs the test module builds (it is imported for them: one definition of every input), with
the same parameter values as kdlight's side for every learnable part.

    repository                                     commit                                    files read
    megvii-research/mdistiller                     a08d46f10d6102bd6e3f258ca5ac880b020ea259  mdistiller/distillers/{KD,DKD,ReviewKD}.py
    HobbitLong/RepDistiller                        b84f547c5db6a35318d4671d7d5c4de74c822403  distiller_zoo/{AT,NST,SP,PKT,RKD,CC,VID,FitNet}.py,
                                                                                             crd/{criterion,memory}.py, models/util.py (ConvReg, LinearEmbed)
    hunto/image_classification_sota               6f7a70a1dd57fd88413d83909d3d53243068f701  lib/models/losses/dist_kd.py
    zhengli97/CTKD                                 7d5252241259ae70d38a832371fed9697d15fc14  models/temp_global.py, distiller_zoo/KD.py,
                                                                                             train_student.py (CosineDecay)
    sunshangquan/logit-standardization-KD          f6e5aa5172bad618e801163c3385322eea673754  mdistiller/distillers/{KD,DKD}.py

How to run (from the kdlight repository root, in its virtualenv)::

    mkdir -p /tmp/refs && cd /tmp/refs
    git clone https://github.com/megvii-research/mdistiller
    git clone https://github.com/HobbitLong/RepDistiller
    git clone https://github.com/hunto/image_classification_sota
    git clone https://github.com/zhengli97/CTKD
    git clone https://github.com/sunshangquan/logit-standardization-KD
    cd -
    python benchmarks/reference/make_reference_values.py \
        --mdistiller /tmp/refs/mdistiller --repdistiller /tmp/refs/RepDistiller \
        --dist /tmp/refs/image_classification_sota --ctkd /tmp/refs/CTKD \
        --logit-standardization /tmp/refs/logit-standardization-KD

It writes tests/unit/data/reference_values.json (``--out`` to write elsewhere) and prints, per
case, the largest relative difference between the reference run in float32 and in float64
and of every recorded gradient (``f32_err``): the rounding of the authors' own code in
float32, which sets the test's tolerance where it exceeds the default. Rerun it only when a
case is added or an input builder changes; never to make a failing test pass.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from authors_code import (  # noqa: E402
    NO_CUDA,
    PRELUDE,
    ROOT,
    git_show,
    grad_record,
    leaf,
    load_source,
    load_tests,
    rel_errs,
)

REPOS = {
    "megvii-research/mdistiller": "a08d46f10d6102bd6e3f258ca5ac880b020ea259",
    "HobbitLong/RepDistiller": "b84f547c5db6a35318d4671d7d5c4de74c822403",
    "hunto/image_classification_sota": "6f7a70a1dd57fd88413d83909d3d53243068f701",
    "zhengli97/CTKD": "7d5252241259ae70d38a832371fed9697d15fc14",
    "sunshangquan/logit-standardization-KD": "f6e5aa5172bad618e801163c3385322eea673754",
}
ARG = {
    "megvii-research/mdistiller": "mdistiller",
    "HobbitLong/RepDistiller": "repdistiller",
    "hunto/image_classification_sota": "dist",
    "zhengli97/CTKD": "ctkd",
    "sunshangquan/logit-standardization-KD": "logit_standardization",
}


DROP = ("from .", "from __future__", "from models", "from mdistiller")


class Sources:
    """The authors' files, read from the clones at the pinned commits and executed."""

    def __init__(self, clones: dict[str, Path]):
        self.clones = clones

    def text(self, repo: str, path: str) -> str:
        return git_show(self.clones[repo], REPOS[repo], path)

    def load(self, repo: str, path: str, **inject) -> dict:
        """Execute one file; lines importing from the package itself are dropped (``inject``
        supplies what they imported), ``.cuda()`` calls are removed (CPU run)."""
        ns = {**PRELUDE, "__name__": f"ref.{path}", **inject}
        return load_source(self.clones[repo], REPOS[repo], path, ns, filename=f"{repo}/{path}",
                           drop=DROP, replace=[NO_CUDA])  # fmt: skip


class Distiller(nn.Module):
    """Stand-in for mdistiller's ``_base.Distiller`` (only subclassed, never run here)."""


# ---- the references ----------------------------------------------------------------------
class References:
    def __init__(self, src: Sources, tests):
        self.t = tests
        md = "megvii-research/mdistiller"
        rd = "HobbitLong/RepDistiller"
        ls = "sunshangquan/logit-standardization-KD"
        self.md_kd = src.load(md, "mdistiller/distillers/KD.py", Distiller=Distiller)
        self.md_dkd = src.load(md, "mdistiller/distillers/DKD.py", Distiller=Distiller)
        self.md_review = src.load(md, "mdistiller/distillers/ReviewKD.py", Distiller=Distiller)
        self.ls_kd = src.load(ls, "mdistiller/distillers/KD.py", Distiller=Distiller)
        self.ls_dkd = src.load(ls, "mdistiller/distillers/DKD.py", Distiller=Distiller)
        self.dist_ns = src.load("hunto/image_classification_sota", "lib/models/losses/dist_kd.py")
        self.ctkd_t = src.load("zhengli97/CTKD", "models/temp_global.py")
        self.ctkd_kd = src.load("zhengli97/CTKD", "distiller_zoo/KD.py")
        train = src.text("zhengli97/CTKD", "train_student.py")
        start = train.index("class CosineDecay")
        end = train.index("class LinearDecay")
        self.ctkd_cos = {"math": math}
        exec(train[start:end], self.ctkd_cos)  # noqa: S102
        util = src.load(rd, "models/util.py")
        self.rd = {
            name: src.load(rd, f"distiller_zoo/{name}.py")
            for name in ("AT", "NST", "SP", "PKT", "RKD", "CC", "VID", "FitNet")
        }
        self.rd_util = util
        memory = src.load(rd, "crd/memory.py")
        memory["AliasMethod"].cuda = lambda self: None  # CPU: the sampler is never used here
        self.rd_crd = src.load(rd, "crd/criterion.py", ContrastMemory=memory["ContrastMemory"])

    # logit methods: each returns (terms named as kdlight's, {grad name: tensor})
    def kd(self, case, kw, epoch, dtype):
        s = leaf(case["student_logits"], dtype)
        t = case["teacher_logits"].to(dtype)
        ls = kw.get("logit_standardization", False)
        ref = self.ls_kd if ls else self.md_kd
        temp = kw["temperature"]
        loss_kd = ref["kd_loss"](s, t, temp, ls) if ls else ref["kd_loss"](s, t, temp)
        ce_w = kw.get("ce_weight", 1 - kw.get("alpha", 0.0))  # alpha: kd_weight, 1 - alpha: CE's
        kd_w = kw.get("kd_weight", kw.get("alpha"))
        if case["labels"] is None:  # mdistiller's KD_WEIGHT * kd_loss, without its CE term
            terms = {"loss": kd_w * loss_kd, "loss_kd": loss_kd}
        else:
            loss_ce = F.cross_entropy(s, case["labels"])
            terms = {"loss": ce_w * loss_ce + kd_w * loss_kd, "loss_kd": loss_kd, "loss_ce": loss_ce}  # fmt: skip
        terms["loss"].backward()
        return terms, {"student_logits": s.grad}

    def dkd(self, case, kw, epoch, dtype):
        s = leaf(case["student_logits"], dtype)
        t = case["teacher_logits"].to(dtype)
        y = case["labels"]
        ls = kw.get("logit_standardization", False)
        extra = (True,) if ls else ()
        fn = (self.ls_dkd if ls else self.md_dkd)["dkd_loss"]
        dkd = fn(s, t, y, kw["alpha"], kw["beta"], kw["temperature"], *extra)
        tckd = fn(s, t, y, 1.0, 0.0, kw["temperature"], *extra)  # the two terms, unweighted
        nckd = fn(s, t, y, 0.0, 1.0, kw["temperature"], *extra)
        loss_ce = F.cross_entropy(s, y)
        # mdistiller's trainer counts epochs from 1: kdlight's epoch e is its e + 1
        loss = loss_ce + min((epoch + 1) / kw["warmup"], 1.0) * dkd
        loss.backward()
        terms = {"loss": loss, "loss_ce": loss_ce, "loss_tckd": tckd, "loss_nckd": nckd}
        return terms, {"student_logits": s.grad}

    def dist(self, case, kw, epoch, dtype):
        s = leaf(case["student_logits"], dtype)
        t = case["teacher_logits"].to(dtype)
        # dist_cifar.yaml: kd: dist_t4 = DIST(beta=1, gamma=1, tau=4), kd_loss_weight 2; here
        # the unit criterion times beta (== gamma in every case)
        assert kw["beta"] == kw["gamma"]
        crit = self.dist_ns["DIST"](beta=1.0, gamma=1.0, tau=kw["temperature"])
        loss_kd = kw["beta"] * crit(s, t)
        terms = {"loss": loss_kd}
        if case["labels"] is not None:
            terms["loss_ce"] = F.cross_entropy(s, case["labels"])
            terms["loss"] = kw["ce_weight"] * terms["loss_ce"] + loss_kd
        terms["loss"].backward()
        return terms, {"student_logits": s.grad}

    def ctkd(self, case, kw, epoch, dtype):
        s = leaf(case["student_logits"], dtype)
        t = case["teacher_logits"].to(dtype)
        mlp = self.ctkd_t["Global_T"]().to(dtype)
        with torch.no_grad():
            mlp.global_T.fill_(kw.get("theta_init", 1.0))
        # run_cifar_distill.sh: --cosine_decay 1 --decay_max 0 --decay_min -1 --decay_loops 10
        # --t_start 1 --t_end 20 -r 0.1 -a 0.9; epochs from 1 (kdlight's e is its e + 1)
        decay = self.ctkd_cos["CosineDecay"](max_value=0, min_value=-1, num_loops=10)
        cos_value = decay.get_value(epoch + 1)
        temp = mlp(t, s, cos_value)
        temp = 1 + 20 * torch.sigmoid(temp)
        loss_div = self.ctkd_kd["DistillKL"]()(s, t, temp)
        terms = {"loss_kd": loss_div, "temperature": temp.reshape(())}
        if case["labels"] is None:
            terms["loss"] = loss_div
        else:
            terms["loss_ce"] = F.cross_entropy(s, case["labels"])
            terms["loss"] = 0.1 * terms["loss_ce"] + 0.9 * loss_div
        terms["loss"].backward()
        return terms, {"student_logits": s.grad, "theta": mlp.global_T.grad}

    # feature methods: RepDistiller's loop, loss = gamma * CE + beta * loss_kd (alpha 0)
    def _feature(self, case, kw, dtype, term, loss_fn, modules=()):
        sf = [leaf(x, dtype) for x in case["student_feats"]]
        tf = [x.to(dtype) for x in case["teacher_feats"]]
        s_logits = leaf(case["student_logits"], dtype)
        value = loss_fn(sf, tf)
        loss_ce = F.cross_entropy(s_logits, case["labels"])
        loss = loss_ce + kw["beta"] * value
        loss.backward()
        grads = {f"student_feats.{i}": x.grad for i, x in enumerate(sf)}
        grads["student_logits"] = s_logits.grad
        for prefix, module in modules:
            for name, p in module.named_parameters():
                grads[f"param.{prefix}{name}"] = p.grad
        return {"loss": loss, term: value, "loss_ce": loss_ce}, grads

    def at(self, case, kw, epoch, dtype):
        crit = self.rd["AT"]["Attention"]()
        return self._feature(case, kw, dtype, "loss_at", lambda s, t: sum(crit(s, t)))

    def nst(self, case, kw, epoch, dtype):
        crit = self.rd["NST"]["NSTLoss"]()
        return self._feature(case, kw, dtype, "loss_nst", lambda s, t: sum(crit(s, t)))

    def sp(self, case, kw, epoch, dtype):
        crit = self.rd["SP"]["Similarity"]()
        return self._feature(case, kw, dtype, "loss_sp", lambda s, t: sum(crit(s, t)).reshape(()))

    def pkt(self, case, kw, epoch, dtype):
        crit = self.rd["PKT"]["PKT"]()
        return self._feature(case, kw, dtype, "loss_pkt", lambda s, t: crit(s[0], t[0]))

    def rkd(self, case, kw, epoch, dtype):
        crit = self.rd["RKD"]["RKDLoss"](w_d=25, w_a=50)
        return self._feature(case, kw, dtype, "loss_rkd", lambda s, t: crit(s[0], t[0]))

    def cc(self, case, kw, epoch, dtype):
        crit = self.rd["CC"]["Correlation"]()
        emb = self.rd_util["LinearEmbed"]
        d = kw["embed_dim"]
        embed_s = emb(case["student_feats"][0].shape[1], d).to(dtype)
        embed_t = emb(case["teacher_feats"][0].shape[1], d).to(dtype)
        # kdlight's parameter order: embed_s.0.{weight,bias}, embed_t.0.{weight,bias}
        self.t.fill_([*embed_s.parameters(), *embed_t.parameters()], self.t.PARAM_SEED["cc"])
        return self._feature(
            case, kw, dtype, "loss_cc", lambda s, t: crit(embed_s(s[0]), embed_t(t[0])),
            [("embed_s.0.", embed_s.linear), ("embed_t.0.", embed_t.linear)],
        )  # fmt: skip

    def vid(self, case, kw, epoch, dtype):
        vid = self.rd["VID"]["VIDLoss"]
        heads = nn.ModuleList(
            vid(s.shape[1], t.shape[1], t.shape[1])  # train_student.py: VIDLoss(s, t, t)
            for s, t in zip(case["student_feats"], case["teacher_feats"], strict=True)
        ).to(dtype)
        # kdlight's order per head: mean.0/2/4.weight, log_scale; RepDistiller's: regressor.0/2/4, log_scale
        self.t.fill_(list(heads.parameters()), self.t.PARAM_SEED["vid"])
        mods = []
        for i, h in enumerate(heads):
            mods += [(f"heads.{i}.mean.", h.regressor)]
        out = self._feature(
            case, kw, dtype, "loss_vid",
            lambda s, t: sum(h(a, b) for h, a, b in zip(heads, s, t, strict=True)), mods,
        )  # fmt: skip
        for i, h in enumerate(heads):
            out[1][f"param.heads.{i}.log_scale"] = h.log_scale.grad
        return out

    def crd(self, case, kw, epoch, dtype):
        class Opt:
            s_dim = case["student_feats"][0].shape[1]
            t_dim = case["teacher_feats"][0].shape[1]
            feat_dim = kw["feat_dim"]
            nce_k = kw["nce_k"]
            nce_t = 0.07
            nce_m = 0.5
            n_data = case["num_data"]

        crit = self.rd_crd["CRDLoss"](Opt).to(dtype)
        self.t.fill_([*crit.embed_s.parameters(), *crit.embed_t.parameters()], 67)
        mem = crit.contrast
        mem.memory_v1.copy_(case["memory_s"].to(dtype))  # v1: the student's bank
        mem.memory_v2.copy_(case["memory_t"].to(dtype))
        terms, grads = {}, {}
        for step in range(2):
            s = leaf(case["student_feats"][step], dtype)
            t = case["teacher_feats"][step].to(dtype)
            loss_crd = crit(s, t, case["idx"][step], case["rows"][step]).reshape(())
            loss = kw["beta"] * loss_crd
            loss.backward()
            terms[f"step{step}.loss"] = loss
            terms[f"step{step}.loss_crd"] = loss_crd
            grads[f"step{step}.student_feats.0"] = s.grad
        for side, embed in (("embed_s", crit.embed_s), ("embed_t", crit.embed_t)):
            for name, p in embed.linear.named_parameters():
                grads[f"param.{side}.{name}"] = p.grad
        grads["state.z_s"] = mem.params[2].reshape(1)  # Z_v1: the student anchors' constant
        grads["state.z_t"] = mem.params[3].reshape(1)
        grads["state.memory_s"] = mem.memory_v1.reshape(-1)
        grads["state.memory_t"] = mem.memory_v2.reshape(-1)
        return terms, grads

    def reviewkd(self, case, kw, epoch, dtype):
        abf, hcl = self.md_review["ABF"], self.md_review["hcl_loss"]
        sf = [leaf(x, dtype) for x in case["student_feats"]]
        tf = [x.to(dtype) for x in case["teacher_feats"]]
        s_logits = leaf(case["student_logits"], dtype)
        levels = [x if x.dim() == 4 else x[:, :, None, None] for x in sf]
        teacher = [x if x.dim() == 4 else x[:, :, None, None] for x in tf]
        in_ch = [x.shape[1] for x in levels]
        out_ch = [x.shape[1] for x in teacher]
        mid = min(512, in_ch[-1])
        abfs = nn.ModuleList(
            abf(c, mid, out_ch[i], i < len(in_ch) - 1) for i, c in enumerate(in_ch)
        ).to(dtype)  # by level, shallow to deep, as kdlight's abfs
        self.t.fill_(list(abfs.parameters()), self.t.PARAM_SEED[case["name"]])
        # ReviewKD.forward_train: deepest level first; shapes = the student's sizes, out_shapes
        # the teacher's (cfg.REVIEWKD.SHAPES / OUT_SHAPES)
        x = levels[::-1]
        rev = list(abfs)[::-1]
        shapes = [v.shape[-1] for v in x]
        out_shapes = [v.shape[-1] for v in teacher[::-1]]
        results = []
        out, res = rev[0](x[0], out_shape=out_shapes[0])
        results.append(out)
        for feat, a, shape, out_shape in zip(x[1:], rev[1:], shapes[1:], out_shapes[1:], strict=True):  # fmt: skip
            out, res = a(feat, res, shape, out_shape)
            results.insert(0, out)
        review = hcl(results, teacher)
        loss_ce = F.cross_entropy(s_logits, case["labels"])
        loss = loss_ce + kw["beta"] * min((epoch + 1) / kw["warmup"], 1.0) * review
        loss.backward()
        grads = {f"student_feats.{i}": v.grad for i, v in enumerate(sf)}
        grads["student_logits"] = s_logits.grad
        for name, p in abfs.named_parameters():
            grads[f"param.abfs.{name}"] = p.grad
        return {"loss": loss, "loss_review": review, "loss_ce": loss_ce}, grads

    def fitnets(self, case, kw, epoch, dtype, name):
        s = leaf(case["student_feats"][0], dtype)
        t = case["teacher_feats"][0].to(dtype)
        hint = self.rd["FitNet"]["HintLoss"]()
        if name == "fitnets_hint_mse":
            regressed = torch.cat([s, s[:, :2] * 0.5], dim=1)
            loss = hint(regressed, t)
            loss.backward()
            return {"loss_hint": loss}, {"student_feats.0": s.grad}
        reg = self.rd_util["ConvReg"](s.shape, t.shape).to(dtype)  # conv1x1 + BN + ReLU here
        self.t.fill_(list(reg.parameters()), case["params_seed"])
        loss_hint = hint(reg(s), t)
        if name == "fitnets_hint_conv_bn_relu":
            loss_hint.backward()
            return {"loss": loss_hint, "loss_hint": loss_hint}, {"student_feats.0": s.grad}
        # one stage (train_student.py --distill hint -a 0 -b 100): CE + 100 * hint
        s_logits = leaf(case["student_logits"], dtype)
        loss_ce = F.cross_entropy(s_logits, case["labels"])
        loss = loss_ce + kw["beta"] * loss_hint
        loss.backward()
        terms = {"loss": loss, "loss_hint": loss_hint, "loss_ce": loss_ce}
        return terms, {"student_feats.0": s.grad, "student_logits": s_logits.grad}


SOURCE = {
    "kd": "megvii-research/mdistiller",
    "dkd": "megvii-research/mdistiller",
    "reviewkd": "megvii-research/mdistiller",
    "dist": "hunto/image_classification_sota",
    "ctkd": "zhengli97/CTKD",
}


def source_of(name: str, method: str, kw: dict) -> str:
    if kw.get("logit_standardization") or name == "kd_ls_weights":
        return "sunshangquan/logit-standardization-KD"
    return SOURCE.get(method, "HobbitLong/RepDistiller")


def run_case(refs: References, name: str, dtype) -> tuple[dict, dict]:
    method, kw, epoch, builder = refs.t.CASES[name]
    case = builder()
    case["name"] = name
    if method == "fitnets":
        terms, grads = refs.fitnets(case, {**kw, "beta": kw.get("beta", 100.0)}, epoch, dtype, name)
    else:
        terms, grads = getattr(refs, method)(case, kw, epoch, dtype)
    return {k: float(v.detach()) for k, v in terms.items()}, {
        k: v for k, v in grads.items() if v is not None
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for repo, arg in ARG.items():
        parser.add_argument(f"--{arg.replace('_', '-')}", required=True, type=Path, help=f"a clone of {repo}")  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "tests/unit/data/reference_values.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    src = Sources({repo: getattr(args, arg) for repo, arg in ARG.items()})
    tests = load_tests("test_reference_losses.py", "reference_cases")
    refs = References(src, tests)
    cases = {}
    for name, (method, kw, epoch, builder) in tests.CASES.items():
        terms64, grads64 = run_case(refs, name, torch.float64)
        terms32, grads32 = run_case(refs, name, torch.float32)
        errs = rel_errs(terms32, terms64)
        err = max(errs.values())
        repo = source_of(name, method, kw)
        cases[name] = {
            "method": method,
            "source": {"repository": repo, "commit": REPOS[repo]},
            "kdlight_kwargs": kw,
            "kdlight_epoch": epoch,
            "fingerprint": tests.fingerprint(builder()),
            "ref_float32_rel_err": err,
            "terms": terms64,
            "terms_f32_rel_err": errs,
            "grads": {k: grad_record(g, grads32[k]) for k, g in grads64.items()},
        }
        print(f"{name:28s} {repo:40s} float32 rel err {err:.1e}  loss {terms64.get('loss', terms64.get('loss_hint', terms64.get('step0.loss')))!r}")  # fmt: skip
    out = {
        "about": "Authors'-code reference values for tests/unit/test_reference_losses.py, "
        "written by benchmarks/reference/make_reference_values.py (float64).",
        "torch": torch.__version__,
        "repositories": REPOS,
        "cases": cases,
    }
    args.out.write_text(json.dumps(out, indent=1, sort_keys=False) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
