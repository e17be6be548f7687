"""Turn benchmarks/results.json into docs/benchmarks.md and docs/benchmarks.png.

``python benchmarks/report.py`` re-renders from the last results without re-running.
MB/s everywhere is the image's size (apparent, 10^6 bytes) divided by the median wall time.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MB = 1e6
MIB = 1 << 20
PEERS = ("restic", "borg", "casync")


def med(rec: dict | None, key: str) -> float | None:
    vals = (rec or {}).get(key)
    return statistics.median(vals) if vals else None


def fmt(v: float | None, nd: int = 0, unit: str = "") -> str:
    return "n/a" if v is None else f"{v:,.{nd}f}{unit}"


def rates(raw: dict, image: str, size_key: str) -> dict[str, dict[str, float | None]]:
    """Per tool: MB/s of full, incr, restore; check seconds; bytes; RSS."""
    size = raw["images"][size_key]["size"]
    out = {}
    for tool, rec in raw["results"].get(image, {}).items():
        def mbps(k: str) -> float | None:
            s = med(rec, k)
            return size / s / MB if s else None
        rss = max((max(v) for k, v in rec.items() if k.endswith("_rss")), default=None)
        out[tool] = dict(full=mbps("full_s"), incr=mbps("incr_s"), restore=mbps("restore_s"),
                         check=med(rec, "check_s"), repo_full=med(rec, "repo_full"),
                         repo_incr=med(rec, "repo_incr"), rss=rss,
                         full_inner=med(rec, "full_inner_s"), incr_inner=med(rec, "incr_inner_s"))
    return out


def best_peer(r: dict, key: str, low: bool = False) -> tuple[str | None, float | None]:
    vals = [(t, r[t][key]) for t in PEERS if t in r and r[t][key] is not None]
    if not vals:
        return None, None
    return (min if low else max)(vals, key=lambda x: x[1])


def table(r: dict, steps: list[tuple[str, str, str]]) -> list[str]:
    head = "| tool | " + " | ".join(h for _, h, _ in steps) + " |"
    lines = [head, "|" + "---|" * (len(steps) + 1)]
    for tool in ["diskvault", *PEERS]:
        if tool not in r:
            continue
        cells = []
        for key, _, kind in steps:
            v = r[tool][key]
            if kind == "rate":
                cells.append(fmt(v))
            elif kind == "s":
                cells.append(fmt(v, 1, " s"))
            elif kind == "mb":
                cells.append(fmt(None if v is None else v / MB, 1))
            elif kind == "mib":
                cells.append(fmt(None if v is None else v / MIB))
        lines.append(f"| {tool} | " + " | ".join(cells) + " |")
    cells = []
    for key, _, kind in steps:
        low = kind != "rate"
        peer, pv = best_peer(r, key, low=low)
        ours = r.get("diskvault", {}).get(key)
        if peer is None or ours is None or not pv or not ours:
            cells.append("n/a")
        elif kind in ("rate",):
            cells.append(f"**{ours / pv:.2f}×** ({peer})")
        elif kind == "s":
            cells.append(f"**{pv / ours:.2f}×** ({peer})")
        else:
            cells.append(f"{ours / pv:.2f} ({peer})")
    lines.append("| diskvault vs best peer | " + " | ".join(cells) + " |")
    return lines


def widened_section(raw: dict) -> list[str]:
    """Per image of the widened set: the series' table, then one goals table over all images."""
    names = [w["name"] for w in raw.get("widened") or []]
    if not names:
        return []
    L: list[str] = []
    a = L.append
    bound = raw.get("write_bound") or {}
    a("## Widened set: every image, full, incremental, restore")
    a("")
    a("Each image and its changed copy (benchmarks/images.py, `widened`); no data check here (it runs on ext4). "
      "Ratios as in the ext4 table.")
    a("")
    summary = []
    for name in ["ext4", "ntfs", "vm", *names]:
        if name not in raw["results"] or not raw["results"][name]:
            continue
        r = rates(raw, name, name)
        if name in names:
            a(f"### {name}")
            a("")
            L += table(r, [("full", "full MB/s", "rate"), ("incr", "incremental MB/s", "rate"),
                           ("restore", "restore MB/s", "rate"), ("repo_full", "repo after full (MB)", "mb"),
                           ("repo_incr", "added by incremental (MB)", "mb"), ("rss", "peak RSS (MiB)", "mib")])
            a("")
        us = r.get("diskvault", {})
        row = [name]
        for key in ("full", "incr", "restore"):
            peer, pv = best_peer(r, key)
            ours = us.get(key)
            row.append(f"{ours / pv:.2f}× ({peer})" if ours and pv else "n/a")
            if key == "full":  # the libraries alone on this image: can 2x the peer be reached at all?
                cs = med(raw["ceiling"], "full_s") if name == "ext4" else \
                    med(raw["ceiling"].get("images", {}).get(name, {}), "full_s")
                cm = raw["images"][name]["size"] / cs / MB if cs else None
                row.append(f"{cm:,.0f} = {cm / pv:.2f}× ({ours / cm:.0%})" if cm and pv and ours else "n/a")
        fb = bound.get("fsync_MBps")
        row.append(f"{us['restore'] / fb:.0%}" if us.get("restore") and fb else "n/a")
        rr, ours = r.get("restic", {}).get("repo_full"), us.get("repo_full")
        row.append(f"{ours / MB:.1f} / {rr / MB:.1f} = {ours / rr:.3f}" if ours and rr else "n/a")
        row.append(fmt(us.get("rss") and us["rss"] / MIB))
        summary.append(row)
    if bound:
        a(f"Write bound of this machine (`dd` of {bound['bytes'] / MIB:,.0f} MiB from /dev/zero, 8 MiB blocks): "
          f"**{bound['fsync_MBps']:,.0f} MB/s** to a file with `conv=fsync` (the disk), "
          f"{bound['cache_MBps']:,.0f} MB/s without (the page cache), and {bound['read_cached_MBps']:,.0f} MB/s "
          "reading it back to /dev/null. Restore writes and fsyncs the image (holes of a sparse image are not "
          "written), so the fsync figure is its bound; a ratio above 100% comes from holes and zero runs.")
        a("")
    a("### Goals per image (issue 18)")
    a("")
    a("| image | full vs best peer | full: ceiling MB/s = × best peer (diskvault's share) | incremental vs best peer "
      "| restore vs best peer | restore / write bound | repo after full: diskvault / restic (MB) | peak RSS (MiB) |")
    a("|---|---|---|---|---|---|---|---|")
    for row in summary:
        a("| " + " | ".join(row) + " |")
    a("")
    a("Goals: full, incremental and restore ≥ 2× the best peer (restore: or ≥ 80% of the write bound where that "
      "bound is below 2× the peer); repository after the full snapshot ≤ restic's; peak RSS ≤ 150 MiB.")
    a("")
    a("The full snapshot's **ceiling** on each image is benchmarks/ceiling.py: the libraries alone (FastCDC, "
      "blake3, zstd level 1 on every chunk, two threads) over the bytes diskvault reads (used blocks, all-zero "
      "windows skipped), no deduplication, no repository, no interpreter start-up: what no Python pipeline on "
      "this machine can beat with these libraries. Where it is below 2× the best peer the full-snapshot goal "
      "cannot be met here; the share in brackets is how much of it diskvault reaches (wall time, start-up, "
      "key derivation and `sync` included).")
    a("")
    return L


def codec_section() -> list[str]:
    path = HERE / "codecs.json"
    if not path.exists():
        return []
    c = json.loads(path.read_text())
    L: list[str] = []
    a = L.append
    a("## Codecs")
    a("")
    a(f"`benchmarks/codecs.py`: each image's unique non-zero chunks ({c['chunk_avg'] >> 10} KiB average, up to "
      f"{c['sample'] / MB:,.0f} MB per image, spread over it), compressed one by one as diskvault stores them "
      "(raw when the codec saves less than 1/16), on one thread; zstd without multithreading. MB/s is raw bytes per "
      "CPU second of that thread (**per core**), best of its passes; stored is the share of the raw bytes.")
    a("")
    imgs = list(c["images"])
    a("| codec | " + " | ".join(f"{n}: stored / compress / decompress" for n in imgs) + " |")
    a("|---|" + "---|" * len(imgs))
    for i, row in enumerate(c["images"][imgs[0]]):
        cells = []
        for n in imgs:
            r = c["images"][n][i]
            cells.append(f"{r['ratio']:.1%} / {r['compress_MBps']:,.0f} / {r['decompress_MBps']:,.0f}")
        a(f"| {row['codec']} | " + " | ".join(cells) + " |")
    a("")
    a("The default (`--compression auto`) is zstd level 1 for data that is mostly new (a first image) and level 3 "
      "for an incremental's few new chunks; docs/design.md (\"Which codec\") gives the reasons. Compare the "
      "stored shares with the repository sizes of restic in the tables above.")
    a("")
    return L


def write(raw: dict, docs: Path) -> None:
    docs.mkdir(parents=True, exist_ok=True)
    ext4 = rates(raw, "ext4", "ext4")
    ntfs = rates(raw, "ntfs", "ntfs") if "ntfs" in raw["images"] else {}
    vm = rates(raw, "vm", "vm")
    ceil = raw["ceiling"]
    size = raw["images"]["ext4"]["size"]
    c_full = size / med(ceil, "full_s") / MB
    c_incr = raw["images"]["ext4 changed"]["size"] / med(ceil, "incr_s") / MB
    us = ext4.get("diskvault", {})
    L: list[str] = []
    a = L.append
    a("# Benchmarks: diskvault vs restic, borg and casync")
    a("")
    a(f"Generated by `make bench` (benchmarks/bench.py) on {raw['date']}. Machine: {raw['machine']}.")
    a("Versions: " + ", ".join(f"{k} {v}" for k, v in raw["versions"].items()) + ".")
    a("")
    a("How it was measured:")
    a("")
    a(f"- {raw['reps']} repetitions; in each, every tool runs in turn (order rotated) with a fresh repository; "
      "the figures are **medians**. The machine is shared (2 cores, other jobs running), so single runs vary; "
      "the raw values of every repetition are in `benchmarks/results.json`.")
    a("- Wall time of the command **plus `sync`** (so every tool's data is on disk when the clock stops; "
      "diskvault fsyncs itself, the peers mostly do not). MB/s = image size (apparent, 10^6 B) / seconds.")
    a("- Page cache: warm for all tools alike (the image is read once before each snapshot; repositories "
      "were just written). Caches are not dropped because the machine is shared.")
    a("- Restores are checked bit-identical (blake3 of the whole image) in the first repetition.")
    a("- Settings: " + "; ".join(f"{k}: {v}" for k, v in raw["settings"].items()) + ".")
    a(f"- diskvault check: {raw['check_label']}. restic: `check --read-data`; borg: `check --verify-data`; "
      "casync: none (n/a).")
    a("")
    a("Images (real files from this machine's /usr):")
    a("")
    for k, v in raw["images"].items():
        a(f"- **{k}**: {v['size'] / MIB:,.0f} MiB, {v['allocated'] / MIB:,.0f} MiB allocated (`{v['path']}`)")
    if raw.get("huge"):
        h = raw["huge"]
        a(f"- **huge** (diskvault only, for memory; the same data as vm): {h['size'] / MIB:,.0f} MiB sparse, "
          f"{h['allocated'] / MIB:,.0f} MiB allocated; full snapshot median {med(h, 'full_s'):.1f} s, "
          f"peak RSS {max(h['full_rss']) / MIB:.0f} MiB")
    a(f"- The change from ext4 to ext4 changed (debugfs -w): {raw['change']}.")
    for w in raw.get("widened") or []:
        a(f"- **{w['name']}** (widened set, scale {raw.get('scale')}): {w['desc']}; changed copy: {w['change']}.")
    for n in raw.get("notes", []):
        a(f"- {n}")
    a("")
    L += widened_section(raw)
    L += codec_section()
    a("## ext4 image: full, incremental, restore, check")
    a("")
    L += table(ext4, [("full", "full MB/s", "rate"), ("incr", "incremental MB/s", "rate"),
                      ("restore", "restore MB/s", "rate"), ("check", "data check", "s"),
                      ("repo_full", "repo after full (MB)", "mb"), ("repo_incr", "added by incremental (MB)", "mb"),
                      ("rss", "peak RSS (MiB)", "mib")])
    a("")
    a("Ratios: MB/s and check time as speed-up over the best peer (higher is better); bytes and RSS as "
      "diskvault / best peer (lower is better).")
    a("")
    for name, r in (("NTFS image", ntfs), ("sparse VM-style image", vm)):
        if not r:
            continue
        a(f"## {name}: full snapshot and restore")
        a("")
        L += table(r, [("full", "full MB/s", "rate"), ("restore", "restore MB/s", "rate"),
                       ("repo_full", "repo after full (MB)", "mb"), ("rss", "peak RSS (MiB)", "mib")])
        a("")
    a("## Ceiling and efficiency")
    a("")
    a("The ceiling is the libraries alone on 2 threads, no repository (benchmarks/ceiling.py): read with "
      "`preadv` into 8 MiB buffers, FastCDC, blake3 and the full snapshot's codec (zstd level 1) of every chunk "
      "(full); the same without compression "
      "(incremental: nearly nothing is new). Efficiency = diskvault / ceiling; *wall* includes Python start-up, "
      "catalog commit and `sync`, *in-process* is the snapshot's own `duration`. The ceiling cuts every byte; "
      "diskvault's incremental skips FastCDC wherever a chunk of the parent snapshot recurs (one blake3 pass "
      "confirms it, see docs/design.md), so it can come close to or pass the ceiling. The ceiling moves with the "
      "machine's speed, and the full snapshot's fixed costs (start-up, pack writes, catalog commits) weigh more on a "
      "fast day than on a slow one (benchmarks/notes.md, \"Run-to-run variation\").")
    a("")
    a("| step | ceiling MB/s | diskvault MB/s (wall) | efficiency (wall) | diskvault MB/s (in-process) | efficiency (in-process) |")
    a("|---|---|---|---|---|---|")
    eff = {}
    for step, c, key, inner in (("full", c_full, "full", "full_inner"), ("incremental", c_incr, "incr", "incr_inner")):
        ours = us.get(key)
        inner_s = us.get(inner)
        inner_rate = size / inner_s / MB if inner_s else None
        eff[step] = (ours / c if ours else None, inner_rate / c if inner_rate else None)
        a(f"| {step} | {c:,.0f} | {fmt(ours)} | {fmt(None if ours is None else 100 * ours / c)}% | "
          f"{fmt(inner_rate)} | {fmt(None if inner_rate is None else 100 * inner_rate / c)}% |")
    a("")
    a("## Goals (issues 3 and 18) on the ext4 image, from this run")
    a("")
    goals = []
    for key, label in (("full", "full snapshot"), ("incr", "incremental snapshot"), ("restore", "restore")):
        peer, pv = best_peer(ext4, key)
        ours = us.get(key)
        ok = bool(ours and pv and ours >= 2 * pv)
        goals.append((f"{label} ≥ 2× fastest peer", ok, f"{fmt(ours)} vs {peer} {fmt(pv)} MB/s = "
                      f"{ours / pv:.2f}×" if ours and pv else "n/a"))
    peer, pv = best_peer(ext4, "check", low=True)
    ours = us.get("check")
    goals.append(("data check ≥ 2× fastest peer", bool(ours and pv and pv >= 2 * ours),
                  f"{fmt(ours, 1)} s vs {peer} {fmt(pv, 1)} s = {pv / ours:.2f}×" if ours and pv else "n/a"))
    b = ext4.get("restic", {}).get("repo_full")
    ours = us.get("repo_full")
    goals.append(("repository after full ≤ restic (issue 18)", bool(ours and b and ours <= b),
                  f"{fmt(ours and ours / MB, 1)} vs {fmt(b and b / MB, 1)} MB"))
    rr = ext4.get("restic", {}).get("repo_incr")
    ours = us.get("repo_incr")
    goals.append(("bytes added by incremental ≤ restic", bool(ours is not None and rr and ours <= rr),
                  f"{fmt(ours and ours / MB, 1)} vs {fmt(rr and rr / MB, 1)} MB"))
    rss_all = [x.get("diskvault", {}).get("rss") for x in (ext4, ntfs, vm)]
    rss_all = [x for x in rss_all if x]
    goals.append(("peak RSS ≤ 150 MiB", bool(rss_all and max(rss_all) <= 150 * MIB),
                  f"max {fmt(max(rss_all) / MIB if rss_all else None)} MiB over all images"))
    huge = raw.get("huge") or {}
    if vm.get("diskvault") and huge.get("full_rss"):
        # The 64 GiB image holds the same data as the 8 GiB VM image (benchmarks/images.py):
        # any difference in memory comes from the image size alone. 5%: run-to-run noise.
        small, big = vm["diskvault"]["rss"], max(huge["full_rss"])
        one = ntfs.get("diskvault", {}).get("rss")
        goals.append((f"a {huge['size'] >> 30} GiB image needs no more memory than a smaller one", big <= small * 1.05,
                      f"{big / MIB:.0f} MiB for {huge['size'] >> 30} GiB vs {small / MIB:.0f} MiB for the "
                      f"{raw['images']['vm']['size'] >> 30} GiB image with the same data"
                      + (f" ({one / MIB:.0f} MiB for the 1 GiB NTFS image)" if one else "")
                      + " (peak RSS of the full snapshot)"))
    for step in ("full", "incremental"):
        w, i = eff[step]
        goals.append((f"{step} ≥ 70% of ceiling", bool(w and w >= 0.7),
                      f"wall {fmt(w and 100 * w)}%, in-process {fmt(i and 100 * i)}%"))
    a("| goal | met | measured |")
    a("|---|---|---|")
    for g, ok, m in goals:
        a(f"| {g} | {'yes' if ok else '**no**'} | {m} |")
    a("")
    if raw.get("chunk_study"):
        a("## Chunk size (average), measured on the ext4 images")
        a("")
        a("One repository per size: full snapshot of ext4, then the incremental of ext4 changed "
          "(median of the study's runs, wall time incl. start-up and sync). Catalog = catalog.sqlite (+WAL) "
          "after both.")
        a("")
        a("| average | full s | incremental s | repo after full (MB) | added by incremental (MB) | catalog (MB) | chunks | peak RSS (MiB) |")
        a("|---|---|---|---|---|---|---|---|")
        for row in raw["chunk_study"]:
            a(f"| {row['avg']} | {row['full_s']:.2f} | {row['incr_s']:.2f} | {row['repo_full'] / MB:.1f} | "
              f"{row['incr_added'] / MB:.1f} | {row['catalog'] / MB:.2f} | {int(row['chunks']):,} | {row['rss'] / MIB:.0f} |")
        a("")

    nbd = HERE / "nbd.json"
    if nbd.exists():
        n = json.loads(nbd.read_text())
        a("## Instant access: NBD sequential read vs restore")
        a("")
        a(f"`benchmarks/nbd_throughput.py`: a {n['size_bytes'] >> 20} MiB snapshot (3/4 incompressible, 1/8 text, "
          f"1/8 zeros), medians of {n['runs']} alternating runs; `nbdcopy nbd://127.0.0.1:PORT/latest null:` "
          f"against `diskvault serve`, and `diskvault restore` to `{n['restore_target']}` (verify only).")
        a("")
        a("| path | seconds | MB/s |")
        a("|---|---|---|")
        a(f"| nbdcopy through `diskvault serve` | {n['nbdcopy_s']:.2f} | {n['nbdcopy_MBps']:,} |")
        a(f"| restore (wall, with interpreter start-up) | {n['restore_wall_s']:.2f} | {n['restore_wall_MBps']:,} |")
        a(f"| restore (its own duration) | {n['restore_s']:.2f} | {n['restore_MBps']:,} |")
        a("")
        a(f"NBD / restore: **{n['nbd_vs_restore_wall']:.2f}×** against restore's wall time, "
          f"**{n['nbd_vs_restore']:.2f}×** against its own duration (goal: ≥ 0.70×).")
        a("")
    integ = HERE / "integrity.json"
    if integ.exists():
        c = json.loads(integ.read_text())
        a("## check --read-data vs restore to /dev/null")
        a("")
        a(f"`benchmarks/integrity.py`: a {c['size_mib']} MiB image (half random, half compressible, 1/16 zeros), "
          f"best of {c['runs']} alternating runs, wall time.")
        a("")
        a("| command | seconds |")
        a("|---|---|")
        a(f"| `restore latest /dev/null` | {c['restore_devnull_s']:.2f} |")
        a(f"| `check --read-data` | {c['check_read_data_s']:.2f} |")
        a("")
        a(f"check speed / restore speed: **{c['check_vs_restore']:.0%}** (goal: ≥ 80%).")
        a("")
    delta = HERE / "delta.json"
    if delta.exists():
        d = json.loads(delta.read_text())
        a("## Delta restore vs full restore (rolling a disk back)")
        a("")
        a(f"`benchmarks/delta_restore.py`: the {d['image_mib']} MiB ext4 image's snapshot restored onto a fully "
          f"allocated copy of the changed image ({d['change']}), page cache dropped before each run"
          f"{'' if d['page_cache_dropped'] else ' (not root: caches warm)'}, best of {d['runs']} alternating runs, "
          "wall time of the whole command; the result is compared with `cmp`.")
        a("")
        a("| restore onto the same target | seconds | bytes written (`/proc/PID/io`) |")
        a("|---|---|---|")
        a(f"| `--no-delta` (writes everything) | {d['full_restore_s']:.2f} | {d['full_written_bytes'] / 1e6:.1f} MB |")
        a(f"| `--delta` (reads, writes what differs) | {d['delta_restore_s']:.2f} | {d['delta_written_bytes'] / 1e6:.1f} MB |")
        a("")
        a(f"Delta / full wall time: **{d['delta_vs_full_time']:.0%}** (goal, issue 16: ≤ 40%). The delta run read "
          f"{d['delta_bytes_read_target'] / 1e6:.0f} MB of the target, found {d['delta_chunks_unchanged']} chunks "
          f"already right and reported `bytes_written` {d['delta_json_bytes_written'] / 1e6:.2f} MB of chunks in its "
          f"`--json`; the rest of its write_bytes is what punching holes costs where the snapshot holds zeros and "
          f"the fully allocated target did not (`bytes_zeroed` {d.get('delta_json_bytes_zeroed', 0) / 1e6:.0f} MB "
          "made holes: partial blocks at their edges and metadata are written, the zeros are not).")
        a("")
    L.extend(encryption_section())
    L.extend(remote_section())
    rescue = HERE / "rescue.json"
    if rescue.exists():
        r = json.loads(rescue.read_text())
        a("## Rescue media (QEMU TCG, OVMF)")
        a("")
        a("`tests/rescue/test_rescue.py` with `DISKVAULT_RECORD_FIGURES=1`: one 1-vCPU guest, 768 MiB, "
          "no KVM (full emulation, 10-50x slower than the host), on this shared 2-core machine.")
        a("")
        a("| what | value |")
        a("|---|---|")
        a(f"| rescue image (`rescue build`, default size) | {r['image_bytes'] / MIB:.0f} MiB |")
        a(f"| initramfs (zstd) | {r['initramfs_bytes'] / MIB:.1f} MiB |")
        a(f"| diskvault executable (Python and dependencies, unpacked) | {r['executable_bytes'] / MIB:.0f} MiB |")
        a(f"| power-on to menu | {r['boot_to_menu_seconds']:.0f} s |")
        a(f"| `diskvault --version` in the guest | {r['version_seconds_in_vm']:.1f} s |")
        a(f"| unattended restore of a 128 MiB disk, verify, power off (from power-on) | "
          f"{r['unattended_restore_seconds']:.0f} s |")
        a("")
    a("![MB/s per tool and step](benchmarks.png)")
    a("")
    notes = HERE / "notes.md"
    if notes.exists():
        a(notes.read_text().strip())
        a("")
    (docs / "benchmarks.md").write_text("\n".join(L) + "\n")
    chart(raw, ext4, ntfs, vm, docs / "benchmarks.png")


def remote_section() -> list[str]:
    """A repository on SeaweedFS (loopback) against one on the local disk (benchmarks/remote.py),
    with the issue 14 goals (snapshot and restore at >= 70% of the local speed, memory flat)."""
    path = HERE / "remote.json"
    if not path.exists():
        return []
    r = json.loads(path.read_text())
    size = r["image"]["size"]
    res = r["results"]
    out = ["## Remote repository: S3 against the local disk (issue 14)", "",
           f"{r['date']}, {r['machine']}; median of {r['reps']} runs, order alternated; the ext4 image "
           f"({size / MIB:,.0f} MiB, {r['image']['allocated'] / MIB:,.0f} MiB allocated) and its changed copy "
           f"({r['change']}), each into a new encrypted repository: a local directory, and a prefix of a bucket on "
           f"{r['server']} started on this machine" + (f" with {r['volume_mb']} MiB volumes" if r.get("volume_mb") else "")
           + " (loopback: the server shares the 2 cores). Wall time plus "
           "sync; restores verified. Produced by `benchmarks/remote.py` (part of `make bench`).", "",
           "| step | local MB/s | S3 MB/s | S3 / local | local peak RSS (MiB) | S3 peak RSS (MiB) | goal |",
           "|---|---:|---:|---:|---:|---:|---|"]
    for name, key in (("full snapshot", "full"), ("incremental", "incr"), ("restore", "restore")):
        loc, s3 = med(res["local"], f"{key}_s"), med(res["s3"], f"{key}_s")
        if loc is None or s3 is None:
            continue
        ratio = loc / s3
        goal = "n/a" if key == "incr" else ("met" if ratio >= 0.7 else "NOT met")
        out.append(f"| {name} | {size / loc / MB:,.0f} | {size / s3 / MB:,.0f} | {ratio:.0%} | "
                   f"{med(res['local'], f'{key}_rss') / MIB:.0f} | {med(res['s3'], f'{key}_rss') / MIB:.0f} | {goal} |")
    out += ["", "Goal (issue 14): snapshot and restore to SeaweedFS on loopback at least 70% of the local speed, "
            "memory flat (docs/remote.md explains what bounds it here).", ""]
    return out


def encryption_section() -> list[str]:
    """The cost of encryption (benchmarks/encryption.py): diskvault encrypted vs --encryption
    none vs restic on the ext4 pair, with the issue 13 goals (>= 2x restic, <= 10% slower than none)."""
    path = HERE / "encryption.json"
    if not path.exists():
        return []
    e = json.loads(path.read_text())
    size = e["image"]["size"]
    res = e["results"]

    def speed(tool: str, key: str) -> float | None:  # MB/s, or for check seconds
        s = med(res.get(tool), key)
        return None if s is None else (s if key == "check_s" else size / s / MB)

    out = ["## Encryption (issue 13)", "",
           f"{e['date']}, {e['machine']}; median of {e['reps']} runs, order rotated; the ext4 image "
           f"({size / MIB:,.0f} MiB, {e['image']['allocated'] / MIB:,.0f} MiB allocated) and its copy changed "
           f"in place ({e['change']}). `diskvault` is the default (AES-256-GCM, keyed ids, seeded chunker, "
           "Argon2id key file: every command derives one key, ~0.15 s of CPU, started while the program loads "
           "(docs/design.md, \"Deriving ahead\"): ~0.03 s of its wall time); `diskvault-none` the same with "
           f"`init --encryption none`; restic {e['versions'].get('restic', '?')} always encrypts. Produced by `benchmarks/encryption.py` "
           "(part of `make bench`).", "",
           "| step | diskvault | diskvault-none | restic | encrypted / none | encrypted / restic | goals |",
           "|---|---:|---:|---:|---:|---:|---|"]
    for name, key in (("full snapshot (MB/s)", "full_s"), ("incremental (MB/s)", "incr_s"),
                      ("restore (MB/s)", "restore_s"), ("check --read-data (s)", "check_s")):
        enc, none, restic = speed("diskvault", key), speed("diskvault-none", key), speed("restic", key)
        if None in (enc, none, restic):
            continue
        if key == "check_s":  # seconds: lower is better
            vs_none, vs_restic = enc / none, restic / enc
            cells = [f"{enc:.2f}", f"{none:.2f}", f"{restic:.2f}", f"{vs_none:.2f}x the time", f"{vs_restic:.2f}x"]
            ok = vs_restic >= 2 and vs_none <= 1.10
        else:
            vs_none, vs_restic = enc / none, enc / restic
            cells = [f"{enc:,.0f}", f"{none:,.0f}", f"{restic:,.0f}", f"{vs_none:.0%}", f"{vs_restic:.2f}x"]
            ok = vs_restic >= 2 and vs_none >= 1 / 1.10
        out.append(f"| {name} | " + " | ".join(cells) + f" | {'met' if ok else 'NOT met'} |")
    repo = {t: med(res.get(t), "repo_full") for t in TOOLS_ENC}
    if all(repo.values()):
        out += ["", f"Repository after the full snapshot: diskvault {repo['diskvault'] / MB:,.1f} MB, "
                f"diskvault-none {repo['diskvault-none'] / MB:,.1f} MB (the tags: 16 B per blob and per pack), "
                f"restic {repo['restic'] / MB:,.1f} MB."]
    out += ["", "Goals: every step at least 2x restic, and the encrypted repository at most 10% slower than "
            "`--encryption none` (for check: at most 1.10x its time).", ""]
    return out


TOOLS_ENC = ("diskvault", "diskvault-none", "restic")


def chart(raw: dict, ext4: dict, ntfs: dict, vm: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [("ext4 full", ext4, "full"), ("ext4 incremental", ext4, "incr"), ("ext4 restore", ext4, "restore")]
    if ntfs:
        groups += [("NTFS full", ntfs, "full"), ("NTFS restore", ntfs, "restore")]
    groups += [("VM full", vm, "full"), ("VM restore", vm, "restore")]
    tools = [t for t in ("diskvault", *PEERS) if t in ext4]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [4, 1]})
    width = 0.8 / len(tools)
    for i, t in enumerate(tools):
        vals = [(g[1].get(t, {}).get(g[2]) or 0) for g in groups]
        ax.bar([x + i * width for x in range(len(groups))], vals, width, label=t)
    ax.set_xticks([x + width * (len(tools) - 1) / 2 for x in range(len(groups))])
    ax.set_xticklabels([g[0] for g in groups], rotation=20, ha="right")
    ax.set_ylabel("MB/s (image size / wall time), higher is better")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title(f"median of {raw['reps']} runs, {raw['date'][:10]}")
    checks = [(t, ext4[t]["check"]) for t in tools if ext4[t].get("check")]
    ax2.bar([c[0] for c in checks], [c[1] for c in checks], color=[f"C{tools.index(c[0])}" for c in checks])
    ax2.set_ylabel("seconds, lower is better")
    ax2.set_title("ext4 data-verifying check")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raw = json.loads((HERE / "results.json").read_text())
    write(raw, Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parent / "docs")
