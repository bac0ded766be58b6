"""Precision: what ``train.precision=auto`` picks on which machine, how close bf16 outputs stay to
fp32 on the same input, and the CPU allocator setting the tools make (issue 17).

CPU feature facts: the ``/proc/cpuinfo`` flag names are the Linux kernel's
(``arch/x86/include/asm/cpufeatures.h``: ``X86_FEATURE_AVX512_BF16`` shows as ``avx512_bf16``,
``X86_FEATURE_AMX_BF16`` as ``amx_bf16``; ``Documentation/arch/arm64/elf_hwcaps.rst``:
``HWCAP2_BF16`` shows as ``bf16`` in the ``Features`` line). The flag lists below are those of real
CPUs as the kernel prints them (shortened to the relevant part)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from partformer import config as cfglib
from partformer.engine import precision as P
from tests.tiny import TINY_METHODS, tiny_method_yaml

ZEN4 = ("fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma avx512f avx512dq avx512cd avx512bw "
        "avx512vl avx512_bf16 avx512vbmi avx512_vnni avx512_bitalg").split()
SKYLAKE_SP = ("fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma avx512f avx512dq avx512cd "
              "avx512bw avx512vl").split()
SAPPHIRE_RAPIDS = ("avx2 avx512f avx512_vnni avx512_fp16 amx_bf16 amx_tile amx_int8").split()
GRAVITON2 = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm".split()
GRAVITON3 = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
             "jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc "
             "flagm ssbs paca pacg dcpodp svei8mm svebf16 i8mm bf16 dgh rng").split()


@pytest.mark.parametrize("flags,native", [(ZEN4, True), (SAPPHIRE_RAPIDS, True),
                                          (GRAVITON3, True), (SKYLAKE_SP, False),
                                          (GRAVITON2, False), ([], False)])
def test_native_bf16_is_read_from_the_cpu_flags(flags, native):
    assert P.cpu_flags_have_bf16(flags) is native


@pytest.fixture
def detection(monkeypatch):
    """cpu_has_native_bf16 is cached per process: clear it around a test that overrides it."""
    P.cpu_has_native_bf16.cache_clear()
    yield monkeypatch
    P.cpu_has_native_bf16.cache_clear()


@pytest.mark.parametrize("forced,expected", [("0", None), ("1", torch.bfloat16)])
def test_auto_follows_the_cpu_and_the_override(detection, forced, expected):
    detection.setenv("PARTFORMER_CPU_BF16", forced)
    cpu = torch.device("cpu")
    assert P.resolve_precision("auto", cpu) == expected
    # an explicit precision is never changed by the detection
    assert P.resolve_precision("fp32", cpu) is None
    assert P.resolve_precision("bf16", cpu) == torch.bfloat16
    assert P.resolve_precision("auto", torch.device("cuda")) == torch.bfloat16


def test_auto_on_this_cpu_matches_its_flags(detection):
    """With no override, auto is bf16 exactly when the kernel reports a bf16 flag (x86 machines
    whose torch build reports AVX512-BF16 / AMX agree with their flags)."""
    detection.delenv("PARTFORMER_CPU_BF16", raising=False)
    if not os.path.isfile("/proc/cpuinfo"):
        pytest.skip("no /proc/cpuinfo")
    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip().lower() in ("flags", "features"):
                flags.update(value.split())
    native = P.cpu_flags_have_bf16(flags)
    assert P.cpu_has_native_bf16() is native
    assert P.resolve_precision("auto", torch.device("cpu")) == (torch.bfloat16 if native else None)


def test_unknown_precision_names_the_key():
    with pytest.raises(cfglib.ConfigError, match="train.precision"):
        P.resolve_precision("bf32", torch.device("cpu"))
    assert [P.precision_name(P.resolve_precision(p, torch.device("cpu")))
            for p in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]


# ------------------------------------------------------------------ bf16 outputs against fp32

def synthetic_images(n: int = 16) -> torch.Tensor:
    """The first ``n`` images of the synthetic benchmark's generator (its default, cluttered
    level), ``[n, 3, 64, 64]`` in [0, 1]: the shipped model's input size."""
    from partformer.data.synthetic.config import SyntheticConfig
    from partformer.data.synthetic.rendering import render_index
    cfg = SyntheticConfig()
    ims = [torch.from_numpy(np.ascontiguousarray(render_index(cfg, i)["image"])) for i in range(n)]
    x = torch.stack(ims).permute(0, 3, 1, 2).float() / 255.0
    return torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", antialias=True,
                                           align_corners=False)


def test_shipped_model_in_bf16_stays_within_the_stated_tolerance():
    """README "Performance": the shipped synthetic_k4 model's part maps in bf16 differ from fp32
    by at most 0.005 on average (measured 0.0011) and label at least 99 % of the pixels alike
    (measured 99.7 %), on the same 16 benchmark images."""
    import partformer
    x = synthetic_images()
    ref = partformer.load("synthetic_k4", device="cpu", precision="fp32").predict_network(x)
    low = partformer.load("synthetic_k4", device="cpu", precision="bf16").predict_network(x)
    assert ref.dtype == low.dtype == torch.float32 and ref.shape == low.shape
    diff = (ref - low).abs()
    assert diff.max().item() > 0, "bf16 did not run"
    assert diff.mean().item() <= 0.005
    agree = (ref.argmax(1) == low.argmax(1)).float().mean().item()
    assert agree >= 0.99, f"bf16 labels {agree:.4f} of the pixels like fp32"


@pytest.mark.parametrize("method", sorted(TINY_METHODS))
def test_every_method_predicts_in_bf16_close_to_fp32(method, tmp_path):
    """Each method's (tiny, random-weight) model: bf16 maps are float32 probability maps within
    0.02 of fp32 on average, and not identical to them (autocast did run)."""
    from partformer.methods import build_model
    from partformer.predictor import Predictor
    cfg = cfglib.load_config(tiny_method_yaml(tmp_path, method))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    S = cfg.data.image_size
    x = torch.rand(4, 3, S, S, generator=torch.Generator().manual_seed(1))
    ref = Predictor(model, cfg, device="cpu", precision="fp32").predict_network(x)
    low = Predictor(model, cfg, device="cpu", precision="bf16").predict_network(x)
    assert low.dtype == torch.float32
    assert torch.allclose(low.sum(1), torch.ones_like(low[:, 0]), atol=1e-3)
    diff = (ref - low).abs()
    assert 0 < diff.max().item() and diff.mean().item() <= 0.02, diff.mean().item()


# ------------------------------------------------------------------------------- the allocator

ALLOC_PROBE = r"""
import ctypes, json, sys
from partformer.engine.allocator import tune_allocator, allocator_tuned
import torch

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
tuned = tune_allocator()
x = torch.empty(16 << 20, dtype=torch.uint8)      # 16 MiB: mmap'ed by glibc's default
during = libc.mallinfo2().hblkhd
del x
after = libc.mallinfo2().fordblks
print(json.dumps({"tuned": tuned, "reported": allocator_tuned(), "mmapped": during,
                  "free_in_heap": after}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
@pytest.mark.parametrize("setting", ["1", "0"])
def test_tuned_allocator_keeps_large_blocks_in_the_heap(setting):
    """glibc serves a 16 MiB block by mmap and unmaps it on free (mallinfo2 hblkhd); tuned, the
    block comes from the heap and stays there free for the next step's tensor (fordblks).
    PARTFORMER_MALLOC_TUNING=0 leaves glibc's default."""
    import json
    import platform
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    env = dict(os.environ, PARTFORMER_MALLOC_TUNING=setting)
    out = subprocess.run([sys.executable, "-c", ALLOC_PROBE], env=env, capture_output=True,
                         text=True, check=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    if setting == "1":
        assert r["tuned"] and r["reported"]
        assert r["mmapped"] < (16 << 20) <= r["free_in_heap"]
    else:
        assert not r["tuned"] and not r["reported"]
        assert r["mmapped"] >= (16 << 20) > r["free_in_heap"]


def test_tools_tune_the_allocator_before_they_run(monkeypatch):
    """cli_entry tunes the allocator before the tool's main runs."""
    from partformer import cli
    from partformer.engine import allocator
    monkeypatch.setattr(allocator, "_STATE", {})
    seen = []
    cli.cli_entry(lambda argv: seen.append(allocator.allocator_tuned()) or 0)([])
    expected = platform_is_glibc() and os.environ.get("PARTFORMER_MALLOC_TUNING", "1") != "0"
    assert seen == [expected]


def platform_is_glibc() -> bool:
    import platform
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

