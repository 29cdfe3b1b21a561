"""Which layer knows whether an image carries a watermark? Linear probes and MI per layer.

    python examples/probe_layers.py
"""

import random
import tempfile

import probekit
from probekit.data.synthetic import make_task
from probekit.data.watermark import make_profiles, render


def main(argv=None):
    model = probekit.load(probekit.tiny.build("llava", tempfile.mkdtemp() + "/m"))
    samples = make_task(160, size=32, seed=0)
    profiles = make_profiles(4, pool=0)
    rng = random.Random(0)
    images, labels = [], []
    for i, s in enumerate(samples):
        marked = i % 2 == 0
        images.append(render(s.image, profiles[i % 4], rng, mode="pattern") if marked else s.image)
        labels.append("marked" if marked else "clean")
    store = probekit.collect(model, images, "What colour is the shape?", points=["projector", "lm.*.resid"],
                             positions=("last", "image_mean"), progress=False)
    table = probekit.probe_layers(store, labels, cv=5, seed=0, n_boot=200, progress=False)
    cols = ["point", "position", "accuracy", "accuracy_lo", "accuracy_hi", "chance", "mi_bits", "mi_perm_bits", "selectivity"]
    print(table[cols].round(3).to_string(index=False))
    return table


if __name__ == "__main__":
    main()
