"""SimKD (Chen, Mei, Wang, Feng & Chen, CVPR 2022, "Knowledge Distillation with the Reused
Teacher Classifier"), as in the authors' ``models/util.py`` (``SimKD``), ``helper/loops.py`` and
``train_student.py`` (DefangChen/SimKD@2b389c31ed7779aea31e7aaf0bb0f2d8b6ac2f01).

A projector maps the student's final feature map f_s (``feat_s[-2]``: the last stage's output,
before pooling) to the teacher's f_t; the spatially larger of the two is average-pooled to the
other's size first. The projector is the authors' bottleneck
conv1x1(C_s, C_t/factor)-BN-ReLU-conv3x3(C_t/factor, C_t/factor)-BN-ReLU-conv1x1(C_t/factor, C_t)-BN-ReLU
(flat (N, D) features: the same with Linear layers and BatchNorm1d, kdlight's extension).

    L = beta * MSE(P(f_s), f_t) + ce_weight * CE(g_t(pool(P(f_s))), y)

with the teacher's classifier g_t reused, frozen (the authors' recipe: ``-c 0 -d 0 -b 1``, so
ce_weight 0, beta 1). The student's predictions are g_t(pool(P(f_s))): validation, test,
``kdlight eval`` and ``kdlight export`` run :class:`ReusedClassifierNet` (the student up to its
final feature map, the projector, the teacher's classifier); the student's own classifier is
never used. The projector and a frozen copy of the teacher's classifier are the method's own
parameters, saved in the student's checkpoint (``method.*``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdlight.errors import ConfigError
from kdlight.methods.base import RAW, Context, Form, Method, Plan, check_range
from kdlight.methods.taps import find_module, split_tap, tapped_forward


def projector(s_n: int, t_n: int, factor: int = 2, flat: bool = False) -> nn.Sequential:
    """The authors' bottleneck ``transfer`` (indices 0-8 as theirs); Linear/BatchNorm1d when ``flat``."""
    mid = t_n // factor
    if flat:
        a, b, c = nn.Linear(s_n, mid, bias=False), nn.Linear(mid, mid, bias=False), None
        c = nn.Linear(mid, t_n, bias=False)
        norm = nn.BatchNorm1d
    else:
        a = nn.Conv2d(s_n, mid, 1, bias=False)
        b = nn.Conv2d(mid, mid, 3, padding=1, bias=False)
        c = nn.Conv2d(mid, t_n, 1, bias=False)
        norm = nn.BatchNorm2d
    relu = nn.ReLU
    return nn.Sequential(a, norm(mid), relu(), b, norm(mid), relu(), c, norm(t_n), relu())


def last_linear(net: nn.Module, role: str = "teacher") -> str:
    """The name of ``net``'s last ``nn.Linear`` (its classifier)."""
    names = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ConfigError(
            f"distill=simkd found no nn.Linear classifier in the {role} {type(net).__name__}; "
            "name it in distill.classifier."
        )
    return names[-1]


class ReusedClassifierNet(nn.Module):
    """The deployed SimKD student: student features -> projector -> pooling -> teacher classifier."""

    def __init__(self, student: nn.Module, method: SimKD) -> None:
        super().__init__()
        self.student = student
        self.head = method
        self.layer = method.student_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, feats = tapped_forward(self.student, x, [self.layer], True, "student layer")
        return self.head.predict(self.head.project(feats[self.layer]))


class SimKD(Method):
    """SimKD; see the module docstring.

    Args:
        beta: weight of the feature MSE, >= 0.
        ce_weight: weight of CE on the reused classifier's predictions, >= 0 (authors: 0).
        factor: the projector's bottleneck factor, an integer >= 1 (authors' ``-f``, 2).
        student_layer / teacher_layer: the final feature maps (``named_modules()`` names, ``:in``
            for a module's input), or ``auto``: each network's last declared stage.
        classifier: the teacher's classifier module reused, or ``auto``: its last ``nn.Linear``.

    Returns ``{"loss", "loss_feat", "loss_ce"}`` (unweighted terms).
    """

    def __init__(
        self,
        beta: float = 1.0,
        ce_weight: float = 0.0,
        factor: int = 2,
        student_layer: str = "auto",
        teacher_layer: str = "auto",
        classifier: str = "auto",
    ) -> None:
        super().__init__()
        self.beta = check_range("beta", beta, 0.0)
        self.ce_weight = check_range("ce_weight", ce_weight, 0.0)
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ConfigError(f"distill.factor={factor!r} is invalid; it must be an integer >= 1.")
        self.factor = factor
        for name, value in (
            ("student_layer", student_layer),
            ("teacher_layer", teacher_layer),
            ("classifier", classifier),
        ):
            if not isinstance(value, str) or not value:
                raise ConfigError(f"distill.{name}={value!r} is invalid; give auto or a name.")
        self.student_layer, self.teacher_layer, self.classifier_name = (
            student_layer,
            teacher_layer,
            classifier,
        )
        self.needs_labels = self.ce_weight > 0
        self.projector: nn.Sequential | None = None
        self.classifier: nn.Linear | None = None
        self.register_buffer("target_size", torch.zeros(2, dtype=torch.long))

    # ---- layers ---------------------------------------------------------------------------
    def resolve_layers(self, student: nn.Module, teacher: nn.Module | None) -> None:
        from kdlight.methods.features import stage_layers

        if self.student_layer == "auto":
            self.student_layer = stage_layers(student, "student")[-1]
        if teacher is None:  # restore(): the classifier comes from the checkpoint
            return
        if self.teacher_layer == "auto":
            self.teacher_layer = stage_layers(teacher, "teacher")[-1]
        if self.classifier_name == "auto":
            self.classifier_name = last_linear(teacher)
        module = find_module(teacher, self.classifier_name, "teacher classifier")
        if not isinstance(module, nn.Linear):
            raise ConfigError(
                f"distill.classifier={self.classifier_name!r} is a {type(module).__name__}, not "
                "the teacher's nn.Linear classifier."
            )
        self.classifier = copy.deepcopy(module).float().requires_grad_(False)
        self.student_layers = (self.student_layer,)
        self.teacher_layers = (self.teacher_layer,)

    def build(self, student_feats, teacher_feats, num_classes: int) -> None:
        fs, ft = student_feats[self.student_layer], teacher_feats[self.teacher_layer]
        if fs.dim() != ft.dim() or fs.dim() not in (2, 4):
            raise ConfigError(
                f"distill=simkd needs both final features as maps (N, C, H, W) or both flat (N, D); "
                f"the student's {self.student_layer} is {tuple(fs.shape[1:])}, the teacher's "
                f"{self.teacher_layer} {tuple(ft.shape[1:])}."
            )
        t_n = int(ft.shape[1])
        if self.classifier.in_features != t_n:
            raise ConfigError(
                f"the teacher's classifier {self.classifier_name} reads {self.classifier.in_features} "
                f"features but its {self.teacher_layer} has {t_n} channels; set "
                f"distill.teacher_layer to the map its classifier pools (or the classifier's input, "
                f"{split_tap(self.classifier_name)[0]}:in)."
            )
        if t_n // self.factor < 1:
            raise ConfigError(f"distill.factor={self.factor} leaves no channel of {t_n}.")
        self.projector = projector(int(fs.shape[1]), t_n, self.factor, flat=fs.dim() == 2)
        if fs.dim() == 4:
            self.target_size.copy_(torch.tensor(ft.shape[2:4]))

    def teacher_forms(self) -> dict[str, Form]:
        return {self.teacher_layer: RAW}

    def restore(self, state: dict[str, torch.Tensor], student: nn.Module) -> None:
        """Rebuild the projector and the reused classifier from their checkpointed shapes."""
        self.resolve_layers(student, None)
        first, last = state["projector.0.weight"], state["projector.6.weight"]
        mid, s_n, t_n = first.shape[0], first.shape[1], last.shape[0]
        self.factor = max(t_n // mid, 1)
        self.projector = projector(s_n, t_n, self.factor, flat=first.dim() == 2)
        c, d = state["classifier.weight"].shape
        self.classifier = nn.Linear(d, c).requires_grad_(False)
        self.load_state_dict(state)

    # ---- the student head -----------------------------------------------------------------
    def project(self, fs: torch.Tensor) -> torch.Tensor:
        """P(f_s), the student's map average-pooled first when larger than the teacher's."""
        th, tw = (int(v) for v in self.target_size.tolist())
        if fs.dim() == 4 and fs.shape[2] > th > 0:
            fs = F.adaptive_avg_pool2d(fs, (th, tw))
        return self.projector(fs)

    def predict(self, projected: torch.Tensor) -> torch.Tensor:
        """The reused classifier on the pooled projected feature."""
        pooled = projected.flatten(2).mean(dim=2) if projected.dim() > 2 else projected
        return self.classifier(pooled)

    def deployed(self, student: nn.Module) -> nn.Module:
        return ReusedClassifierNet(student, self)

    # ---- training -------------------------------------------------------------------------
    def plan(self, epoch: int) -> Plan:
        return Plan((self.student_layer,), (self.teacher_layer,), True, False)

    def forward(self, ctx: Context) -> dict[str, torch.Tensor]:
        fs = ctx.student_feats[self.student_layer].float()
        ft = ctx.teacher_feats[self.teacher_layer].float()
        source = self.project(fs)
        if ft.dim() == 4 and ft.shape[2] > source.shape[2]:
            ft = F.adaptive_avg_pool2d(ft, (source.shape[2], source.shape[2]))
        loss_feat = F.mse_loss(source, ft)
        logits = self.predict(source)
        if ctx.labels is None:
            loss_ce = torch.zeros((), device=fs.device)
        else:
            loss_ce = F.cross_entropy(logits, ctx.labels)
        loss = self.beta * loss_feat + self.ce_weight * loss_ce
        return {"loss": loss, "loss_feat": loss_feat, "loss_ce": loss_ce}

    def hparams(self) -> dict[str, Any]:
        return {"student_layer": self.student_layer, "teacher_layer": self.teacher_layer}

    def extra_repr(self) -> str:
        return (
            f"beta={self.beta}, ce_weight={self.ce_weight}, factor={self.factor}, "
            f"student_layer={self.student_layer!r}, teacher_layer={self.teacher_layer!r}, "
            f"classifier={self.classifier_name!r}"
        )
