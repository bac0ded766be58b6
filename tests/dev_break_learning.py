"""Development check of tests/test_learning.py: break PartFormer on purpose and print the score
the learning test would see (it requires keypoint NMI >= 60).

Not collected by `pytest` (the file name does not start with test_); run it explicitly:

    pytest -q -s tests/dev_break_learning.py        # 3 trainings, ~1.5 min on 2 free cores

- no_exchange: each view's part tokens are aligned with their OWN view's feature map and
  reconstruct their own view (no token exchange between the views);
- recon_sign: the reconstruction loss enters the total with the opposite sign;
- intact: the method as shipped.
Measured 2026-12-02: intact 62.42, no_exchange 58.60, recon_sign 56.53."""
import torch
import pytest
from tests.test_learning import coded_root, train_and_score  # noqa: F401
from partformer.methods.partformer import PartFormerCriterion, PartFormerModel

ORIG = PartFormerModel.forward


def no_exchange_forward(self, view1, view2):
    out = ORIG(self, view1, view2)
    # tokens aligned with their OWN view's feature map; each reconstructs its own view
    a11 = self.assign(out["part_tokens1"], out["feature_map1"])
    a22 = self.assign(out["part_tokens2"], out["feature_map2"])
    recon = self.decoder(torch.cat([self.compose(a11, out["part_tokens1"]),
                                    self.compose(a22, out["part_tokens2"])], dim=0))
    B = view1.shape[0]
    out.update(assign12=a11, assign21=a22, recon2=recon[:B], recon1=recon[B:],
               target2=out["target1"], target1=out["target2"])
    return out


ORIG_INIT = PartFormerCriterion.__init__


def negative_recon_init(self, *a, **k):
    ORIG_INIT(self, *a, **k)
    self.loss_weights["recon"] = -self.loss_weights["recon"]


@pytest.mark.parametrize("variant", ["no_exchange", "recon_sign", "intact"])
def test_break(variant, coded_root, tmp_path, monkeypatch):
    if variant == "no_exchange":
        monkeypatch.setattr(PartFormerModel, "forward", no_exchange_forward)
    if variant == "recon_sign":
        monkeypatch.setattr(PartFormerCriterion, "__init__", negative_recon_init)
    nmi = train_and_score(coded_root, tmp_path, monkeypatch)
    print(f"\nRESULT {variant}: kp_nmi_with_bg {nmi:.2f}")
