"""Linear probes on frozen features: the strong, cheap baseline that fine-tuning must beat.

* `LinearProbe`, `MultiLabelProbe`, `oof_proba` (`_linear`): scikit-learn classifiers on
  feature vectors (standardise -> logistic regression, linear SVM or nearest centroid).
* `DomainAdaptedProbe` (`_domain`): a probe for images from another domain than its training
  images, fit with unlabelled vectors of that domain (CORAL alignment routed by a domain
  classifier, or self-training on confident pseudo-labels); issue 22.

The classes carry ``transferlab.probe`` as their module: that is the name saved probes record
(models/_probe_io.py), whichever private module defines them.
"""

from transferlab.probe._domain import DA_METHODS, DomainAdaptedProbe
from transferlab.probe._linear import C_GRID, CLASSIFIERS, LinearProbe, MultiLabelProbe, oof_proba

for _cls in (LinearProbe, MultiLabelProbe, DomainAdaptedProbe):
    _cls.__module__ = __name__

__all__ = [
    "CLASSIFIERS",
    "C_GRID",
    "DA_METHODS",
    "DomainAdaptedProbe",
    "LinearProbe",
    "MultiLabelProbe",
    "oof_proba",
]
