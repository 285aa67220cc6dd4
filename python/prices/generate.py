"""Write the LM gateway's price table from DSPy's bundled model catalog.

The gateway (``crates/native/src/lm/gateway.rs``) prices every LM call, native
or DSPy, the way DSPy 3.4.1 prices an OpenAI chat model at the standard tier:
uncached input, cached input and output tokens, each at its per-token rate.
This script reads those rates from the catalog DSPy ships (never the network:
``LITELLM_LOCAL_MODEL_COST_MAP=True``) for every model DSPy's ``openai-chat``
provider knows, and writes them as JSON.

Usage::

    python python/prices/generate.py [OUT.json]

CI writes it to a scratch file and diffs it against the committed
``crates/native/src/lm/prices.json``: a DSPy upgrade that changes a price
fails the build until the table is regenerated.
"""

from __future__ import annotations

import json
import os
import sys

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import dspy  # noqa: E402
from dspy.clients import model_metadata  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUT = os.path.join(ROOT, "crates", "native", "src", "lm", "prices.json")


def main() -> int:
    out = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_OUT
    catalog = model_metadata._snapshot()
    models = {}
    for name, entry in sorted(catalog.items()):
        if not isinstance(entry, dict) or entry.get("litellm_provider") != "openai" or entry.get("mode") != "chat":
            continue
        bare = name.split("/", 1)[1] if name.startswith("openai/") else name
        info = model_metadata.model_info("openai-chat", bare)
        if not info or info.get("input_cost_per_token") is None or info.get("output_cost_per_token") is None:
            continue
        price = {
            "input_per_token": info["input_cost_per_token"],
            "output_per_token": info["output_cost_per_token"],
        }
        if info.get("cache_read_input_token_cost") is not None:
            price["cache_read_per_token"] = info["cache_read_input_token_cost"]
        models[bare] = price
    doc = {
        "source": f"DSPy {dspy.__version__} bundled model catalog (openai-chat, standard tier)",
        "models": models,
    }
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1, sort_keys=True)
        fh.write("\n")
    print(f"{len(models)} priced models", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
