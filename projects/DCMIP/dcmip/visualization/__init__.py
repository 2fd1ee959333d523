"""Pictures for a person checking a run without labels: the pseudo identities of an epoch
(:func:`cluster_montage`) and the training curves of ``metrics.json`` (:func:`plot_curves`).
Pure functions returning PIL images; the engine hooks that save them are in
:mod:`dcmip.engine.visualization`."""
from .curves import plot_curves, read_metrics
from .montage import cluster_montage, montage_rows

__all__ = ["cluster_montage", "montage_rows", "plot_curves", "read_metrics"]
