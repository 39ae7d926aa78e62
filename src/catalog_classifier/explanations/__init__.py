"""Grad-CAM, SHAP, class-level views and faithfulness statistics of single predictions.
Imports ``ops``, ``config``, ``data`` and ``modeling``.
"""
