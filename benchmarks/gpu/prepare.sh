#!/usr/bin/env bash
# Run HERE (a machine with the package registries), from the repository root, before a session's
# accelerator check: puts what the bare GPU machine lacks into two git-ignored folders that the
# `device` tool carries along (see benchmarks/gpu/README.md).
#   .whl/   pydantic's wheels for the GPU image's Python 3.12 (it has torch, numpy, tqdm,
#           matplotlib, pillow, pyyaml, pytest, but not pydantic)
#   .data/  the Omniglot zips and the decoded 28x28 cache (about 40 MB), so nothing is decoded there
#   .gpu_run/  a copy of benchmarks/_work/omniglot_gpu, the MAML run so far, if there is one
set -euo pipefail
DATA=${METAPHI_DATA:-../shared/data}
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
mkdir -p .data/omniglot/cache
cp "$DATA"/omniglot/images_*.zip .data/omniglot/
cp -r "$DATA"/omniglot/splits .data/omniglot/ 2>/dev/null || true
# the decoded cache is keyed by the archives' content, so a copy of this machine's is valid there;
# the loader uses <omniglot folder>/cache/ when that folder exists (and decodes into it if needed)
CACHE=${METAPHI_CACHE:-$HOME/.cache/metaphi}/omniglot_28px.npz
[ -f "$CACHE" ] && cp "$CACHE" .data/omniglot/cache/
# the Omniglot MAML 5w1s run trained so far on earlier device calls (git-ignored, on this machine)
if [ -f benchmarks/_work/omniglot_gpu/omniglot-maml-5w1s/checkpoint.pt ]; then
  rm -rf .gpu_run && cp -r benchmarks/_work/omniglot_gpu .gpu_run
  echo "run to train on: .gpu_run ($(wc -l < .gpu_run/omniglot-maml-5w1s/metrics.jsonl) steps done)"
fi
python3 -c "from metaphi.data.omniglot import load_omniglot as L; o = L('.data'); print(o.n_characters, 'characters, from cache:', o.from_cache, o.cache_path)"
echo
du -sh .whl .data
