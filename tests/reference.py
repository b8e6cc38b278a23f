"""Independent references: Grad-CAM with autograd, and the channel sum in numpy + OpenCV."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import Tensor, nn


def _capture(module: nn.Module, port: str, call: int, store: dict) -> object:
    """Keep the tapped tensor as it is at that point: the network gets a clone (so an in-place
    op later changes the clone), and the gradient reaches the original through the clone."""
    seen = []

    def keep(t):
        seen.append(t)
        if len(seen) != call + 1:
            return None
        store["a"] = t
        if t.requires_grad:
            t.retain_grad()
        return t.clone()

    if port == "input":
        return module.register_forward_pre_hook(lambda m, args: (keep(args[0]), *args[1:]))
    return module.register_forward_hook(lambda m, args, out: keep(out))


def normalize(image: Tensor, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)) -> Tensor:
    return (image - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def numpy_finish(maps: np.ndarray, size: tuple[int, int], eps: float = 1e-12) -> np.ndarray:
    """cv2.resize(INTER_LINEAR) each [h,w] map to size, then per-image min-max."""
    out = []
    for m in maps:
        r = cv2.resize(m.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        out.append((r - r.min()) / max(r.max() - r.min(), eps))
    return np.stack(out)[:, None]


def gradcam(
    model: nn.Module,
    x: Tensor,
    module: nn.Module,
    port: str = "output",
    call: int = 0,
    class_index: Tensor | None = None,
    layout: str = "NCHW",
) -> tuple[np.ndarray, Tensor]:
    """Grad-CAM the usual way: hook the map, backprop the target logit, weight by the spatial
    mean of the gradients, ReLU; then the same resize and min-max. ``x`` is normalized.
    ``layout="NHWC"``: the tapped tensor is channels-last ``[N,h,w,C]``."""
    store: dict = {}
    handle = _capture(module, port, call, store)
    try:
        with torch.enable_grad():
            x = x.clone().requires_grad_(True)  # so every tapped map carries a gradient
            logits = model(x)
            c = logits.argmax(1) if class_index is None else class_index
            logits.gather(1, c[:, None]).sum().backward()
    finally:
        handle.remove()
    a, g = store["a"], store["a"].grad
    if layout == "NHWC":
        a, g = a.permute(0, 3, 1, 2), g.permute(0, 3, 1, 2)
    m = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1)).detach().numpy()
    return numpy_finish(m, tuple(x.shape[-2:])), logits.detach()


def channel_sum(
    model: nn.Module, x: Tensor, module: nn.Module, port="output", call=0
) -> np.ndarray:
    """The seed's superposition in numpy: sum over channels, cv2 resize, min-max."""
    store: dict = {}
    handle = _capture(module, port, call, store)
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    a = store["a"].numpy()
    return numpy_finish(a.sum(axis=1), tuple(x.shape[-2:]))


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest per-image Pearson correlation of two [N,1,H,W] batches."""
    return min(float(np.corrcoef(x.ravel(), y.ravel())[0, 1]) for x, y in zip(a, b, strict=True))


# The heads composed one by one, apart from the production path (explain_export.builder.maths.heads
# channel_terms + to_unit, which the methods' records call): the tests check each against this.


def _check_map(features: Tensor) -> None:
    if features.dim() != 4:
        raise ValueError(f"expected a [N,C,h,w] feature map, got shape {list(features.shape)}")


def map_sum(features: Tensor) -> Tensor:
    """Feature-map superposition, m = Σ_k A_k: [N,C,h,w] -> [N,1,h,w]."""
    _check_map(features)
    return features.sum(dim=1, keepdim=True)


def map_weighted(features: Tensor, weights: Tensor) -> Tensor:
    """m = ReLU(Σ_k α_k A_k) per image, for weights α [N,C]."""
    _check_map(features)
    n, c, h, w = features.shape
    m = torch.bmm(weights.unsqueeze(1), features.reshape(n, c, h * w))
    return torch.relu(m).reshape(n, 1, h, w)


def map_cam(features: Tensor, weight: Tensor, class_index: Tensor) -> Tensor:
    """CAM, m = ReLU(Σ_k W[c,k] A_k), for the linear weight W [K,C] and c [N]."""
    _check_map(features)
    return map_weighted(features, weight[class_index])


def map_gradcam(features: Tensor, grad: Tensor) -> Tensor:
    """Grad-CAM, m = ReLU(Σ_k α_k A_k) with α_k = mean_ij ∂y/∂A_k(i,j)."""
    _check_map(features)
    return map_weighted(features, grad.mean(dim=(2, 3)))


def head_by_name(
    features: Tensor,
    size: tuple[int, int],
    method: str = "sum",
    weight: Tensor | None = None,
    class_index: Tensor | None = None,
    eps: float | None = None,
    grad: Tensor | None = None,
) -> Tensor:
    """The production head by the method's name: its record's function, then heads.to_unit."""
    from explain_export.builder.maths import heads, methods

    target = None if class_index is None else class_index.reshape(-1, 1)
    needs = methods.Needs(features, grad, weight, target)
    terms = methods.get(method).terms(needs)
    return heads.to_unit(terms.map, terms.scale, size, heads.DEFAULT_EPS if eps is None else eps)


# The CAM family, written from the formulas with autograd and a cloning hook, in float64, one
# method per branch; resize and min-max as numpy_finish (cv2).


def family(
    model: nn.Module,
    x: Tensor,
    module: nn.Module,
    method: str,
    port: str = "output",
    call: int = 0,
    class_index: Tensor | None = None,
) -> np.ndarray:
    """The heatmap of ``method`` (gradcam++, xgradcam, hirescam, gradcam-elementwise, layercam,
    eigencam, eigengradcam) for the normalized batch ``x``, at the tensor ``module`` gives."""
    store: dict = {}
    handle = _capture(module, port, call, store)
    try:
        with torch.enable_grad():
            x = x.clone().requires_grad_(True)
            logits = model(x)
            c = logits.argmax(1) if class_index is None else class_index
            logits.gather(1, c[:, None]).sum().backward()
    finally:
        handle.remove()
    a, g = store["a"].detach().double(), store["a"].grad.double()
    total = a.sum((2, 3), keepdim=True)
    if method == "gradcam":
        m = (g.mean((2, 3), keepdim=True) * a).sum(1)
    elif method == "gradcam++":
        alpha = g**2 / (2 * g**2 + total * g**3 + 1e-6)
        alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
        w = (alpha * torch.relu(g)).sum((2, 3), keepdim=True)
        m = (w * a).sum(1)
    elif method == "xgradcam":
        w = (g * a / (total + 1e-7)).sum((2, 3), keepdim=True)
        m = (w * a).sum(1)
    elif method == "hirescam":
        m = (g * a).sum(1)
    elif method == "gradcam-elementwise":
        m = torch.relu(g * a).sum(1)
    elif method == "layercam":
        m = (torch.relu(g) * a).sum(1)
    elif method in ("eigencam", "eigengradcam"):
        m = torch.from_numpy(projection((g * a if method == "eigengradcam" else a).numpy()))
    else:
        raise ValueError(method)
    return numpy_finish(torch.relu(m).numpy(), tuple(x.shape[-2:]))


def projection(maps: np.ndarray) -> np.ndarray:
    """Each [C,h,w] map, centred per channel over the pixels, projected on its first right
    singular vector (numpy SVD), with the sign that makes max >= |min|: [N,h,w]."""
    out = []
    for a in maps:
        x = a.reshape(a.shape[0], -1).T
        x = x - x.mean(axis=0)
        vt = np.linalg.svd(x, full_matrices=False)[2]
        m = x @ vt[0]
        out.append((-m if -m.min() > m.max() else m).reshape(a.shape[1:]))
    return np.stack(out)


def fused(
    model: nn.Module,
    x: Tensor,
    modules: list[nn.Module],
    method: str,
    class_index: Tensor | None = None,
) -> np.ndarray:
    """Several layers' heatmaps fused: each layer's :func:`family` map (ReLU'd, resized,
    min-maxed), averaged over the layers, min-maxed again (numpy)."""
    maps = np.mean([family(model, x, m, method, class_index=class_index) for m in modules], 0)
    lo = maps.min(axis=(1, 2, 3), keepdims=True)
    span = maps.max(axis=(1, 2, 3), keepdims=True) - lo
    return (maps - lo) / np.where(span > 0, span, np.inf)


def region_gradcam(
    model: nn.Module,
    x: Tensor,
    module: nn.Module,
    class_index: list[int] | None = None,
    background: int | None = 0,
) -> tuple[np.ndarray, list[int]]:
    """Grad-CAM of a segmentation model's region (``model(x)["out"]``, scores [N,K,H,W]): per
    image the class c (given, else the one with most predicted pixels, ``background`` left
    out, counted with numpy), ``y = Σ_ij [argmax = c] · S_c`` with the mask held constant,
    the map's gradient by autograd through a cloning hook; then as :func:`gradcam`."""
    store: dict = {}
    handle = _capture(module, "output", 0, store)
    try:
        with torch.enable_grad():
            x = x.clone().requires_grad_(True)
            scores = model(x)["out"]
            predicted = scores.argmax(1).detach().numpy()
            classes = []
            for n in range(scores.shape[0]):
                if class_index is not None and class_index[n] >= 0:
                    classes.append(int(class_index[n]))
                    continue
                counts = np.bincount(predicted[n].ravel(), minlength=scores.shape[1]).astype(float)
                if background is not None:
                    counts[background] = -1
                classes.append(int(counts.argmax()))
            y = sum(
                (scores[n, c] * torch.from_numpy(predicted[n] == c).float()).sum()
                for n, c in enumerate(classes)
            )
            y.backward()
    finally:
        handle.remove()
    a, g = store["a"], store["a"].grad
    m = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1)).detach().numpy()
    return numpy_finish(m, tuple(x.shape[-2:])), classes


# The newer CAMs of pytorch-grad-cam 1.5.7 (fem, kpcacam, segeigencam), from the formulas in
# float64: FEM's k-sigma rule with numpy's std (ddof 0); KPCA-CAM's sigmoid kernel with a dense
# eigendecomposition (torch.linalg.eigh, the largest eigenvalue as scikit-learn takes it, no
# power iteration); Seg-Eigen-CAM's |g| ⊙ A through the SVD projection above.


def kpca_projection(maps: np.ndarray) -> np.ndarray:
    """Each [C,h,w] map's KPCA-CAM projection [N,h,w]: rows x_i of the centred hw × C map,
    K = tanh(x_i·x_j / C + 1), K centred (K - row means - column means + mean), its eigenvector
    of the largest eigenvalue by eigh, the entry largest in magnitude positive (svd_flip)."""
    out = []
    for a in torch.from_numpy(maps).double():
        x = a.reshape(a.shape[0], -1).T
        x = x - x.mean(0)
        k = torch.tanh(x @ x.T / a.shape[0] + 1)
        k = k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()
        values, vectors = torch.linalg.eigh(k)
        u = vectors[:, -1] * values[-1].clamp_min(0).sqrt()
        u = u * torch.sign(u[u.abs().argmax()])
        out.append(u.reshape(a.shape[1:]).numpy())
    return np.stack(out)


def newer(
    model: nn.Module,
    x: Tensor,
    module: nn.Module,
    method: str,
    port: str = "output",
    call: int = 0,
    class_index: Tensor | None = None,
) -> np.ndarray:
    """The heatmap of ``method`` (fem, kpcacam, segeigencam) for the normalized batch ``x`` at
    the tensor ``module`` gives; ``g`` (segeigencam) by autograd through a cloning hook."""
    store: dict = {}
    handle = _capture(module, port, call, store)
    try:
        with torch.enable_grad():
            x = x.clone().requires_grad_(True)
            logits = model(x)
            c = logits.argmax(1) if class_index is None else class_index
            logits.gather(1, c[:, None]).sum().backward()
    finally:
        handle.remove()
    a, g = store["a"].detach().double(), store["a"].grad.double()
    if method == "fem":
        a_np = a.numpy()
        th = a_np.mean(axis=(2, 3), keepdims=True) + 2 * a_np.std(axis=(2, 3), keepdims=True)
        m = ((a_np > th).mean(axis=(2, 3), keepdims=True) * a_np).sum(axis=1)
    elif method == "kpcacam":
        m = kpca_projection(a.numpy())
    elif method == "segeigencam":
        m = projection((g.abs() * a).numpy())
    else:
        raise ValueError(method)
    return numpy_finish(np.maximum(m, 0), tuple(x.shape[-2:]))


def refined(
    model: nn.Module,
    x: Tensor,
    modules: list[nn.Module],
    method: str,
    class_index: Tensor | None = None,
) -> np.ndarray:
    """pytorch-grad-cam's RefineCAM: each layer's :func:`family` map (ReLU'd, resized,
    min-maxed), multiplied over the layers, min-maxed again (numpy)."""
    maps = np.prod([family(model, x, m, method, class_index=class_index) for m in modules], 0)
    lo = maps.min(axis=(1, 2, 3), keepdims=True)
    span = maps.max(axis=(1, 2, 3), keepdims=True) - lo
    return (maps - lo) / np.where(span > 0, span, np.inf)
