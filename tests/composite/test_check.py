"""The loss-config check: each case on hand-built composites and views, at build time, and detloss-check's exit
status and printed findings on the shipped configs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from detloss.check import main as check_main
from detloss.composite import (
    Balancer,
    CompositeLoss,
    HandOver,
    LinearWarmup,
    LossConfigWarning,
    Step,
    View,
    check_loss,
    check_views,
)
from detloss.composite.checks import LossConfigError, activation, expects, made_by
from detloss.losses import BCEWithLogitsLoss, BoundaryLoss, CIoULoss, CrossEntropyLoss, DFLoss, DiceLoss, L1Loss

SMALL = ["data.num_train=32", "data.num_val=16", "data.batch_size=8", "data.num_workers=0"]
HANDOVER_AT_THE_END = ["loss.terms.cls.schedule.begin=1.0", "loss.terms.cls.schedule.end=1.0"]


def composite(**terms) -> CompositeLoss:
    """``name=(loss, weight[, view[, schedule]])`` → a composite built without the check."""
    spec = {}
    for name, (loss, weight, *rest) in terms.items():
        spec[name] = {"loss": loss, "weight": weight, "view": rest[0] if rest else "v"}
        if len(rest) > 1:
            spec[name]["schedule"] = rest[1]
    return CompositeLoss(spec, check=False)


def about(findings, level):
    """``{term: message}`` of the findings of ``level``."""
    return {f.term: f.message for f in findings if f.level == level}


class NeedsPositive(Balancer):
    needs_positive_terms = True

    def forward(self, values):
        return sum(values.values()), values

    def factors(self):
        return dict.fromkeys(self.names, 1.0)


class Signed(nn.Module):
    """A term whose values can be negative (declared), e.g. a signed-distance loss."""

    can_be_negative = True

    def forward(self, pred, target, reduction="mean"):
        return (pred - target).mean()


class OnProbabilities(nn.Module):
    """A term of one's own that takes probabilities (declared)."""

    expects = "probabilities"

    def forward(self, probs, target, reduction="mean"):
        return nn.functional.binary_cross_entropy(probs, target)


# ------------------------------------------------------------------------------------------------ weights, schedules


def test_a_term_of_weight_0_warns_when_built_naming_it():
    with pytest.warns(LossConfigWarning, match="term 'l1': weight 0"):
        CompositeLoss(
            {
                "box": {"loss": CIoULoss(), "weight": 1, "view": "box"},
                "l1": {"loss": L1Loss(), "weight": 0, "view": "box"},
            }
        )


def test_every_weight_0_is_an_error_when_built():
    with pytest.raises(LossConfigError, match="every term has weight 0") as caught:
        CompositeLoss({"box": {"loss": CIoULoss(), "weight": 0, "view": "box"}})
    assert isinstance(caught.value, ValueError) and [f.level for f in caught.value.findings] == ["warning", "error"]


def test_a_group_of_weight_0_makes_its_terms_weight_0():
    loss = CompositeLoss(
        {"a": {"weight": 0, "x": {"loss": L1Loss(), "view": "v"}}, "y": {"loss": L1Loss(), "view": "v"}}, check=False
    )
    assert set(about(check_loss(loss), "warning")) == {"a/x"}


def test_a_schedule_that_never_switches_a_term_on_within_the_run():
    loss = composite(
        a=(L1Loss(), 1.0, "v", HandOver(to="b", begin=1.0, end=1.0)),  # b's share reaches 1 only after the last step
        b=(L1Loss(), 1.0),
        c=(L1Loss(), 1.0, "v", Step(milestones=[0], gamma=0.0)),  # 0 from the first step on
        d=(L1Loss(), 1.0, "v", LinearWarmup(duration=50, start=0.0)),  # 0 at step 0 only
        e=(L1Loss(), 1.0, "v", Step(milestones=[4], gamma=0.0)),  # on for 4 epochs
    )
    warned = about(check_loss(loss, epochs=3, steps_per_epoch=10), "warning")
    assert set(warned) == {"b", "c"} and "3 epochs of 10 steps" in warned["b"]
    assert check_loss(loss) == []  # without the run's length nothing is said about schedules


def test_a_hand_over_late_in_the_run_still_switches_its_receiver_on():
    loss = composite(a=(L1Loss(), 1.0, "v", HandOver(to="b", begin=0.9, end=1.0)), b=(L1Loss(), 1.0))
    assert check_loss(loss, epochs=10, steps_per_epoch=100) == []


def test_every_term_off_for_the_whole_run_is_an_error():
    loss = composite(a=(L1Loss(), 1.0, "v", Step(milestones=[0], gamma=0.0)), b=(L1Loss(), 0.0))
    findings = check_loss(loss, epochs=2, steps_per_epoch=5)
    assert about(findings, "error") == {None: "every term has weight 0 for the whole run: nothing trains the model"}


# ------------------------------------------------------------------------------------------------ balancing


def test_a_balancer_that_needs_positive_terms_refuses_a_term_that_can_be_negative():
    terms = {"box": {"loss": CIoULoss(), "view": "box"}, "signed": {"loss": Signed(), "view": "box"}}
    with pytest.raises(LossConfigError, match="term 'signed': Signed can be negative, and the balancing NeedsPositive"):
        CompositeLoss(terms, balancing=NeedsPositive())
    CompositeLoss(terms, balancing=None)  # fine without the balancer
    CompositeLoss({"box": terms["box"]}, balancing=NeedsPositive())  # and with non-negative terms only


def test_a_negative_value_on_the_batch_is_an_error_for_such_a_balancer():
    loss = CompositeLoss({"l1": {"loss": L1Loss(), "view": "v"}}, balancing=NeedsPositive())
    pred = torch.zeros(3, 4, requires_grad=True)
    findings = check_views(loss, {"v": View((pred, torch.zeros(3, 4)), norm=1.0)}, [pred])
    assert (
        "its value on this batch is 0, and the balancing NeedsPositive needs positive terms"
        in about(findings, "error")["l1"]
    )


# ------------------------------------------------------------------------------------------------ classes


def test_include_background_false_with_regions_is_an_error():
    loss = composite(dice=(DiceLoss(mode="multilabel", include_background=False, ignore_index=None), 1.0))
    assert "first region would be left out" in about(check_loss(loss, num_classes=3, regions=True), "error")["dice"]
    assert check_loss(loss, num_classes=3) == []


def test_a_softmax_over_overlapping_regions_is_an_error():
    loss = composite(dice=(DiceLoss(include_background=True), 1.0))
    assert "overlapping regions" in about(check_loss(loss, num_classes=3, regions=True), "error")["dice"]


def test_include_background_on_a_binary_problem_warns():
    loss = composite(dice=(DiceLoss(include_background=True), 1.0), ce=(CrossEntropyLoss(), 1.0))
    assert set(about(check_loss(loss, num_classes=2), "warning")) == {"dice"}
    assert check_loss(loss, num_classes=3) == []
    assert check_loss(composite(dice=(DiceLoss(include_background=False), 1.0)), num_classes=2) == []


def test_class_weights_of_the_wrong_length():
    loss = composite(
        ce=(CrossEntropyLoss(class_weights=[1.0, 2.0]), 1.0),
        dice=(DiceLoss(include_background=False, class_weights=[1.0, 2.0]), 1.0),
        dice_all=(DiceLoss(include_background=True, class_weights=[1.0, 2.0]), 1.0),
    )
    errors = about(check_loss(loss, num_classes=3), "error")
    assert set(errors) == {"ce", "dice_all"}
    assert errors["ce"] == "class_weights has 2 values, but the term scores 3 classes of a head of 3"
    assert set(about(check_loss(loss, num_classes=2), "error")) == {"dice"}  # 1 class kept of 2


# ------------------------------------------------------------------------------------------------ what a view gives


def test_declared_inputs_of_the_shipped_losses():
    assert [expects(m) for m in (BCEWithLogitsLoss(), DFLoss(), CIoULoss(), L1Loss(), OnProbabilities())] == [
        "logits",
        "logits",
        "values",
        "values",
        "probabilities",
    ]
    assert activation(DiceLoss()) == "softmax"
    assert activation(DiceLoss(mode="multilabel", ignore_index=None)) == "sigmoid"
    assert activation(CIoULoss()) is None


def test_made_by_sees_through_reshaping_and_indexing():
    x = torch.randn(2, 3, 5, requires_grad=True)
    assert made_by(x.sigmoid().permute(0, 2, 1).reshape(-1, 3)[torch.tensor([0, 4])]) == "probabilities"
    assert made_by(torch.cat([x.softmax(1), x.softmax(1)], 0).float()) == "probabilities"
    assert made_by(x.log_softmax(1)[0]) == "log-probabilities"
    assert made_by(x.permute(0, 2, 1)) is None and made_by((x * 2).sigmoid() * 2) is None
    assert made_by(torch.cat([x.sigmoid(), x], 0)) is None  # partly probabilities: unknown
    assert made_by(x.detach().sigmoid()) is None  # no graph: unknown


def test_probabilities_given_to_a_term_that_takes_logits_is_an_error():
    logits = torch.randn(2, 3, 8, requires_grad=True)
    target = torch.rand(2, 3, 8)
    loss = composite(cls=(BCEWithLogitsLoss(), 0.5, "cls"))
    wrong = check_views(loss, {"cls": View((logits.sigmoid(), target))}, [logits])
    assert "takes logits, but view 'cls' gives it probabilities" in about(wrong, "error")["cls"]
    assert set(about(wrong, "error")) == {"cls"}  # its view still reaches the model
    assert check_views(loss, {"cls": View((logits, target))}, [logits]) == []


def test_logits_given_to_a_term_that_takes_probabilities():
    logits = torch.randn(4, 3, requires_grad=True) * 3
    target = torch.rand(4, 3)
    loss = composite(own=(OnProbabilities(), 1.0))
    assert (
        "takes probabilities, but view 'v' gives it values in"
        in about(check_views(loss, {"v": View((logits, target))}, [logits]), "error")["own"]
    )
    assert check_views(loss, {"v": View((logits.sigmoid(), target))}, [logits]) == []
    squashed = (logits.tanh() + 1) / 2  # in [0, 1], but no sigmoid or softmax made it
    assert set(about(check_views(loss, {"v": View((squashed, target))}, [logits]), "warning")) == {"own"}


def test_a_view_that_gives_the_model_no_gradient():
    pred = torch.rand(3, 4, requires_grad=True)
    loss = composite(a=(L1Loss(), 1.0, "a"), b=(L1Loss(), 1.0, "b"))
    views = {"a": View((pred * 2, torch.zeros(3, 4))), "b": View((pred.detach() * 2, torch.zeros(3, 4)))}
    findings = check_views(loss, views, [pred])
    assert about(findings, "warning") == {"b": "no gradient reaches the model's output through its view 'b'"}
    assert about(findings, "error") == {}
    views["a"] = View((pred.detach(), torch.zeros(3, 4)))
    assert about(check_views(loss, views, [pred]), "error") == {None: "no term gives the model a gradient"}


def test_terms_of_weight_0_are_checked_on_the_batch_too():
    pred = torch.rand(3, 4, requires_grad=True)
    loss = composite(a=(L1Loss(), 1.0), b=(Signed(), 0.0))
    assert check_views(loss, {"v": View((pred, torch.zeros(3, 4)))}, [pred]) == []
    bad = check_views(loss, {"v": View((pred * torch.inf, torch.zeros(3, 4)))}, [pred])
    assert set(about(bad, "error")) == {"a", "b"}


def test_a_negative_boundary_loss_on_the_batch_is_an_error_for_such_a_balancer():
    # the boundary loss sums probabilities times signed distances, negative inside the target
    logits = torch.randn(1, 2, 6, 6, requires_grad=True)
    labels = torch.ones(1, 6, 6, dtype=torch.long)
    inside = -torch.ones(1, 2, 6, 6)
    loss = CompositeLoss({"boundary": {"loss": BoundaryLoss(), "view": "d"}}, balancing=NeedsPositive(), check=False)
    errors = about(check_views(loss, {"d": View((logits, labels, inside))}, [logits]), "error")
    assert set(errors) == {"boundary"} and "needs positive terms" in errors["boundary"]
    assert check_views(loss, {"d": View((logits, labels, -inside))}, [logits]) == []


# ------------------------------------------------------------------------------------------------ detloss-check


def test_detloss_check_warns_and_exits_0(capsys):
    assert check_main([*SMALL, "loss.terms.cls.weight=0"]) == 0
    out = capsys.readouterr().out
    assert "warning: term 'cls': weight 0" in out and "0 errors, 1 warning (training can start)" in out


def test_detloss_check_exits_1_on_an_error(capsys):
    assert check_main([*SMALL, "loss.terms.box.weight=0", "loss.terms.cls.weight=0", "loss.terms.dfl.weight=0"]) == 1
    out = capsys.readouterr().out
    assert "error: every term has weight 0 for the whole run" in out and "1 error, 3 warnings" in out
    assert check_main(["loss.terms.nope.weight=1"]) == 1
    assert "error: the config does not compose" in capsys.readouterr().out


def test_detloss_check_reads_the_run_length(capsys):
    code = check_main([*SMALL, "loss=yolo_handover", *HANDOVER_AT_THE_END, "trainer.max_epochs=2"])
    assert code == 0
    assert "term 'vfl': its schedule keeps its weight 0 through the whole run (2 epochs of 4 steps)" in (
        capsys.readouterr().out
    )


def test_a_clean_config_has_no_findings_and_the_option_errors(capsys):
    assert check_main([*SMALL, "task=segmentation"]) == 0
    assert "0 errors, 0 warnings" in capsys.readouterr().out
    assert check_main(["--steps", "3"]) == 2


def test_findings_on_the_copies_of_a_term_are_reported_once_under_its_name():
    from detloss.check import _as_configured
    from detloss.composite import Finding

    lost = "no gradient reaches the model's output through its view"
    copies = [Finding("warning", f"scale{i}/dice", f"{lost} 'scale{i}/pixels'") for i in range(3)]
    own = [Finding("error", "ce", "first"), Finding("error", "ce", "second")]
    assert [str(f) for f in _as_configured([*copies, *own], ["dice", "ce"])] == [
        "warning: term 'dice': no gradient reaches the model's output through its view 'pixels'",
        "error: term 'ce': first",
        "error: term 'ce': second",
    ]


def test_building_a_run_checks_its_loss_against_the_head():
    """Training refuses, when the run is built, what only the data's facts reveal: here class weights for 2 classes
    on a head of 5 (the shapes data), naming the term."""
    from conftest import compose_config

    from detloss.train import build_task

    cfg = compose_config("+loss.terms.cls.loss.class_weights=[1.0,2.0]")
    data = {"class_names": [f"c{k}" for k in range(5)], "in_channels": 3, "image_size": 64}
    with pytest.raises(LossConfigError, match="term 'cls'"):
        build_task(cfg, data, pretrained=False)
    build_task(compose_config("+loss.terms.cls.loss.class_weights=[1,1,2,1,1]"), data, pretrained=False)


def test_the_boundary_loss_declares_it_can_be_negative():
    assert BoundaryLoss.can_be_negative and not getattr(DiceLoss, "can_be_negative", False)
    with pytest.raises(LossConfigError, match="term 'boundary': BoundaryLoss can be negative"):
        CompositeLoss({"boundary": {"loss": BoundaryLoss(), "view": "distance"}}, balancing=NeedsPositive())


def test_the_balancers_of_log_or_ratio_form_declare_they_need_positive_terms():
    from detloss.composite import FAMO, DynamicWeightAverage, GradNorm, RandomLossWeighting, UncertaintyWeighting

    assert all(b.needs_positive_terms for b in (UncertaintyWeighting, DynamicWeightAverage, FAMO, GradNorm))
    assert not getattr(RandomLossWeighting, "needs_positive_terms", False)  # any sign: it only rescales
