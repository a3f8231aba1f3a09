"""Deterministic input for the compressor workloads.

    gendata.py DIR STEPS TEXTS [MARKER_SUFFIX]

writes TEXTS texts DIR/input<k> (words of a fixed pseudo-random vocabulary, ~450 KB
each, compressible like prose) and DIR/step<NNN> for NNN = 1..STEPS as hard links to
them, so the image holds only TEXTS distinct files. With MARKER_SUFFIX, also empty
files DIR/m/step<NNN><suffix>: a compressor given one skips it with a warning naming
it, which is a deterministic progress line for programs whose own verbose output
carries timings."""

import os
import random
import sys

out, steps, texts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(out, exist_ok=True)
for k in range(texts):
    rnd = random.Random(k + 1)
    vocab = ["".join(rnd.choice("etaoinshrdlucmfw") for _ in range(rnd.randint(2, 10)))
             for _ in range(2000 + 500 * k)]
    words = [rnd.choice(vocab) for _ in range(70000)]
    with open(os.path.join(out, f"input{k}"), "w") as f:
        for i in range(0, len(words), 12):
            f.write(" ".join(words[i:i + 12]) + "\n")
for n in range(1, steps + 1):
    os.link(os.path.join(out, f"input{(n * 5) % texts}"), os.path.join(out, f"step{n:03d}"))
if len(sys.argv) > 4:
    os.makedirs(os.path.join(out, "m"), exist_ok=True)
    for n in range(1, steps + 1):
        open(os.path.join(out, "m", f"step{n:03d}{sys.argv[4]}"), "w").close()
