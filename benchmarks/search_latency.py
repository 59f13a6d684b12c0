"""Search latency on the indexed sample videos, without re-ranking and with each re-ranker.

Times (wall clock, and CPU time of the process, which drifts less on a shared machine) the whole
``Searcher.search`` (text encode + stage-1 vector search + stage-2 re-rank + boxes), exactly
as the CLI and the HTTP API call it, for text queries at each level. Models load before timing (their load
time is printed separately). The sample clips (flower.webm, test.avi, book.mkv; 16 frames at 1 fps) give 5
segments, 16 frames and 16 tracks, so a query re-ranks up to that many candidates (k=10 over-fetches 50).

Re-ranker weights: ``--vilt``/``--blip-itm`` name real checkpoints (hub id or local dir). Without them, the
production architectures (ViLT-B/32 at 384 px; BLIP base: ViT-B/16 at 384 px + BERT-base) are built with
random weights and saved to a temp dir, which costs the same compute as trained weights. ``--size tiny``
uses the tests' tiny models instead.

    python benchmarks/search_latency.py                          # tiny encoder index, production-size rerankers
    python benchmarks/search_latency.py --encoder production     # ViT-B-32 encoder (random weights) as well
    python benchmarks/search_latency.py --db DIR --config tiny   # an existing index
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import PRODUCTION_RANDOM, RANDOM_BOXES, clip, header, pct, table

QUERIES = [
    "a person reading a book",
    "a red flower moving in the wind",
    "someone putting on make-up",
    "a woman in a yellow jacket",
    "close-up of a face",
    "green leaves",
    "a hand near the camera",
    "an office with a window",
]
SAMPLES = ["mdn/flower.webm", "mmaction2/test.avi", "intel_sample_videos/asl_gestures/book.mkv"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted({w for q in QUERIES for w in q.split()})]


def random_checkpoints(folder: Path, size: str) -> dict[str, str]:
    """ViLT-retrieval and BLIP-ITM models with random weights, saved with their processors."""
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForImageTextRetrieval,
        BlipImageProcessor,
        BlipProcessor,
        ViltConfig,
        ViltForImageAndTextRetrieval,
        ViltImageProcessor,
        ViltProcessor,
    )

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tok = BertTokenizer(str(folder / "vocab.txt"))
    torch.manual_seed(0)
    if size == "production":  # the configs' defaults are the released base architectures
        vilt_cfg, vilt_px = ViltConfig(), {"shortest_edge": 384}
        blip_cfg, blip_px = BlipConfig(), {"height": 384, "width": 384}
    else:
        small: dict[str, Any] = {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 37,
        }
        vilt_cfg = ViltConfig(image_size=64, patch_size=16, max_position_embeddings=40, **small)
        vilt_px = {"shortest_edge": 64}
        blip_cfg = BlipConfig(
            text_config={**small, "max_position_embeddings": 64},
            vision_config={**small, "image_size": 64, "patch_size": 16},
            projection_dim=16,
            image_text_hidden_size=16,
        )
        blip_px = {"height": 64, "width": 64}
    models = {
        "vilt": (ViltForImageAndTextRetrieval(vilt_cfg), ViltProcessor(ViltImageProcessor(size=vilt_px), tok)),
        "blip-itm": (BlipForImageTextRetrieval(blip_cfg), BlipProcessor(BlipImageProcessor(size=blip_px), tok)),
    }
    out = {}
    for name, (model, processor) in models.items():
        out[name] = str(folder / name)
        model.save_pretrained(out[name])
        processor.save_pretrained(out[name])
    return out


def index_samples(db: Path, config: str, overrides: list[str]) -> None:
    import ray

    from pipeline.config import load_config
    from pipeline.index.runner import run_index

    videos = db.parent / "videos"
    videos.mkdir(exist_ok=True)
    for rel in SAMPLES:
        shutil.copy(clip(rel), videos / Path(rel).name)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        summary = run_index(load_config(config, [f"db.path={db}", *overrides]), [str(videos)], progress=False)
    finally:
        ray.shutdown()
    print(f"# indexed: {summary.text().splitlines()[1]}; {summary.text().splitlines()[2]}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", help="an existing index of the sample videos (default: index them into a temp dir)")
    ap.add_argument("--config", default="tiny", help="config the index was built with (tiny or default)")
    ap.add_argument("--encoder", choices=["tiny", "production"], default="tiny",
                    help="production: index with ViT-B-32 (random weights) and configs/default.yaml")  # fmt: skip
    ap.add_argument("--size", choices=["production", "tiny"], default="production", help="random re-ranker size")
    ap.add_argument("--vilt", help="ViLT retrieval checkpoint (hub id or directory) instead of random weights")
    ap.add_argument("--blip-itm", dest="blip", help="BLIP ITM checkpoint instead of random weights")
    ap.add_argument("--levels", nargs="+", default=["segments", "frames"])
    ap.add_argument("--rerankers", nargs="+", default=["none", "attention", "vilt", "blip-itm"])
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3, help="passes over the query list (after one warm-up pass)")
    ap.add_argument("--device", default="cpu", help="device of the re-rankers (cpu, cuda, auto)")
    args = ap.parse_args()
    header("search latency on the sample videos, per re-ranker")

    from pipeline.config import load_config
    from pipeline.search.searcher import Searcher

    work = Path(tempfile.mkdtemp(prefix="vidsearch-latency-"))
    try:
        config, overrides = args.config, []
        if args.encoder == "production":
            config, overrides = "default", [*PRODUCTION_RANDOM, *RANDOM_BOXES, "encoder.device=cpu"]
        db = Path(args.db) if args.db else work / "db"
        if not args.db:
            index_samples(db, config, overrides)
        ckpts = random_checkpoints(work / "ckpt", args.size) if not (args.vilt and args.blip) else {}
        ckpts.update({k: v for k, v in {"vilt": args.vilt, "blip-itm": args.blip}.items() if v})
        for name, path in ckpts.items():
            overrides += [f"search.rerankers.{name}.checkpoint={path}", f"search.rerankers.{name}.device={args.device}"]
        cfg = load_config(config, [f"db.path={db}", *overrides])
        searcher = Searcher(str(db), cfg)
        print(f"# rerankers: {'random ' + args.size if not (args.vilt and args.blip) else ''} {ckpts}", flush=True)

        rows = []
        for name in args.rerankers:
            rerank = None if name == "none" else name
            t0 = time.perf_counter()
            searcher.search(text=QUERIES[0], k=args.k, rerank=rerank)  # loads the encoder / re-ranker
            load_s = time.perf_counter() - t0
            for level in args.levels:
                for q in QUERIES:  # warm-up pass
                    n = len(searcher.search(text=q, k=args.k, level=level, rerank=rerank))
                times, cpu = [], []
                for _ in range(args.repeats):
                    for q in QUERIES:
                        t0, c0 = time.perf_counter(), time.process_time()
                        searcher.search(text=q, k=args.k, level=level, rerank=rerank)
                        times.append(1000 * (time.perf_counter() - t0))
                        cpu.append(1000 * (time.process_time() - c0))
                rows.append(
                    {
                        "rerank": name,
                        "level": level,
                        "results": n,
                        "re-ranked": min(searcher.store.count(level), args.k * cfg.search.overfetch) if rerank else 0,
                        "queries": len(times),
                        "p50 ms": pct(times, 50),
                        "p95 ms": pct(times, 95),
                        "cpu p50 ms": pct(cpu, 50),  # CPU time of this process (all threads): steadier when shared
                        "first call s": load_s,
                    }
                )
                print(table(rows[-1:]).splitlines()[-1], flush=True)
        print()
        print(table(rows, floatfmt=".1f"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
