"""``metaphi data omniglot|sib200|udhr|fewrel``: fetch (optionally) and validate a dataset, then
report it (Omniglot is also decoded into its cache)."""
from __future__ import annotations

import argparse
import time

from .omniglot import OmniglotError, load_omniglot, omniglot_dir, read_split


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``data`` subcommand."""
    p = subparsers.add_parser(
        "data", help="prepare a dataset: download, validate, decode into the cache",
        description="Prepare a dataset so that runs start in seconds: optionally download the "
                    "official archives (checksum-verified), validate the layout and every image, "
                    "and decode the images once into the cache.")
    p.add_argument("dataset", choices=["omniglot", *TEXT_SETS], help="which dataset")
    p.add_argument("--root", default=None,
                   help="the dataset's folder (or a data folder holding omniglot/, sib200/, "
                        "udhr2/ or fewrel/); default $METAPHI_DATA/<dataset>")
    p.add_argument("--download", action="store_true", help="fetch missing archives")
    p.add_argument("--extract", action="store_true",
                   help="also unpack the downloaded archives (the loader reads the zips directly)")
    p.add_argument("--cache-dir", default=None,
                   help="where to write the decoded cache (default: <omniglot folder>/cache if "
                        "an existing writable folder, else $METAPHI_CACHE or ~/.cache/metaphi)")
    p.add_argument("--image-size", type=int, default=28, help="cached image size in pixels")
    p.add_argument("--partial", action="store_true",
                   help="accept a subset of the alphabets (each character still needs all 20 "
                        "drawings)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Prepare a dataset and print what was found. A data problem raises an error naming what
    is wrong (``metaphi`` prints it as one line, exit code 2)."""
    from .omniglot import download_omniglot

    if args.dataset in TEXT_SETS:
        return run_text(args)
    if args.image_size < 1:
        raise OmniglotError(f"--image-size must be >= 1, got {args.image_size}")
    folder = omniglot_dir(args.root)
    if args.download:
        download_omniglot(folder, extract=args.extract)
    t0 = time.perf_counter()
    im = load_omniglot(folder, cache_dir=args.cache_dir, strict=not args.partial,
                       image_size=args.image_size)
    seconds = time.perf_counter() - t0
    alphabets = len({c.split("/")[0] for c in im.characters})
    how = "loaded from cache" if im.from_cache else "decoded"
    print(f"Omniglot in {im.folder}: {alphabets} alphabets, {im.n_characters} characters, "
          f"{len(im.images)} images at {args.image_size}x{args.image_size} "
          f"({how} in {seconds:.2f} s)")
    print(f"cache: {im.cache_path}")
    try:
        sizes = {w: len(read_split("vinyals", w, im.folder)) for w in ("train", "val", "test")}
        print("Vinyals split (rotated-character classes): " +
              ", ".join(f"{w} {n}" for w, n in sizes.items()))
    except OmniglotError as e:
        print(f"Vinyals split unavailable: {e}")
    return 0


TEXT_SETS = ("sib200", "udhr", "fewrel")


def run_text(args: argparse.Namespace) -> int:
    """Fetch (with ``--download``) and fully validate a text dataset; report its size."""
    t0 = time.perf_counter()
    if args.dataset == "sib200":
        from .sib200 import download_sib200, read_sib200

        if args.download:
            download_sib200(args.root)
        rows = read_sib200(args.root)
        langs = {lang for lang, _ in rows}
        summary = (f"SIB-200: {len(langs)} languages, {sum(map(len, rows.values()))} "
                   "sentences (train/dev/test), every file matches its SHA-256")
    elif args.dataset == "udhr":
        from .udhr import download_udhr, read_udhr

        if args.download:
            download_udhr(args.root)
        texts = read_udhr(args.root)
        summary = f"UDHR: {len(texts)} language files, zip checksum verified"
    else:
        from .fewrel import download_fewrel, read_fewrel

        if args.download:
            download_fewrel(args.root)
        data = read_fewrel(args.root)
        summary = "FewRel: " + ", ".join(
            f"{d} {len(r)} relations / {sum(map(len, r.values()))} instances"
            for d, r in data.items())
    print(f"{summary} ({time.perf_counter() - t0:.1f} s)")
    return 0
