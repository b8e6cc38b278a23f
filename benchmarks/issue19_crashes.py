#!/usr/bin/env python
"""Issue 19's two crashes, swept as benchmarks/architectures.py sweeps (default flags, random
init with torch.manual_seed(0), --ckpt of the saved state_dict, ONNX vs pytorch-grad-cam on
three photos): tiny_vit_5m_224 and visformer_tiny. In the venv that ``make peers`` builds, as
architectures.py:

    make peers && .peers/bin/python benchmarks/issue19_crashes.py

Results: benchmarks/results/issue19-crashes/architectures.{json,md}; exports under
/tmp/explain-export-issue19.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import architectures

architectures.HERE = Path(__file__).resolve().parent / "results" / "issue19-crashes"
architectures.OUT_ROOT = Path("/tmp/explain-export-issue19")
architectures.MODELS = [architectures.tm("tiny_vit_5m_224"), architectures.tm("visformer_tiny")]

if __name__ == "__main__":
    architectures.HERE.mkdir(parents=True, exist_ok=True)
    sys.argv = sys.argv[:1]
    sys.exit(architectures.main())
