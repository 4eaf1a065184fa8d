#!/usr/bin/env python3
"""The source the link benchmarks back up, and its change set:

    bench-source.py FIRST SECOND

FIRST: 1,400 small files (4-28 KiB) in 40 directories and 20 larger ones
(256 KiB), 27 MiB of random bytes. SECOND: a copy of FIRST with the change
set applied: 40 files edited (4 KiB rewritten in place), 10 removed, 2 MiB
added. The same sizes on every run (seeded); the bytes are random, so no
tool can compress them."""
import os
import random
import shutil
import sys

first, second = sys.argv[1], sys.argv[2]
random.seed(20)
for index in range(1400):
    directory = os.path.join(first, f"dir{index % 40:02d}")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f"small{index:04d}.dat"), "wb") as out:
        out.write(os.urandom(random.randint(4 << 10, 28 << 10)))
for index in range(20):
    with open(os.path.join(first, f"large{index:02d}.bin"), "wb") as out:
        out.write(os.urandom(256 << 10))

shutil.copytree(first, second, symlinks=True)
files = sorted(os.path.join(d, f) for d, _, names in os.walk(second) for f in names if f.startswith("small"))
for path in files[:40]:
    with open(path, "r+b") as out:
        out.write(os.urandom(4 << 10))
for path in files[40:50]:
    os.remove(path)
with open(os.path.join(second, "added.bin"), "wb") as out:
    out.write(os.urandom(2 << 20))
