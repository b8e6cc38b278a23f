"""The check the method tests share: eager, then each exported file, against a reference."""

from __future__ import annotations

import numpy as np
import torch

from explain_export.artifact import runtime


def eager_and_files_match(explainer, images, expected, paths, formats, atol=1e-4) -> None:
    """The eager explainer on ``images``, then each format's file (``paths[fmt]``) at batch 3
    and 1, equal to ``expected`` within ``atol``."""
    with torch.no_grad():
        eager = explainer(torch.from_numpy(images))[1].numpy()
    np.testing.assert_allclose(eager, expected, atol=atol)
    for fmt in formats:
        artifact = runtime.load(paths[fmt])
        for batch in (3, 1):
            got = artifact.outputs(images[:batch])["heatmap"]
            np.testing.assert_allclose(got, expected[:batch], atol=atol, err_msg=fmt)
