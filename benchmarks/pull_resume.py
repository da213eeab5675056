"""Pull goals (design section 11), as ratios against a baseline measured in the same run.

(a) a pull interrupted at 50 % (SIGTERM to rsync) and resumed by `rgt pull`'s own round: the data bytes
    rsync moved on the resume (its --stats) against the bytes still missing (goal: at most 1 % more);
(b) the hashing phase of verify (parallel sha256 over the tree) against `sha256sum` of the same files,
    both with the files in the page cache (goal: at most 1.2x the time).

    .venv/bin/python benchmarks/pull_resume.py [--quick] [--size-mib N] [--files N] [--dir D] [--strict]

The tree is 256 MiB in 4 random files by default (--quick: 64 MiB); it needs 2x that on --dir.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import build_archive, make_run  # noqa: E402
from rgt.agent import manifest as agent_manifest  # noqa: E402
from rgt.controller import pull, verify  # noqa: E402
from rgt.controller.registry import RunRecord  # noqa: E402
from rgt.controller.transport.local import LocalTransport  # noqa: E402
from rgt.shared.paths import RunPaths  # noqa: E402
from tests.helpers import local_bytes  # noqa: E402


def resume_ratio(base: Path, size_mib: int, files: int) -> tuple[int, int, float]:
    """(remaining bytes, bytes re-sent, re-sent / remaining) for a pull cut at half."""
    box = base / "box"
    run = make_run(box, "bench", ["true"], {}, artifacts=["out/*"], python=sys.executable)
    per = (size_mib << 20) // files
    (run / "code" / "out").mkdir()
    for i in range(files):
        (run / "code" / "out" / f"part{i}.bin").write_bytes(os.urandom(per))
    (run / "DONE").write_text("{}")
    m, _final = agent_manifest.build(RunPaths(str(run)))
    total = sum(e.size_bytes for e in m.live())
    dest = base / "dest"
    dest.mkdir()
    (dest / "manifest.json").write_bytes(m.to_json())
    transport = LocalTransport(str(box))
    listing = base / "files-from"
    listing.write_bytes(b"".join(e.path.encode() + b"\0" for e in m.live()))
    opts = pull.PullOptions(bwlimit_kbps=max(4000, size_mib * 1024 // 8))  # about 8 s for the whole tree
    proc = subprocess.Popen(pull.rsync_argv(transport, str(run), str(dest), str(listing), opts),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while local_bytes(dest) < total // 2 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    kept = local_bytes(dest) - (dest / "manifest.json").stat().st_size
    remaining = total - kept
    rec = RunRecord(run_id="bench", host="local", root=str(box), python=sys.executable)
    argv = [sys.executable, "-I", build_archive(base / "pyz")]
    res = pull.pull_round(transport, rec, str(dest), pull.PullOptions(), argv, lambda s: None)
    if not res.report.ok:
        raise SystemExit(f"the resumed pull did not verify: {res.report.problems[:3]}")
    return remaining, res.data_bytes, res.data_bytes / max(remaining, 1)


def best_of(n: int, fn) -> float:
    """The fastest of ``n`` timed calls."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def hashing_ratio(tree: Path) -> tuple[float, float, float]:
    """(sha256sum s, rgt verify hashing s, ratio) over every file of ``tree``."""
    files = sorted(str(p) for p in tree.rglob("*") if p.is_file())
    rels = [os.path.relpath(f, tree) for f in files]
    sizes = {r: os.path.getsize(os.path.join(tree, r)) for r in rels}
    sha256sum = shutil.which("sha256sum")
    if sha256sum is None:
        raise SystemExit("sha256sum is not installed")

    def baseline() -> None:
        subprocess.run([sha256sum, *files], check=True, stdout=subprocess.DEVNULL)

    def ours() -> None:
        verify.hash_files(str(tree), rels, sizes)

    baseline()
    ours()  # both read from the page cache from here on
    b, o = best_of(3, baseline), best_of(3, ours)
    return b, o, o / b


def main() -> int:
    """Run both measurements and print the ratios."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="64 MiB instead of 256 MiB")
    p.add_argument("--size-mib", type=int, default=None)
    p.add_argument("--files", type=int, default=4)
    p.add_argument("--dir", default=None, help="where the temp trees go (default: the system temp dir)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    a = p.parse_args()
    size = a.size_mib or (64 if a.quick else 256)
    base = Path(tempfile.mkdtemp(prefix="rgt-bench-pull-", dir=a.dir))
    try:
        remaining, resent, ratio = resume_ratio(base, size, a.files)
        over_pct = (ratio - 1.0) * 100.0
        print(f"resume after a cut at 50%: {remaining:,} bytes were missing, rsync moved {resent:,} "
              f"-> ratio {ratio:.4f} ({over_pct:+.2f}% beyond the remainder; goal <= +1%)")
        b, o, hr = hashing_ratio(base / "dest" / "code")
        print(f"hashing {size} MiB: sha256sum {b:.3f}s, rgt verify {o:.3f}s ({os.cpu_count()} cores) "
              f"-> ratio {hr:.2f}x (goal <= 1.2x)")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    missed = over_pct > 1.0 or hr > 1.2
    if missed:
        print("GOAL MISSED")
    return 1 if a.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
