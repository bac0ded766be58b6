"""The training step's fast paths equal the straightforward ones: losses summed on the device,
uint8 batches converted on the device, and under autocast only VGG19 runs in low precision."""
from __future__ import annotations

import pytest
import torch

from partformer.augment import PairedAugmentation
from partformer.engine.trainer import RunningLosses, TrainStep, device_batch, training_losses
from partformer.methods.partformer import PartFormerCriterion, PartFormerObjective

from tests.test_models import tiny_model, views


def test_running_losses_are_the_means_of_what_was_added():
    run = RunningLosses()
    assert run.means() == {}
    rows = [{"recon": 1.0, "total": 3.0}, {"recon": 2.5, "total": -1.0}, {"recon": 0.5, "total": 4.0}]
    for r in rows:
        run.add({k: torch.tensor(v) for k, v in r.items()})
    means = run.means()
    assert list(means) == ["recon", "total"] and run.count == 3
    assert means["recon"] == pytest.approx(4.0 / 3) and means["total"] == pytest.approx(2.0)


def test_uint8_batch_gives_the_losses_of_the_float_batch():
    """The image cache hands the step uint8 batches; converted on the device they must give the
    very losses of the decoded float batch (x / 255 in float32 either way)."""
    model = tiny_model().train()
    step = TrainStep(model, PartFormerObjective(PairedAugmentation(),
                                                PartFormerCriterion(4, recon="mse")))
    u8 = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8,
                       generator=torch.Generator().manual_seed(0))
    as_float = u8.to(torch.float32) / 255.0
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cpu = torch.device("cpu")
    a = training_losses(step, device_batch({"image": u8}, (), cpu), torch.Generator().manual_seed(3))
    model.load_state_dict(state)                       # BatchNorm statistics moved: restore
    b = training_losses(step, device_batch({"image": as_float}, (), cpu),
                        torch.Generator().manual_seed(3))
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_under_autocast_only_the_perceptual_network_is_low_precision():
    """Inside a bf16 autocast, concentration, area and ArcFace are computed in float32 from the
    same outputs, so they equal the fp32 criterion exactly; the perceptual loss (VGG19 in bf16)
    is a float32 scalar close to the fp32 one."""
    torch.manual_seed(0)
    model = tiny_model(image_size=64).train()
    crit = PartFormerCriterion(4, recon="perceptual", vgg_weights=None)
    out = model(*views())
    out = {k: v.detach().float() for k, v in out.items()}
    ref = crit(out)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = crit(out)
    for k in ("concentration", "area", "arcface"):
        assert low[k].dtype == torch.float32 and torch.equal(low[k], ref[k]), k
    assert low["recon"].dtype == torch.float32
    assert low["recon"].item() != ref["recon"].item()                 # VGG19 did run in bf16
    assert low["recon"].item() == pytest.approx(ref["recon"].item(), rel=0.05)
