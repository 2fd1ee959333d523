"""Quality of the pseudo labels against the true identities (statistics only, never a loss)."""
from typing import Dict, Union

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

__all__ = ["pseudo_label_scores"]


def pseudo_label_scores(pred_labels: Union[np.ndarray, torch.Tensor],
                        true_ids: Union[np.ndarray, torch.Tensor]) -> Dict[str, float]:
    """NMI and ARI of the clustering over the images it kept, plus its size.

    Args:
        pred_labels: (N,) DBSCAN labels, -1 for outliers.
        true_ids: (N,) ground-truth identities of the same images.

    Returns:
        ``{"nmi", "ari"}``: scikit-learn's normalised mutual information and adjusted Rand
        index over the non-outlier images (NaN when every image is an outlier);
        ``"clusters"``: number of clusters; ``"outliers"``: number of outlier images;
        ``"outlier_fraction"``: outliers / N.

    Raises:
        ValueError: inputs that are not 1-D or differ in length.
    """
    pred = _as_vector(pred_labels, "pred_labels")
    true = _as_vector(true_ids, "true_ids")
    if pred.shape != true.shape:
        raise ValueError(f"pred_labels {pred.shape} and true_ids {true.shape} must have the "
                         "same length: one entry per image")
    kept = pred >= 0
    outliers = int((~kept).sum())
    if kept.any():
        nmi = float(normalized_mutual_info_score(true[kept], pred[kept]))
        ari = float(adjusted_rand_score(true[kept], pred[kept]))
    else:
        nmi = ari = float("nan")
    return {"nmi": nmi, "ari": ari, "clusters": int(np.unique(pred[kept]).size),
            "outliers": outliers, "outlier_fraction": outliers / max(pred.size, 1)}


def _as_vector(values: Union[np.ndarray, torch.Tensor], name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {values.shape}")
    return values
