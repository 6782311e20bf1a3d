#!/usr/bin/env python3
"""Packages a built pgevents-host binary the way Python and Node.js users install tools.

    python3 packaging/package.py --binary target/release/pgevents-host --out dist

writes into --out:

- pgevents_host-VERSION-py3-none-PLATFORM.whl: a wheel holding the binary as a script,
  the layout `maturin` writes for `bindings = "bin"` (`pip install` puts `pgevents-host`
  on the venv's PATH);
- pgevents-host-VERSION.tgz: an npm package (made by `npm pack`) whose `bin` is the
  binary (`npm install` links `node_modules/.bin/pgevents-host`; `npx pgevents-host`).

The version is what the binary says (`pgevents-host --version`). Both packages are for
the platform the binary was built for (this machine's, unless --platform says otherwise).
Nothing is published.
"""

import argparse
import base64
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
SUMMARY = "Run sandboxed WebAssembly plugins on every row change in PostgreSQL"


def version_of(binary):
    out = subprocess.run([binary, "--version"], check=True, capture_output=True, text=True)
    name, _, version = out.stdout.strip().partition(" ")
    if name != "pgevents-host" or not version:
        sys.exit(f"error: {binary} --version said {out.stdout!r}, not `pgevents-host VERSION`")
    return version


def record_line(path, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def wheel(binary, version, tag, out):
    dist = f"pgevents_host-{version}"
    files = {
        f"{dist}.data/scripts/pgevents-host": (open(binary, "rb").read(), 0o755),
        f"{dist}.dist-info/METADATA": (
            (
                "Metadata-Version: 2.1\n"
                f"Name: pgevents-host\nVersion: {version}\nSummary: {SUMMARY}\n"
                "License: Apache-2.0\nRequires-Python: >=3.8\n"
            ).encode(),
            0o644,
        ),
        f"{dist}.dist-info/WHEEL": (
            (
                "Wheel-Version: 1.0\nGenerator: pgevents-host packaging/package.py\n"
                f"Root-Is-Purelib: false\nTag: py3-none-{tag}\n"
            ).encode(),
            0o644,
        ),
    }
    record = f"{dist}.dist-info/RECORD"
    lines = [record_line(path, data) for path, (data, _) in files.items()] + [f"{record},,"]
    files[record] = (("\n".join(lines) + "\n").encode(), 0o644)
    path = os.path.join(out, f"{dist}-py3-none-{tag}.whl")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, (data, mode) in files.items():
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
            info.external_attr = (0o100000 | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return path


def npm_package(binary, version, out):
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("error: npm not found; it packs the npm package (install Node.js and npm)")
    with open(os.path.join(HERE, "npm", "package.json")) as f:
        manifest = json.load(f)
    manifest["version"] = version
    with tempfile.TemporaryDirectory() as stage:
        os.mkdir(os.path.join(stage, "bin"))
        shutil.copy(binary, os.path.join(stage, "bin", "pgevents-host"))
        os.chmod(os.path.join(stage, "bin", "pgevents-host"), 0o755)
        shutil.copy(os.path.join(HERE, "npm", "README.md"), stage)
        with open(os.path.join(stage, "package.json"), "w") as f:
            json.dump(manifest, f, indent=2)
        done = subprocess.run(
            [npm, "pack", "--silent", "--pack-destination", os.path.abspath(out)],
            cwd=stage,
            check=True,
            capture_output=True,
            text=True,
        )
    return os.path.join(out, done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", required=True, help="the built pgevents-host")
    parser.add_argument("--out", required=True, help="folder for the packages")
    parser.add_argument(
        "--platform",
        default=f"linux_{platform.machine()}",
        help="the wheel's platform tag (default: this machine's, linux_<arch>)",
    )
    args = parser.parse_args()
    if not os.access(args.binary, os.X_OK):
        sys.exit(f"error: {args.binary} is not an executable; build it with cargo build --release -p pgevents-host")
    os.makedirs(args.out, exist_ok=True)
    version = version_of(args.binary)
    print(wheel(args.binary, version, args.platform, args.out))
    print(npm_package(args.binary, version, args.out))


if __name__ == "__main__":
    main()
