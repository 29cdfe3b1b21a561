"""Determinism on CPU: the same seed gives bit-identical scans, probes, stores and tiny checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import probekit
from probekit import tiny

N = 24
LABELS = [i % 2 for i in range(N)]


pytestmark = pytest.mark.usefixtures("one_thread")


def _images():
    return tiny.fixture_images(N, 32, seed=11)


def _scan(model, seed=0, groups=None):
    return probekit.scan(model, _images(), LABELS, "What shape is it?", targets=["red"], points="lm.*.resid",
                         positions=("last", "image_mean"), groups=groups, cv=3, seed=seed, n_boot=50, topk=5,
                         batch_size=5, progress=False)


def test_scan_twice_gives_identical_tables(llava):
    a, b = _scan(llava), _scan(llava)
    assert len(a.table) == 2 * 2 + 2  # 2 layers x 2 positions residual, + top-k logits at 2 positions
    assert a.table.accuracy.notna().all() and a.table.mi_bits.notna().all()
    pd.testing.assert_frame_equal(a.table, b.table, check_exact=True)
    pd.testing.assert_frame_equal(a.targets, b.targets, check_exact=True)
    volatile = {"date", "seconds"}
    assert {k: v for k, v in a.settings.items() if k not in volatile} == {
        k: v for k, v in b.settings.items() if k not in volatile}
    assert a.data == b.data


def test_scan_with_groups_twice_gives_identical_tables(llava):
    groups = [i // 4 for i in range(N)]  # 6 groups of 4, both classes in each
    a, b = _scan(llava, seed=3, groups=groups), _scan(llava, seed=3, groups=groups)
    pd.testing.assert_frame_equal(a.table, b.table, check_exact=True)


def test_collect_twice_and_on_disk_gives_identical_tensors(llava, tmp_path):
    kw = dict(points="*", positions=("last", "image_mean", 0), batch_size=5, progress=False)
    a = probekit.collect(llava, _images(), "What shape?", **kw)
    b = probekit.collect(llava, _images(), "What shape?", **kw)
    c = probekit.collect(llava, _images(), "What shape?", store=tmp_path / "s", shard_size=10, **kw)
    assert a.points == b.points == c.points
    for p in a.points:
        assert torch.equal(a[p], b[p]) and torch.equal(a[p], c[p]), p
    assert a.meta == b.meta


def _acts(seed=0, n=60):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    return {f"lm.{i}.resid": torch.randn(n, 16, generator=g) + 1.5 * i * torch.nn.functional.one_hot(y, 16).float()
            for i in range(3)}, y


def test_probe_layers_twice_is_identical():
    acts, y = _acts()
    a = probekit.probe_layers(acts, y, cv=3, seed=5, n_boot=100, progress=False)
    b = probekit.probe_layers({k: v.clone() for k, v in acts.items()}, y.clone(), cv=3, seed=5, n_boot=100,
                              progress=False)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert a.accuracy.iloc[-1] >= 0.85 and a.accuracy.iloc[0] < 0.6  # real numbers, not an empty frame


def test_probe_layers_with_groups_and_positions_twice_is_identical():
    acts, y = _acts(seed=1)
    stacked = {"lm.0.resid": torch.stack([acts["lm.1.resid"], acts["lm.2.resid"]], 1)}
    groups = torch.arange(60) // 3
    a = probekit.probe_layers(stacked, y, groups, cv=4, seed=2, n_boot=100, positions=["last", "mean"], progress=False)
    b = probekit.probe_layers(stacked, y, groups, cv=4, seed=2, n_boot=100, positions=["last", "mean"], progress=False)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert list(a.position) == ["last", "mean"]


def test_leakage_twice_is_identical():
    acts, y = _acts(seed=2)
    acts["logits"] = torch.randn(60, 50, generator=torch.Generator().manual_seed(3))
    a = probekit.leakage(acts, y, cv=3, seed=1, topk=5, n_boot=100, progress=False)
    b = probekit.leakage(acts, y, cv=3, seed=1, topk=5, n_boot=100, progress=False)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert set(a.source) == {"residual", "logits-topk"}


def _files(d: Path) -> dict[str, bytes]:
    return {str(f.relative_to(d)): f.read_bytes() for f in sorted(d.rglob("*")) if f.is_file()}


def test_tiny_build_is_byte_identical_across_processes(tiny_dir, tmp_path):
    """A fresh interpreter (other hash seed, tokenizer trained from scratch) writes the same bytes."""
    here = Path(tiny_dir("llava"))  # built by the session fixture with seed=0
    env = {**os.environ, "PYTHONHASHSEED": "12345", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    code = f"from probekit import tiny; tiny.build('llava', {str(tmp_path / 'again')!r}, seed=0)"
    subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True, timeout=300)
    there = tmp_path / "again"
    a, b = _files(here), _files(there)
    assert sorted(a) == sorted(b)
    different = [name for name in a if a[name] != b[name]]
    assert not different, f"files differ between builds: {different}"
    assert "model.safetensors" in a and "tokenizer.json" in a


def test_tiny_build_seed_changes_only_the_weights(tiny_dir, tmp_path):
    here = _files(Path(tiny_dir("llava")))
    other = _files(tiny.build("llava", tmp_path / "seed1", seed=1))
    changed = {name for name in here if here[name] != other[name]}
    assert changed == {"model.safetensors", "probekit_tiny.json"}
