"""Legacy import path of the served model, kept so registry versions logged before the package was split into
subpackages still load: their copied ``served_model.py`` runs ``from catalog_classifier.serving import ...``.

New code imports :mod:`catalog_classifier.registry.served`. Nothing in the package imports this module.
"""

from catalog_classifier.registry.served import CatalogClassifierModel

__all__ = ["CatalogClassifierModel"]
