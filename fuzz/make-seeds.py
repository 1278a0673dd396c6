#!/usr/bin/env python3
"""Seeds corpus/metadata/ from the unpacked fixture images (directory given as argument).

Per image: its first 64 KiB metadata area as on disk, and a small self-contained device
(volume header sector, then the block relocated to offset 512 with offsets and CRC fixed);
plus the .BEK files.
"""
import os, struct, sys, zlib

src = sys.argv[1]
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "metadata")
os.makedirs(out, exist_ok=True)
for name in sorted(os.listdir(src)):
    path = os.path.join(src, name)
    if name.endswith(".BEK"):
        open(os.path.join(out, name), "wb").write(open(path, "rb").read())
    if not name.endswith(".img"):
        continue
    f = open(path, "rb")
    sector = bytearray(f.read(512))
    at = 160 if sector[3:11] == b"-FVE-FS-" else 424
    offset = struct.unpack_from("<Q", sector, at + 16)[0]
    f.seek(offset)
    area = f.read(65536)
    stem = name[:-4]
    open(os.path.join(out, stem + ".area"), "wb").write(area)
    size = struct.unpack_from("<H", area, 8)[0] * 16
    block = bytearray(area[: size + 80])
    struct.pack_into("<3Q", block, 32, 512, 512, 512)
    struct.pack_into("<I", block, size + 4, zlib.crc32(bytes(block[:size])))
    struct.pack_into("<3Q", sector, at + 16, 512, 512, 512)
    open(os.path.join(out, stem + ".dev"), "wb").write(bytes(sector + block))
