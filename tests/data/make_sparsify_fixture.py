"""Writes tests/data/sparsify/layers.1: an SAE saved by the real eai-sparsify (SparseCoder.save_to_disk), with its
own encodings of fixed inputs. Run in a venv with eai-sparsify installed:

    /tmp/saevenv/bin/pip install torch==2.13.0 eai-sparsify==1.3.3
    /tmp/saevenv/bin/python tests/data/make_sparsify_fixture.py
"""

from importlib.metadata import version
from pathlib import Path

import torch
from safetensors.torch import save_file
from sparsify import SparseCoder, SparseCoderConfig

OUT = Path(__file__).parent / "sparsify" / "layers.1"
torch.manual_seed(0)
sae = SparseCoder(8, SparseCoderConfig(num_latents=16, k=3))
with torch.no_grad():
    for p in sae.parameters():
        p.copy_(torch.randn_like(p) * 0.5)
sae.save_to_disk(OUT)
x = torch.randn(6, 8) * 2
with torch.no_grad():
    e = sae.encode(x)
    z = torch.zeros(6, 16).scatter(-1, e.top_indices, e.top_acts)
    save_file({"x": x, "z": z, "x_hat": sae.decode(e.top_acts, e.top_indices)}, str(OUT / "expected.safetensors"))
(OUT.parent / "VERSION").write_text(f"eai-sparsify {version('eai-sparsify')}\n")
print(sorted(p.name for p in OUT.iterdir()))
