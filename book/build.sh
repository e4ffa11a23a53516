#!/usr/bin/env bash
# Build the book with every chapter executed (the profile of this machine, or $GENLIB_PROFILE).
# Installs what it needs first. Output: _build/html/index.html
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${GENLIB_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
  export GENLIB_DATA_DIR="$(cd ../shared/data && pwd)"
fi
# No MPLBACKEND here: the kernels must use the inline backend, or no figure reaches the page.
export TF_CPP_MIN_LOG_LEVEL=2 GENLIB_STATIC_OUTPUT=1  # progress loops leave one line in the built pages
unset MPLBACKEND
python -m pip install -q --upgrade pip
python -m pip install -q -r requirements.txt -e .
# One execution cache per profile: jupyter-cache keys a notebook by its code only, so a `cpu`
# build must never reuse outputs executed under `smoke`.
profile=$(python -c "from genlib import profiles; print(profiles.active())")
mkdir -p _build
sed "s|^  execute_notebooks: cache|  execute_notebooks: cache\n  cache: _build/.jupyter_cache/$profile|" _config.yml > "_build/_config_$profile.yml"
# The cache keys a notebook by its own code, blind to genlib, whose source the pages print and whose
# blocks they run: when genlib or the requirements change, every chapter re-executes (trained models
# whose settings did not change still load from GENLIB_CACHE). No stamp beside a cache: its genlib is
# unknown, so it goes too.
stamp="_build/.jupyter_cache/$profile/genlib.sha256"
genlib_hash=$(find genlib -name '*.py' | LC_ALL=C sort | xargs cat requirements.txt | sha256sum | cut -d' ' -f1)
if [ -d "_build/.jupyter_cache/$profile" ] && [ "$(cat "$stamp" 2>/dev/null)" != "$genlib_hash" ]; then
  echo "genlib changed since the last build: every chapter re-executes"
  rm -rf "_build/.jupyter_cache/$profile"
  rm -rf _build/.doctrees  # Sphinx re-reads only the sources it sees modified: make it read them all
fi
mkdir -p "_build/.jupyter_cache/$profile"
echo "$genlib_hash" > "$stamp"
# The comparison chapter reads every other chapter's results, which its code hash does not see: drop
# its cached execution so that each build re-runs it (under a minute) on the registry as it is now.
python - "_build/.jupyter_cache/$profile" <<'PY'
import sys
from pathlib import Path

if Path(sys.argv[1]).exists():
    from jupyter_cache import get_cache

    cache = get_cache(sys.argv[1])
    for record in cache.list_cache_records():
        if record.uri.endswith("17_comparison.ipynb"):
            cache.remove_cache(record.pk)
PY
touch chapters/17_comparison.ipynb  # and Sphinx re-reads only the sources it sees modified
jupyter-book build . --config "_build/_config_$profile.yml" -W -n --keep-going
echo "book: $(pwd)/_build/html/index.html"
