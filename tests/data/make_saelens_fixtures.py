"""Writes tests/data/saelens/: SAE directories saved by the real sae-lens, with its own encodings of fixed inputs.

Run in a scratch venv with sae-lens installed (it pins transformer-lens<4, so not in probekit's own venv):

    python3 -m venv /tmp/saevenv && /tmp/saevenv/bin/pip install torch==2.13.0 sae-lens==6.54.12
    /tmp/saevenv/bin/python tests/data/make_saelens_fixtures.py

tests/test_sae.py loads each directory with probekit.sae.load_sae and checks probekit's encode / decode
against sae-lens's numbers stored in expected.safetensors.
"""

from pathlib import Path

import torch
from safetensors.torch import save_file

import sae_lens
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

OUT = Path(__file__).parent / "saelens"
torch.manual_seed(0)
x = torch.randn(6, 8) * 2
made = {
    "standard": StandardSAE(StandardSAEConfig(d_in=8, d_sae=16, dtype="float32", device="cpu")),
    "topk": TopKSAE(TopKSAEConfig(d_in=8, d_sae=16, k=3, dtype="float32", device="cpu")),
    "jumprelu": JumpReLUSAE(JumpReLUSAEConfig(d_in=8, d_sae=16, dtype="float32", device="cpu")),
}
for name, sae in made.items():
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        if name == "jumprelu":
            sae.threshold.copy_(torch.rand_like(sae.threshold) * 0.5)
    sae.cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    sae.save_model(OUT / name)
    with torch.no_grad():
        z = sae.encode(x)
        save_file({"x": x, "z": z, "x_hat": sae.decode(z)}, str(OUT / name / "expected.safetensors"))
(OUT / "VERSION").write_text(f"sae-lens {sae_lens.__version__}\n")
print("wrote", sorted(p.name for p in OUT.iterdir()))
