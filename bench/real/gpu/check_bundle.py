"""Check an unpacked GPU bundle against the packages the host is said to have, without a GPU.

For every distribution in the site folder, reads its METADATA ``Requires-Dist`` (evaluated for
Linux x86-64, Python 3.12, no extras) and sorts each requirement into: carried in the bundle,
expected on the host (by name, from docs/gpu.md's list; versions checked where known), or missing.
Also lists the compiled libraries and the shared libraries they need (ELF DT_NEEDED).

    python3 bench/real/gpu/check_bundle.py .gpu-bundle/site
"""

from __future__ import annotations

import argparse
import email.parser
import json
import re
import subprocess
import sys
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

# The GPU host's image as described (device tool's KINDS.md, 2026-11-17); versions where known.
HOST_VERSIONS = {
    "torch": "2.11.0",
    "triton": "3.6.0",
    "transformers": "5.17.0",
    "tokenizers": "0.23.2",
    "numpy": "2.5.2",
    "safetensors": "0.8.0",
    "tiktoken": "0.14.0",
    "sentencepiece": "0.2.2",
    "huggingface-hub": "1.33.0",
    "torchvision": "0.26.0",
    "torchaudio": "2.11.0",
}
HOST_NAMES = set(
    """aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs certifi charset-normalizer click
    cloudpickle einops filelock frozenlist fsspec grpcio h11 hf-xet httpcore httpx idna jinja2
    markupsafe msgpack multidict networkx ninja numba nvidia-ml-py opencv-python-headless packaging
    pillow prometheus-client propcache protobuf psutil py-cpuinfo pygments pyyaml regex requests
    rich setuptools shellingham six sympy tqdm typer typing-extensions typing-inspect urllib3
    uvloop werkzeug wrapt xxhash yarl zipp pytest""".split()  # noqa: SIM905
) | set(HOST_VERSIONS)
ENVIRONMENT = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "os_name": "posix",
    "extra": "",
}


def distributions(site: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, Requires-Dist lines) for every *.dist-info in ``site``."""
    found: dict[str, tuple[str, list[str]]] = {}
    for info in sorted(site.glob("*.dist-info")):
        meta = email.parser.Parser().parsestr((info / "METADATA").read_text(errors="replace"))
        name = canonicalize_name(meta["Name"])
        found[name] = (meta["Version"], meta.get_all("Requires-Dist") or [])
    return found


def applies(requirement: Requirement) -> bool:
    marker: Marker | None = requirement.marker
    return marker is None or marker.evaluate(ENVIRONMENT)


def classify(site: Path) -> dict[str, list[str]]:
    dists = distributions(site)
    report: dict[str, list[str]] = {"missing": [], "host": [], "conflict": [], "carried": []}
    for name, (_, requires) in dists.items():
        for line in requires:
            try:
                req = Requirement(line)
            except InvalidRequirement:
                continue
            if not applies(req):
                continue
            dep = canonicalize_name(req.name)
            entry = f"{name} -> {req}"
            if dep in dists:
                version = dists[dep][0]
                ok = not req.specifier or req.specifier.contains(Version(version), prereleases=True)
                report["carried" if ok else "conflict"].append(f"{entry} (carried {version})")
            elif dep in HOST_VERSIONS:
                version = HOST_VERSIONS[dep]
                ok = not req.specifier or req.specifier.contains(Version(version), prereleases=True)
                report["host" if ok else "conflict"].append(f"{entry} (host {version})")
            elif dep in HOST_NAMES:
                report["host"].append(f"{entry} (host, version not known here)")
            else:
                report["missing"].append(entry)
    return report


_SYSTEM = ("libc.so", "libm.so", "libpthread", "libdl.so", "librt.so", "libgcc_s", "ld-linux")
_CUDA_OR_TORCH = re.compile(r"lib(cuda|cudart|nvrtc|torch|c10|cublas)")


def needed_libraries(site: Path) -> dict[str, list[str]]:
    """Each compiled library in ``site`` and the DT_NEEDED entries that are not plain libc."""
    libs = {}
    for so in sorted(site.rglob("*.so*")):
        if not so.is_file():
            continue
        out = subprocess.run(["readelf", "-d", str(so)], capture_output=True, text=True).stdout
        needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)
        libs[str(so.relative_to(site))] = [lib for lib in needed if not lib.startswith(_SYSTEM)]
    return libs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("site", type=Path)
    parser.add_argument("--json", type=Path, default=None, help="write the full report here")
    args = parser.parse_args(argv)
    report = classify(args.site)
    libs = needed_libraries(args.site)
    for kind in ("missing", "conflict", "host"):
        print(f"== {kind} ({len(report[kind])})")
        for entry in sorted(set(report[kind])):
            print("  " + entry)
    print(f"== carried ({len(report['carried'])} requirements met inside the bundle)")
    print("== compiled libraries needing CUDA/torch")
    for path, needed in libs.items():
        special = [lib for lib in needed if _CUDA_OR_TORCH.match(lib)]
        if special:
            print(f"  {path}: {', '.join(special)}")
    if args.json:
        args.json.write_text(json.dumps({"requirements": report, "libraries": libs}, indent=2))
    sys.exit(1 if report["missing"] or report["conflict"] else 0)


if __name__ == "__main__":
    main()
